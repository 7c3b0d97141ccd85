package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/postie/postie/spool"
)

// Client sends commands to a running server's control socket.
type Client struct {
	path string
	hc   *http.Client
}

const (
	// maxReply bounds a JSON reply (an account list of many thousands).
	maxReply = 64 << 20
	// maxErrorReply bounds the text of an error reply.
	maxErrorReply = 64 << 10
)

// Dial checks that a server answers on the socket at path, and returns a
// Client that talks to it.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("control: connect to %s: %w", path, err)
	}
	c.Close()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression:     true,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: maxRequest,
	}
	return &Client{path: path, hc: &http.Client{
		Transport: tr,
		// The server never redirects; a redirect is ServeMux cleaning a
		// path, which no request of ours needs.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// AddAccount implements Admin.
func (c *Client) AddAccount(ctx context.Context, addr, pw string) error {
	_, err := do[none](ctx, c, http.MethodPost, newAccount{addr, pw}, "accounts")
	return err
}

// SetPassword implements Admin.
func (c *Client) SetPassword(ctx context.Context, addr, pw string) error {
	_, err := do[none](ctx, c, http.MethodPut, passwordBody{pw}, "accounts", addr, "password")
	return err
}

// DeleteAccount implements Admin.
func (c *Client) DeleteAccount(ctx context.Context, addr string) error {
	_, err := do[none](ctx, c, http.MethodDelete, nil, "accounts", addr)
	return err
}

// SetQuota implements Admin.
func (c *Client) SetQuota(ctx context.Context, addr string, n int64) error {
	_, err := do[none](ctx, c, http.MethodPut, quotaBody{n}, "accounts", addr, "quota")
	return err
}

// Accounts implements Admin.
func (c *Client) Accounts(ctx context.Context) ([]spool.AccountInfo, error) {
	return do[[]spool.AccountInfo](ctx, c, http.MethodGet, nil, "accounts")
}

// AddDevice implements Admin.
func (c *Client) AddDevice(ctx context.Context, addr, name string, all bool) (string, error) {
	r, err := do[passwordBody](ctx, c, http.MethodPost, newDevice{name, all}, "accounts", addr, "devices")
	return r.Password, err
}

// Devices implements Admin.
func (c *Client) Devices(ctx context.Context, addr string) ([]spool.DeviceInfo, error) {
	return do[[]spool.DeviceInfo](ctx, c, http.MethodGet, nil, "accounts", addr, "devices")
}

// DeleteDevice implements Admin.
func (c *Client) DeleteDevice(ctx context.Context, addr, name string) error {
	_, err := do[none](ctx, c, http.MethodDelete, nil, "accounts", addr, "devices", name)
	return err
}

// Restore implements Admin.
func (c *Client) Restore(ctx context.Context, addr string) (int, error) {
	r, err := do[restoredBody](ctx, c, http.MethodPost, nil, "accounts", addr, "restore")
	return r.Messages, err
}

// Verify implements Admin.
func (c *Client) Verify(ctx context.Context) ([]string, error) {
	r, err := do[problemsBody](ctx, c, http.MethodPost, nil, "verify")
	return r.Problems, err
}

// Backup implements Admin: the server writes a consistent copy of its spool
// into w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	return c.stream(ctx, w, "backup")
}

// Export implements Admin.
func (c *Client) Export(ctx context.Context, addr string, w io.Writer) (int, error) {
	n, err := c.stream(ctx, w, "accounts", addr, "export")
	return int(n), err
}

// QuarantineList implements Admin.
func (c *Client) QuarantineList(ctx context.Context, addr string) ([]spool.Quarantined, error) {
	if addr == "" {
		return do[[]spool.Quarantined](ctx, c, http.MethodGet, nil, "quarantine")
	}
	return do[[]spool.Quarantined](ctx, c, http.MethodGet, nil, "accounts", addr, "quarantine")
}

// QuarantineShow implements Admin.
func (c *Client) QuarantineShow(ctx context.Context, id spool.MessageID, w io.Writer) (int64, error) {
	return c.stream(ctx, w, "quarantine", id.String())
}

// QuarantineRelease implements Admin.
func (c *Client) QuarantineRelease(ctx context.Context, id spool.MessageID) ([]string, error) {
	return do[[]string](ctx, c, http.MethodPost, nil, "quarantine", id.String(), "release")
}

// QuarantineDelete implements Admin.
func (c *Client) QuarantineDelete(ctx context.Context, id spool.MessageID) error {
	_, err := do[none](ctx, c, http.MethodDelete, nil, "quarantine", id.String())
	return err
}

// Close implements Admin: it closes the idle connections to the server.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Remote implements Admin.
func (c *Client) Remote() bool { return true }

// do sends a request with in (unless nil) as its JSON body to the path of
// the segments, and decodes the JSON reply. An error reply becomes an
// error that errors.Is matches with the spool's sentinel, as the same
// command on a local spool would return.
func do[Out any](ctx context.Context, c *Client, method string, in any, segments ...string) (Out, error) {
	var out Out
	resp, err := c.send(ctx, method, in, segments)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxReply)).Decode(&out); err != nil {
		return out, fmt.Errorf("control: %s %s: bad reply: %w", method, resp.Request.URL.Path, err)
	}
	return out, nil
}

// stream sends a GET for a backup or export to the path of the segments
// and copies the reply's body to w. It returns the count in the trailer
// Postie-Complete, or an error if the body ended without it.
func (c *Client) stream(ctx context.Context, w io.Writer, segments ...string) (int64, error) {
	op := segments[len(segments)-1]
	resp, err := c.send(ctx, http.MethodGet, nil, segments)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body := &readErr{r: resp.Body}
	if _, err := io.Copy(w, body); err != nil {
		if body.err == nil {
			return 0, fmt.Errorf("control: %s: write the data: %w", op, err)
		}
		return 0, fmt.Errorf("control: %s: the data stopped before the server said it was complete (see the server's log): %w", op, err)
	}
	if msg := resp.Trailer.Get(trailerError); msg != "" {
		return 0, &remoteError{msg: op + " failed: " + msg, kind: sentinelNamed(resp.Trailer.Get(headerKind))}
	}
	done := resp.Trailer.Get(trailerComplete)
	if done == "" {
		return 0, fmt.Errorf("control: %s: the data ended before the server said it was complete (see the server's log)", op)
	}
	n, err := strconv.ParseInt(done, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("control: %s: bad %s trailer %q: %w", op, trailerComplete, done, err)
	}
	return n, nil
}

// send sends a request and returns the reply if its status is 2xx, or the
// error it reports.
func (c *Client) send(ctx context.Context, method string, in any, segments []string) (*http.Response, error) {
	path, err := requestPath(segments)
	if err != nil {
		return nil, err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("control: %s %s: encode the request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://postie"+path, body)
	if err != nil {
		return nil, fmt.Errorf("control: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control: %s %s: no answer from the running server (see its log): %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorReply))
	msg := strings.TrimSpace(string(text))
	if resp.Header.Get(headerKind) == "" {
		// Not an operation's error (an unknown route, a refused user):
		// say what was asked.
		msg = fmt.Sprintf("control: %s %s: %s: %s", method, path, resp.Status, msg)
	}
	return nil, &remoteError{msg: msg, kind: sentinelNamed(resp.Header.Get(headerKind))}
}

// requestPath escapes each segment of a path. An empty segment, or a dot
// segment that path cleaning would remove, cannot be sent as it is.
func requestPath(segments []string) (string, error) {
	var b strings.Builder
	for _, s := range segments {
		if s == "" {
			return "", errors.New("control: an address or device name is empty")
		}
		e := url.PathEscape(s)
		if e == "." || e == ".." {
			e = strings.ReplaceAll(e, ".", "%2E")
		}
		b.WriteString("/" + e)
	}
	return b.String(), nil
}

// readErr remembers the error of its reader other than io.EOF, to tell it
// from a writer's.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}
