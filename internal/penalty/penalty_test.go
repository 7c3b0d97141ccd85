package penalty

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestDelays(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tb := New(Config{Base: time.Second, Max: 15 * time.Second, Forget: 10 * time.Minute, Now: c.now})
	want := []time.Duration{0, 1, 2, 4, 8, 15, 15}
	for i, w := range want {
		if got := tb.Delay("ip:192.0.2.1"); got != w*time.Second {
			t.Fatalf("after %d failures: %v, want %v", i, got, w*time.Second)
		}
		tb.Fail("ip:192.0.2.1", "user:alice")
	}
	// The longest delay of the keys counts.
	if got := tb.Delay("ip:198.51.100.9", "user:alice"); got != 15*time.Second {
		t.Fatalf("by account: %v", got)
	}
	if got := tb.Delay("ip:198.51.100.9"); got != 0 {
		t.Fatalf("unrelated key: %v", got)
	}
	// Forgotten after quiet time, and forgiven after a success.
	c.t = c.t.Add(10 * time.Minute)
	if got := tb.Delay("ip:192.0.2.1"); got != 0 {
		t.Fatalf("after the quiet time: %v", got)
	}
	tb.Fail("user:bob")
	tb.Forgive("user:bob")
	if tb.Failures("user:bob") != 0 {
		t.Fatal("Forgive did not forget")
	}
}

func TestBoundedKeys(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tb := New(Config{MaxKeys: 100, Now: c.now})
	for i := 0; i < 10_000; i++ {
		c.t = c.t.Add(time.Millisecond)
		tb.Fail(fmt.Sprintf("ip:%d", i))
		if tb.Len() > 100 {
			t.Fatalf("%d keys remembered, bound is 100", tb.Len())
		}
	}
	// The newest key is still there.
	if tb.Failures("ip:9999") != 1 {
		t.Fatal("newest key evicted")
	}
}

// TestSetConfig: a reload changes the delays but keeps the failures.
func TestSetConfig(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tb := New(Config{Base: time.Second, Max: 15 * time.Second, Now: c.now})
	for range 3 {
		tb.Fail("ip:192.0.2.1")
	}
	if got := tb.Delay("ip:192.0.2.1"); got != 4*time.Second {
		t.Fatalf("before: %v", got)
	}
	tb.SetConfig(Config{Base: 2 * time.Second, Max: 6 * time.Second, Now: c.now})
	if got := tb.Delay("ip:192.0.2.1"); got != 6*time.Second {
		t.Errorf("after SetConfig: %v, want 6s (3 failures from 2s, capped at the new max)", got)
	}
	if tb.Failures("ip:192.0.2.1") != 3 {
		t.Errorf("SetConfig forgot the failures")
	}
}
