package pop3out

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bodyTo streams a dot-stuffed multi-line body into w, un-stuffed, and
// returns its length. It holds one line at a time.
func (c *client) bodyTo(w io.Writer) int64 {
	c.t.Helper()
	var n int64
	bol := true
	for {
		c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		l, err := c.r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			c.t.Fatalf("read body: %v", err)
		}
		if bol && string(l) == ".\r\n" {
			return n
		}
		if bol && len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		bol = err == nil // a full buffer is the middle of a long line
		w.Write(l)
		n += int64(len(l))
	}
}

// heapSampler records the highest live heap seen while it runs.
type heapSampler struct {
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{stop: make(chan struct{})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		var ms runtime.MemStats
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > h.peak.Load() {
				h.peak.Store(ms.HeapAlloc)
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heapSampler) Stop() uint64 {
	close(h.stop)
	h.wg.Wait()
	return h.peak.Load()
}

// heapGrowth retrieves message n over c and returns the SHA-256 of what
// arrived, its length, and how far the heap grew above what it was before.
func heapGrowth(c *client, n int) (sum []byte, size int64, growth uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	h := startHeapSampler()
	c.cmd("+OK", "RETR %d", n)
	hs := sha256.New()
	size = c.bodyTo(hs)
	peak := h.Stop()
	if peak > base {
		growth = peak - base
	}
	return hs.Sum(nil), size, growth
}

// The large-message round trip: a message over 50 MiB comes back
// with the same SHA-256 over plaintext and over TLS, and retrieving it
// grows the heap (server and client together) by less than 8 MiB.
func TestLargeMessageRoundTrip(t *testing.T) {
	e := newEnv(t, envOptions{noFixture: true})
	msg := makeMessage(50<<20+12345, 7)
	want := sha256.Sum256(msg)
	e.deliver(alice, msg)
	msg = nil

	for _, tc := range []struct {
		name string
		dial func() *client
	}{{"plaintext", e.dial}, {"TLS", e.dialTLS}} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.dial()
			c.t = t
			c.expect("+OK ")
			c.login(alice, password)
			if l := c.cmd("+OK", "LIST 1"); l != fmt.Sprintf("+OK 1 %d", 50<<20+12345) {
				t.Fatalf("LIST 1 = %q", l)
			}
			sum, size, growth := heapGrowth(c, 1)
			if size != 50<<20+12345 || string(sum) != string(want[:]) {
				t.Fatalf("got %d octets with SHA-256 %x, want %d with %x", size, sum, 50<<20+12345, want)
			}
			t.Logf("%s: heap grew by %.2f MiB while retrieving %d octets", tc.name, float64(growth)/(1<<20), size)
			if growth > 8<<20 {
				t.Errorf("heap grew by %d bytes, want under 8 MiB", growth)
			}
			c.cmd("+OK", "QUIT")
		})
	}
}
