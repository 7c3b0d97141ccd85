package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/postie/postie/spool"
)

// Client sends commands to a running server's control socket.
type Client struct{ path string }

// Dial checks that a server answers on the socket at path.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	c.Close()
	return &Client{path: path}, nil
}

// do sends one request and reads the reply line. With a non-nil sink, the
// raw data after a streaming reply is copied into it.
func (c *Client) do(ctx context.Context, req request, sink io.Writer) (reply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return reply{}, fmt.Errorf("control: connect to the running server: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return reply{}, fmt.Errorf("control: send: %w", err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return reply{}, fmt.Errorf("control: the server closed the connection without answering (see its log): %w", err)
	}
	var r reply
	if err := json.Unmarshal(line, &r); err != nil {
		return reply{}, fmt.Errorf("control: bad reply: %w", err)
	}
	if r.Error != "" {
		return r, &remoteError{msg: r.Error, kind: sentinels[r.Kind]}
	}
	if r.Stream && sink != nil {
		t, err := readStream(br, sink)
		if err != nil {
			return r, fmt.Errorf("control: receive %s: %w", req.Op, err)
		}
		if t.Error != "" {
			return t, &remoteError{msg: t.Error, kind: sentinels[t.Kind]}
		}
		r.Count = t.Count
	}
	return r, nil
}

// AddAccount implements Admin.
func (c *Client) AddAccount(ctx context.Context, addr, pw string) error {
	_, err := c.do(ctx, request{Op: "user.add", Address: addr, Password: pw}, nil)
	return err
}

// SetPassword implements Admin.
func (c *Client) SetPassword(ctx context.Context, addr, pw string) error {
	_, err := c.do(ctx, request{Op: "user.passwd", Address: addr, Password: pw}, nil)
	return err
}

// DeleteAccount implements Admin.
func (c *Client) DeleteAccount(ctx context.Context, addr string) error {
	_, err := c.do(ctx, request{Op: "user.del", Address: addr}, nil)
	return err
}

// SetQuota implements Admin.
func (c *Client) SetQuota(ctx context.Context, addr string, n int64) error {
	_, err := c.do(ctx, request{Op: "user.quota", Address: addr, Bytes: n}, nil)
	return err
}

// Accounts implements Admin.
func (c *Client) Accounts(ctx context.Context) ([]spool.AccountInfo, error) {
	r, err := c.do(ctx, request{Op: "user.list"}, nil)
	return r.Accounts, err
}

// AddDevice implements Admin.
func (c *Client) AddDevice(ctx context.Context, addr, name string, all bool) (string, error) {
	r, err := c.do(ctx, request{Op: "device.add", Address: addr, Name: name, All: all}, nil)
	return r.Password, err
}

// Devices implements Admin.
func (c *Client) Devices(ctx context.Context, addr string) ([]spool.DeviceInfo, error) {
	r, err := c.do(ctx, request{Op: "device.list", Address: addr}, nil)
	return r.Devices, err
}

// DeleteDevice implements Admin.
func (c *Client) DeleteDevice(ctx context.Context, addr, name string) error {
	_, err := c.do(ctx, request{Op: "device.del", Address: addr, Name: name}, nil)
	return err
}

// Restore implements Admin.
func (c *Client) Restore(ctx context.Context, addr string) (int, error) {
	r, err := c.do(ctx, request{Op: "restore", Address: addr}, nil)
	return int(r.Count), err
}

// Backup implements Admin: the server writes a consistent copy of its spool
// into w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	r, err := c.do(ctx, request{Op: "backup"}, w)
	return r.Count, err
}

// Export implements Admin.
func (c *Client) Export(ctx context.Context, addr string, w io.Writer) (int, error) {
	r, err := c.do(ctx, request{Op: "export", Address: addr}, w)
	return int(r.Count), err
}

// Verify implements Admin.
func (c *Client) Verify(ctx context.Context) ([]string, error) {
	r, err := c.do(ctx, request{Op: "verify"}, nil)
	return r.Problems, err
}

// Close implements Admin; the client holds nothing open.
func (c *Client) Close() error { return nil }

// Remote implements Admin.
func (c *Client) Remote() bool { return true }
