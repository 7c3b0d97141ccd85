package spool

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWatchdog(t *testing.T) {
	s := openTest(t, func(o *Options) { o.Quota = 100 })
	ctx := context.Background()
	mustAddAccount(t, s, "alice@example.com")
	mustAddAccount(t, s, "bob@example.com")
	if _, err := s.Deliver(ctx, Envelope{}, []string{"alice@example.com"}, strings.NewReader(strings.Repeat("x", 88))); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	w := s.NewWatchdog(24*time.Hour, 0.8, slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Now()
	// Fresh: alice is near her quota (90 of 100) but not overdue.
	got, _ := w.Check(now)
	if len(got) != 1 || got[0] != "alice@example.com" || !strings.Contains(logs.String(), "state=near_quota") {
		t.Fatalf("first check: %v\n%s", got, logs.String())
	}
	// Two days later without a fetch: overdue too; bob has no mail, so he is fine.
	logs.Reset()
	got, _ = w.Check(now.Add(48 * time.Hour))
	if len(got) != 1 || !strings.Contains(logs.String(), `state="overdue near_quota"`) {
		t.Fatalf("later check: %v\n%s", got, logs.String())
	}
	// No change: no new log line.
	logs.Reset()
	w.Check(now.Add(49 * time.Hour))
	if logs.Len() != 0 {
		t.Fatalf("repeated a warning: %s", logs.String())
	}
}

// TestHousekeeping: the loop runs the watchdog at once and the sweep on
// every round, and stops with its context.
func TestHousekeeping(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Quota = 100; o.Now = clock.Now })
	mustAddAccount(t, s, "alice@example.com")
	if _, err := s.Deliver(context.Background(), Envelope{}, []string{"alice@example.com"}, strings.NewReader(strings.Repeat("x", 95))); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Housekeeping(ctx, HousekeepingOptions{Every: 10 * time.Millisecond, QuotaWarning: 0.9, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "watchdog: mailbox needs attention") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Housekeeping did not stop with its context")
	}
	if !strings.Contains(logs.String(), "account=alice@example.com") {
		t.Errorf("no watchdog line for alice:\n%s", logs.String())
	}
}

// syncBuffer is a bytes.Buffer for a logger in another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
