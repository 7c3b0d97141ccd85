package control

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/spool"
)

func openStore(t *testing.T, dir string) (*spool.Store, error) {
	t.Helper()
	opts := spool.DefaultOptions()
	opts.Path = filepath.Join(dir, "spool.db")
	opts.HashParams = spool.HashParams{Time: 1, Memory: 64, Threads: 1}
	return spool.Open(opts)
}

// exercise runs every command through an Admin and checks the results.
func exercise(t *testing.T, a Admin) {
	ctx := context.Background()
	if err := a.AddAccount(ctx, "alice@example.com", "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddAccount(ctx, "alice@example.com", "correct horse battery"); !errors.Is(err, spool.ErrAccountExists) {
		t.Fatalf("duplicate: %v (want ErrAccountExists to survive the trip)", err)
	}
	if err := a.AddAccount(ctx, "bob@example.com", "short"); !errors.Is(err, spool.ErrWeakPassword) {
		t.Fatalf("weak: %v", err)
	}
	if err := a.SetPassword(ctx, "nobody@example.com", "correct horse battery"); !errors.Is(err, spool.ErrNoSuchAccount) {
		t.Fatalf("passwd unknown: %v", err)
	}
	pw, err := a.AddDevice(ctx, "alice@example.com", "phone", false)
	if err != nil || len(pw) != 23 {
		t.Fatalf("AddDevice: %q, %v", pw, err)
	}
	devs, err := a.Devices(ctx, "alice@example.com")
	if err != nil || len(devs) != 2 || devs[1].Name != "phone" {
		t.Fatalf("Devices: %+v, %v", devs, err)
	}
	if err := a.DeleteDevice(ctx, "alice@example.com", "tablet"); !errors.Is(err, spool.ErrNoSuchDevice) {
		t.Fatalf("DeleteDevice unknown: %v", err)
	}
	if err := a.DeleteDevice(ctx, "alice@example.com", "phone"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetQuota(ctx, "alice@example.com", 12345); err != nil {
		t.Fatal(err)
	}
	accts, err := a.Accounts(ctx)
	if err != nil || len(accts) != 1 || accts[0].Address != "alice@example.com" || accts[0].Quota != 12345 {
		t.Fatalf("Accounts: %+v, %v", accts, err)
	}
	if _, err := a.Restore(ctx, "alice@example.com"); !errors.Is(err, spool.ErrNotRetained) {
		t.Fatalf("Restore: %v", err)
	}
	var mbox bytes.Buffer
	if _, err := a.Export(ctx, "alice@example.com", &mbox); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Export(ctx, "nobody@example.com", &mbox); !errors.Is(err, spool.ErrNoSuchAccount) {
		t.Fatalf("Export unknown: %v", err)
	}
	var backup bytes.Buffer
	n, err := a.Backup(ctx, &backup)
	if err != nil || n == 0 || int64(backup.Len()) != n {
		t.Fatalf("Backup: %d bytes (%d received), %v", n, backup.Len(), err)
	}
	p := filepath.Join(t.TempDir(), "copy.db")
	os.WriteFile(p, backup.Bytes(), 0o600)
	if problems, err := spool.VerifyFile(p); err != nil || len(problems) != 0 {
		t.Fatalf("backup copy: %v, %v", problems, err)
	}
	if problems, err := a.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("Verify: %v, %v", problems, err)
	}
	st, err := a.Status(ctx)
	if err != nil || len(st.Accounts) != 1 || st.Accounts[0].Address != "alice@example.com" || st.Accounts[0].Quota != 12345 ||
		len(st.Accounts[0].Devices) != 1 || st.Live != nil {
		t.Fatalf("Status: %+v, %v (want alice with her one login, no live figures)", st, err)
	}
	if err := a.DeleteAccount(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
}

// TestStatusLive: a running server adds its own figures to the spool's.
func TestStatusLive(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv, err := Listen(filepath.Join(dir, SocketName), s, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	started := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	srv.SetLive(func() Live {
		return Live{Started: started, Received: 7, Refused: map[string]int64{"unknown_user": 2}, CertExpiry: started.Add(time.Hour), CertNames: []string{"mx.example.com"}}
	})
	c, err := Dial(filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := s.AddAccount(context.Background(), "alice@example.com", "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	l := st.Live
	if l == nil || !l.Started.Equal(started) || l.Received != 7 || l.Refused["unknown_user"] != 2 || !l.CertExpiry.Equal(started.Add(time.Hour)) ||
		len(st.Accounts) != 1 || len(st.Accounts[0].Devices) != 1 {
		t.Fatalf("Status: %+v, live %+v", st, l)
	}
}

func TestOverTheSocket(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv, err := Listen(filepath.Join(dir, SocketName), s, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fi, err := os.Stat(filepath.Join(dir, SocketName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	// The server holds the file: Connect must use the socket.
	a, err := Connect(dir, func() (*spool.Store, error) { return openStore(t, dir) })
	if err != nil {
		t.Fatal(err)
	}
	if !a.Remote() {
		t.Fatal("Connect opened the file although a server runs")
	}
	exercise(t, a)
	// A change made through the socket is live in the server's store at once.
	if err := a.AddAccount(context.Background(), "carol@example.com", "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasAccount("carol@example.com"); !ok {
		t.Fatal("account added over the socket is not in the running store")
	}
}

func TestWithoutAServer(t *testing.T) {
	dir := t.TempDir()
	// A stale socket left by a killed server must not get in the way.
	os.WriteFile(filepath.Join(dir, SocketName), nil, 0o600)
	a, err := Connect(dir, func() (*spool.Store, error) { return openStore(t, dir) })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Remote() {
		t.Fatal("Connect claims a server runs")
	}
	exercise(t, a)
}

func TestBadRequests(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	defer s.Close()
	srv, _ := Listen(filepath.Join(dir, SocketName), s, slog.New(slog.DiscardHandler))
	defer srv.Close()
	c, _ := Dial(filepath.Join(dir, SocketName))
	_, err := do[none](context.Background(), c, http.MethodPost, nil, "format-disk")
	if err == nil || !strings.Contains(err.Error(), "404") || errors.Is(err, spool.ErrNoSuchAccount) {
		t.Fatalf("unknown op: %v", err)
	}
}

// A data directory too deep for a Unix socket gets an error that says so,
// not bind's bare "invalid argument".
func TestSocketPathTooLong(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	defer s.Close()
	deep := filepath.Join(dir, strings.Repeat("d", 120))
	if err := os.Mkdir(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(filepath.Join(deep, SocketName), s, slog.New(slog.DiscardHandler))
	if err == nil {
		srv.Close()
		t.Fatal("listened on a path longer than a Unix socket allows")
	}
	if !strings.Contains(err.Error(), "use a shorter data_dir") {
		t.Fatalf("error %q does not say what to do", err)
	}
}

// storeWithMail opens a store in dir with alice@example.com holding the
// given messages; the test closes it.
func storeWithMail(t *testing.T, dir string, bodies ...string) *spool.Store {
	t.Helper()
	s, err := openStore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.AddAccount(ctx, "alice@example.com", "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	for _, body := range bodies {
		if _, err := s.Deliver(ctx, spool.Envelope{}, []string{"alice@example.com"}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// Export over the socket gives what the store gives, byte for byte and
// across many chunks, and the number of messages.
func TestExportOverTheSocket(t *testing.T) {
	dir := t.TempDir()
	s := storeWithMail(t, dir, "Subject: a\r\n\r\nFrom here\r\n", strings.Repeat("x", 3<<20)+"\r\n", "Subject: c\r\n\r\nlast\r\n")
	ctx := context.Background()
	var want bytes.Buffer
	if _, err := s.Export(ctx, "alice@example.com", &want); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(filepath.Join(dir, SocketName), s, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := Dial(filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	n, err := c.Export(ctx, "alice@example.com", &got)
	if err != nil || n != 3 {
		t.Fatalf("Export: %d messages, %v; want 3", n, err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("export over the socket: %d bytes, want the store's %d", got.Len(), want.Len())
	}
}

// A stream the server could not finish is an error for the client, never
// a short mbox or backup taken for a whole one.
func TestStreamCutShort(t *testing.T) {
	const head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Postie-Complete, Postie-Error\r\n\r\n"
	for _, tc := range []struct{ name, sent string }{
		{"inside a chunk", head + "10\r\nonly part"},
		{"between chunks", head + "4\r\nsome\r\n"},
		{"without the trailer", head + "4\r\nsome\r\n0\r\n\r\n"},
		{"error in the trailer", head + "4\r\nsome\r\n0\r\nPostie-Error: disk on fire\r\n\r\n"},
		{"not chunked", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsome"},
		{"bad count", head + "4\r\nsome\r\n0\r\nPostie-Complete: many\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), SocketName)
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				// Dial's probe connection first, then the request's.
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
						io.WriteString(c, tc.sent)
					}
					c.Close()
				}
			}()
			c, err := Dial(path)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got bytes.Buffer
			if _, err := c.Export(ctx, "alice@example.com", &got); err == nil {
				t.Fatalf("a stream cut short was taken as whole (%q)", got.String())
			}
		})
	}
}

// A backup whose client stops reading does not keep the server from
// closing: Close cuts the stream, and the client is told it is incomplete.
func TestCloseCutsAStalledStream(t *testing.T) {
	dir := t.TempDir()
	// Enough data that the server blocks writing to a client that reads
	// nothing (the socket buffers hold a few hundred KiB).
	mb := strings.Repeat("x", 1<<20)
	s := storeWithMail(t, dir, mb, mb, mb, mb, mb, mb, mb, mb)
	ctx := context.Background()
	srv, err := Listen(filepath.Join(dir, SocketName), s, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe() // nobody reads it: the client stalls on its first write
	result := make(chan error, 1)
	go func() {
		_, err := c.Backup(ctx, pw)
		result <- err
	}()
	// Wait until the server is streaming, then close it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		srv.mu.Lock()
		n := len(srv.streams)
		srv.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backup never started streaming")
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a stalled stream")
	}
	pr.Close() // let the client's write fail, so it returns
	if err := <-result; err == nil {
		t.Fatal("a backup cut short was reported complete")
	}
}
