package spool

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// testClock is a settable clock for tests of time-dependent behaviour.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fastHash keeps password hashing cheap in tests.
var fastHash = HashParams{Time: 1, Memory: 64, Threads: 1}

func openTest(t testing.TB, mod func(*Options)) *Store {
	t.Helper()
	opts := DefaultOptions()
	opts.Path = filepath.Join(t.TempDir(), "spool.db")
	opts.HashParams = fastHash
	if mod != nil {
		mod(&opts)
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustAddAccount(t testing.TB, s *Store, addr string) {
	t.Helper()
	if err := s.AddAccount(context.Background(), addr, "correct horse battery"); err != nil {
		t.Fatalf("AddAccount(%s): %v", addr, err)
	}
}

func deliver(t testing.TB, s *Store, body string, to ...string) MessageID {
	t.Helper()
	id, err := s.Deliver(context.Background(), Envelope{MailFrom: "sender@example.net", RcptTo: to}, to, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	return id
}

func openDrop(t testing.TB, s *Store, addr string) *Maildrop {
	t.Helper()
	m, err := s.OpenMaildrop(context.Background(), Login{Account: addr}, "127.0.0.1")
	if err != nil {
		t.Fatalf("OpenMaildrop(%s): %v", addr, err)
	}
	return m
}

func readAll(t testing.TB, m *Maildrop, i int) []byte {
	t.Helper()
	r, err := m.Open(i)
	if err != nil {
		t.Fatalf("Open(%d): %v", i, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read message %d: %v", i, err)
	}
	return b
}

func checkVerify(t testing.TB, s *Store) {
	t.Helper()
	for _, p := range s.Verify() {
		t.Errorf("Verify: %v", p)
	}
}

type bboltTx = bbolt.Tx
