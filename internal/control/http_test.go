package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/spool"
)

// serve starts a server over admin with the given limits (the defaults
// where zero) in a fresh directory, and a client for it.
func serve(t *testing.T, admin Admin, lim limits) (*Server, *Client) {
	t.Helper()
	if lim.stall == 0 {
		lim.stall = streamStall
	}
	if lim.request == 0 {
		lim.request = maxRequest
	}
	if lim.allowUID == nil {
		lim.allowUID = ownUserOrRoot
	}
	path := filepath.Join(t.TempDir(), SocketName)
	srv, err := listen(path, admin, slog.New(slog.DiscardHandler), lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

// failing is an Admin whose every operation fails with err; Backup and
// Export first write some data when partial is set.
type failing struct {
	Admin
	err     error
	partial bool
}

func (f failing) AddAccount(context.Context, string, string) error   { return f.err }
func (f failing) SetPassword(context.Context, string, string) error  { return f.err }
func (f failing) DeleteAccount(context.Context, string) error        { return f.err }
func (f failing) SetQuota(context.Context, string, int64) error      { return f.err }
func (f failing) DeleteDevice(context.Context, string, string) error { return f.err }
func (f failing) Accounts(context.Context) ([]spool.AccountInfo, error) {
	return nil, f.err
}
func (f failing) AddDevice(context.Context, string, string, bool) (string, error) {
	return "", f.err
}
func (f failing) Devices(context.Context, string) ([]spool.DeviceInfo, error) {
	return nil, f.err
}
func (f failing) Restore(context.Context, string) (int, error) { return 0, f.err }
func (f failing) Verify(context.Context) ([]string, error)     { return nil, f.err }
func (f failing) Backup(_ context.Context, w io.Writer) (int64, error) {
	return f.write(w)
}
func (f failing) Export(_ context.Context, _ string, w io.Writer) (int, error) {
	n, err := f.write(w)
	return int(n), err
}
func (f failing) write(w io.Writer) (int64, error) {
	if !f.partial {
		return 0, f.err
	}
	n, err := w.Write(bytes.Repeat([]byte("x"), 1<<20))
	if err != nil {
		return int64(n), err
	}
	return int64(n), f.err
}

// everyOp calls each operation of an Admin once.
func everyOp() map[string]func(context.Context, Admin) error {
	const addr = "alice@example.com"
	return map[string]func(context.Context, Admin) error{
		"AddAccount":    func(ctx context.Context, a Admin) error { return a.AddAccount(ctx, addr, "correct horse battery") },
		"SetPassword":   func(ctx context.Context, a Admin) error { return a.SetPassword(ctx, addr, "correct horse battery") },
		"DeleteAccount": func(ctx context.Context, a Admin) error { return a.DeleteAccount(ctx, addr) },
		"SetQuota":      func(ctx context.Context, a Admin) error { return a.SetQuota(ctx, addr, 1) },
		"Accounts":      func(ctx context.Context, a Admin) error { _, err := a.Accounts(ctx); return err },
		"AddDevice":     func(ctx context.Context, a Admin) error { _, err := a.AddDevice(ctx, addr, "phone", true); return err },
		"Devices":       func(ctx context.Context, a Admin) error { _, err := a.Devices(ctx, addr); return err },
		"DeleteDevice":  func(ctx context.Context, a Admin) error { return a.DeleteDevice(ctx, addr, "phone") },
		"Restore":       func(ctx context.Context, a Admin) error { _, err := a.Restore(ctx, addr); return err },
		"Backup":        func(ctx context.Context, a Admin) error { _, err := a.Backup(ctx, io.Discard); return err },
		"Export":        func(ctx context.Context, a Admin) error { _, err := a.Export(ctx, addr, io.Discard); return err },
		"Verify":        func(ctx context.Context, a Admin) error { _, err := a.Verify(ctx); return err },
	}
}

// Every operation brings every spool sentinel back for errors.Is, with the
// server's text, whether it fails before or (backup, export) after the
// data has started.
func TestEverySentinelOfEveryOp(t *testing.T) {
	ctx := context.Background()
	for _, st := range sentinels() {
		for _, partial := range []bool{false, true} {
			err := fmt.Errorf("spool: doing it: %w", st.err)
			_, c := serve(t, failing{err: err, partial: partial}, limits{})
			for name, op := range everyOp() {
				got := op(ctx, c)
				if !errors.Is(got, st.err) || !strings.Contains(fmt.Sprint(got), err.Error()) {
					t.Errorf("%s failing with %v (partial %v): got %v", name, err, partial, got)
				}
				for _, other := range sentinels() {
					if other.err != st.err && errors.Is(got, other.err) {
						t.Errorf("%s failing with %v: got %v, which is also %v", name, err, got, other.err)
					}
				}
			}
		}
	}
	// An error that is no sentinel is an error all the same.
	_, c := serve(t, failing{err: errors.New("disk on fire")}, limits{})
	for name, op := range everyOp() {
		if err := op(ctx, c); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The same failures give the same errors over the socket as on a spool
// opened directly, for the real store.
func TestErrorsMatchLocal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := storeWithMail(t, dir)
	_, c := serve(t, Local(s), limits{})
	if _, err := c.AddDevice(ctx, "alice@example.com", "phone", false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		op   func(Admin) error
		want error
	}{
		{"device exists", func(a Admin) error { _, err := a.AddDevice(ctx, "alice@example.com", "phone", false); return err }, spool.ErrDeviceExists},
		{"device of no account", func(a Admin) error { _, err := a.AddDevice(ctx, "nobody@example.com", "phone", false); return err }, spool.ErrNoSuchAccount},
		{"devices of no account", func(a Admin) error { _, err := a.Devices(ctx, "nobody@example.com"); return err }, spool.ErrNoSuchAccount},
		{"delete no device", func(a Admin) error { return a.DeleteDevice(ctx, "alice@example.com", "..") }, spool.ErrNoSuchDevice},
		{"delete device of no account", func(a Admin) error { return a.DeleteDevice(ctx, "nobody@example.com", "phone") }, spool.ErrNoSuchAccount},
		{"delete no account", func(a Admin) error { return a.DeleteAccount(ctx, "nobody@example.com") }, spool.ErrNoSuchAccount},
		{"quota of no account", func(a Admin) error { return a.SetQuota(ctx, "nobody@example.com", 5) }, spool.ErrNoSuchAccount},
		{"account exists", func(a Admin) error { return a.AddAccount(ctx, "Alice@Example.com", "correct horse battery") }, spool.ErrAccountExists},
		{"weak password", func(a Admin) error { return a.SetPassword(ctx, "alice@example.com", "short") }, spool.ErrWeakPassword},
		{"export of no account", func(a Admin) error { _, err := a.Export(ctx, "nobody@example.com", io.Discard); return err }, spool.ErrNoSuchAccount},
		{"invalid address", func(a Admin) error { return a.DeleteAccount(ctx, "no-at-sign") }, nil},
	} {
		local, remote := tc.op(Local(s)), tc.op(c)
		if local == nil || remote == nil || tc.want != nil && (!errors.Is(local, tc.want) || !errors.Is(remote, tc.want)) {
			t.Errorf("%s: local %v, remote %v; want %v", tc.name, local, remote, tc.want)
			continue
		}
		if local.Error() != remote.Error() {
			t.Errorf("%s: local says %q, remote %q", tc.name, local, remote)
		}
	}
	// Addresses and names that need escaping in a path get there whole.
	for _, addr := range []string{"a/b@example.com", "a+b&c=d@example.com", "a?b#c@example.com", "..@example.com"} {
		if err := c.AddAccount(ctx, addr, "correct horse battery"); err != nil {
			t.Fatalf("add %q: %v", addr, err)
		}
		if _, err := c.AddDevice(ctx, addr, "..", false); err != nil {
			t.Fatalf("add device .. of %q: %v", addr, err)
		}
		if err := c.DeleteDevice(ctx, addr, ".."); err != nil {
			t.Fatalf("delete device .. of %q: %v", addr, err)
		}
		if err := c.DeleteAccount(ctx, addr); err != nil {
			t.Fatalf("delete %q: %v", addr, err)
		}
	}
	if err := c.DeleteDevice(ctx, "alice@example.com", ""); err == nil {
		t.Fatal("an empty device name was taken")
	}
}

// The status codes and bodies, as another HTTP client would see them.
func TestStatusCodes(t *testing.T) {
	dir := t.TempDir()
	s := storeWithMail(t, dir)
	_, c := serve(t, Local(s), limits{})
	for _, tc := range []struct {
		method, path, body string
		status             int
		kind, text         string
	}{
		{"GET", "/accounts", "", 200, "", `"Address":"alice@example.com"`},
		{"POST", "/accounts", `{"address":"alice@example.com","password":"correct horse battery"}`, 409, "account_exists", "account already exists"},
		{"POST", "/accounts", `{"address":"bob@example.com","password":"short"}`, 400, "weak_password", "too weak"},
		{"POST", "/accounts", `{"address":"bob","password":"correct horse battery"}`, 400, "other", "invalid address"},
		{"POST", "/accounts", `{"address":"bob@example.com","password":"correct horse battery","admin":true}`, 400, "other", "unknown field"},
		{"POST", "/accounts", `{"address":`, 400, "other", "bad request"},
		{"POST", "/accounts", `{} {}`, 400, "other", "after the JSON value"},
		{"POST", "/accounts", `{"password":"` + strings.Repeat("x", maxRequest) + `"}`, 413, "other", "over 65536 bytes"},
		{"GET", "/accounts/nobody@example.com/devices", "", 404, "no_such_account", "no such account"},
		{"DELETE", "/accounts/alice@example.com/devices/tablet", "", 404, "no_such_device", "no such device"},
		{"POST", "/accounts/alice@example.com/restore", "", 409, "not_retained", "retention is off"},
		{"GET", "/accounts/not-an-address/export", "", 400, "other", "invalid address"},
		{"GET", "/accounts/alice@example.com/export", "", 200, "", ""},
		{"POST", "/format-disk", "", 404, "", "not found"},
		{"PUT", "/accounts", "", 405, "", "Method Not Allowed"},
	} {
		req, _ := http.NewRequest(tc.method, "http://postie"+tc.path, strings.NewReader(tc.body))
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get(headerKind) != tc.kind || !strings.Contains(string(b), tc.text) {
			t.Errorf("%s %s: %s, kind %q, %q; want %d, %q, %q", tc.method, tc.path, resp.Status, resp.Header.Get(headerKind), b, tc.status, tc.kind, tc.text)
		}
	}
	// Through the client, a request too large is an error too.
	if err := c.AddAccount(context.Background(), "bob@example.com", strings.Repeat("x", maxRequest)); err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("large request: %v", err)
	}
}

// Only root and the server's own user are served.
func TestRefusedUser(t *testing.T) {
	_, c := serve(t, failing{err: errors.New("unreachable")}, limits{allowUID: func(uint32) bool { return false }})
	for name, op := range everyOp() {
		err := op(context.Background(), c)
		if err == nil || !strings.Contains(err.Error(), "403") || strings.Contains(err.Error(), "unreachable") {
			t.Errorf("%s by a refused user: %v", name, err)
		}
	}
}

// A backup or export that fails after its data has started is an error for
// the client, not a short copy; one that fails before is an ordinary error.
func TestStreamFailsMidway(t *testing.T) {
	ctx := context.Background()
	_, c := serve(t, failing{err: errors.New("disk on fire"), partial: true}, limits{})
	var got bytes.Buffer
	n, err := c.Backup(ctx, &got)
	if err == nil || !strings.Contains(err.Error(), "backup failed: disk on fire") {
		t.Fatalf("Backup: %d, %v", n, err)
	}
	if got.Len() == 0 {
		t.Fatal("the data before the failure never came (the test tests nothing)")
	}
	if _, err := c.Export(ctx, "alice@example.com", io.Discard); err == nil || !strings.Contains(err.Error(), "export failed: disk on fire") {
		t.Fatalf("Export: %v", err)
	}
}

// An empty export is complete, with no data.
func TestEmptyExport(t *testing.T) {
	dir := t.TempDir()
	s := storeWithMail(t, dir)
	_, c := serve(t, Local(s), limits{})
	var got bytes.Buffer
	if n, err := c.Export(context.Background(), "alice@example.com", &got); err != nil || n != 0 || got.Len() != 0 {
		t.Fatalf("Export: %d, %v, %q", n, err, got.String())
	}
}

// blockingWriter takes nothing until released.
type blockingWriter struct{ release chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// A client that stops reading a backup is cut once the stall time passes,
// and told the backup is incomplete.
func TestStalledClientIsCut(t *testing.T) {
	dir := t.TempDir()
	mb := strings.Repeat("x", 1<<20)
	s := storeWithMail(t, dir, mb, mb, mb, mb, mb, mb, mb, mb)
	srv, c := serve(t, Local(s), limits{stall: 200 * time.Millisecond})
	w := blockingWriter{make(chan struct{})}
	result := make(chan error, 1)
	go func() {
		_, err := c.Backup(context.Background(), w)
		result <- err
	}()
	streams := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.streams)
	}
	waitFor(t, "the backup to start", func() bool { return streams() == 1 })
	waitFor(t, "the server to cut the stalled backup", func() bool { return streams() == 0 })
	close(w.release)
	select {
	case err := <-result:
		if err == nil {
			t.Fatal("a backup cut for a stall was reported complete")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client never saw the cut")
	}
	// The server still serves.
	if _, err := c.Accounts(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Close waits for a command in progress and lets it answer.
func TestCloseWaitsForACommand(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	srv, c := serve(t, slow{started, release}, limits{})
	result := make(chan error, 1)
	go func() { result <- c.AddAccount(context.Background(), "alice@example.com", "correct horse battery") }()
	<-started
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close did not wait for the command")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-result; err != nil {
		t.Fatalf("the command in progress at Close: %v", err)
	}
	<-closed
	if _, err := Dial(srv.path); err == nil {
		t.Fatal("the socket answers after Close")
	}
}

// slow is an Admin whose AddAccount waits to be released.
type slow struct {
	started, release chan struct{}
}

func (s slow) AddAccount(context.Context, string, string) error {
	close(s.started)
	<-s.release
	return nil
}

// The rest of Admin is not called.
func (slow) SetPassword(context.Context, string, string) error           { panic("unused") }
func (slow) DeleteAccount(context.Context, string) error                 { panic("unused") }
func (slow) SetQuota(context.Context, string, int64) error               { panic("unused") }
func (slow) Accounts(context.Context) ([]spool.AccountInfo, error)       { panic("unused") }
func (slow) Devices(context.Context, string) ([]spool.DeviceInfo, error) { panic("unused") }
func (slow) DeleteDevice(context.Context, string, string) error          { panic("unused") }
func (slow) Restore(context.Context, string) (int, error)                { panic("unused") }
func (slow) Backup(context.Context, io.Writer) (int64, error)            { panic("unused") }
func (slow) Verify(context.Context) ([]string, error)                    { panic("unused") }
func (slow) Status(context.Context) (Status, error)                      { panic("unused") }
func (slow) Close() error                                                { return nil }
func (slow) Remote() bool                                                { return false }
func (slow) AddDevice(context.Context, string, string, bool) (string, error) {
	panic("unused")
}
func (slow) Export(context.Context, string, io.Writer) (int, error)              { panic("unused") }
func (slow) QuarantineList(context.Context, string) ([]spool.Quarantined, error) { panic("unused") }
func (slow) QuarantineShow(context.Context, spool.MessageID, io.Writer) (int64, error) {
	panic("unused")
}
func (slow) QuarantineRelease(context.Context, spool.MessageID) ([]string, error) { panic("unused") }
func (slow) QuarantineDelete(context.Context, spool.MessageID) error              { panic("unused") }

// A request that sends its head and nothing more is dropped after the
// read timeout; this one checks only that a half request does not block
// other clients.
func TestHalfRequestBlocksNobody(t *testing.T) {
	dir := t.TempDir()
	s := storeWithMail(t, dir)
	srv, c := serve(t, Local(s), limits{})
	conn, err := net.Dial("unix", srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /accounts HTTP/1.1\r\nHost: postie\r\nContent-Length: 100\r\n\r\n{")
	if _, err := c.Accounts(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
