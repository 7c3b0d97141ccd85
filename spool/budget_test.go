package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestBudget(t *testing.T) {
	ctx := context.Background()
	b := newBudget(100)
	if n, err := b.acquire(ctx, 60); n != 60 || err != nil {
		t.Fatalf("acquire(60) = %d, %v", n, err)
	}
	// Larger than the whole budget: clamped, so it waits for an idle
	// store instead of for ever.
	big := make(chan int)
	go func() { n, _ := b.acquire(ctx, 500); big <- n }()
	waitWaiters(t, b, 1)
	// A small request behind it waits its turn though it would fit.
	small := make(chan int)
	go func() { n, _ := b.acquire(ctx, 10); small <- n }()
	waitWaiters(t, b, 2)
	select {
	case <-small:
		t.Fatal("a later small request overtook an earlier large one")
	case <-time.After(20 * time.Millisecond):
	}
	b.release(60)
	if n := <-big; n != 100 {
		t.Fatalf("oversized acquire took %d, want the whole budget", n)
	}
	b.release(100)
	if n := <-small; n != 10 {
		t.Fatalf("small acquire took %d", n)
	}

	// A waiter whose context ends leaves the queue and lets the next in.
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error)
	go func() { _, err := b.acquire(cctx, 100); errc <- err }()
	waitWaiters(t, b, 1)
	go func() { n, _ := b.acquire(ctx, 50); small <- n }()
	waitWaiters(t, b, 2)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire: %v", err)
	}
	if n := <-small; n != 50 {
		t.Fatalf("acquire behind a cancelled one took %d", n)
	}
	b.release(60)
	if b.free != 100 || len(b.waiters) != 0 {
		t.Fatalf("budget left with %d free and %d waiters, want 100 and 0", b.free, len(b.waiters))
	}
}

func waitWaiters(t *testing.T, b *budget, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b.mu.Lock()
		k := len(b.waiters)
		b.mu.Unlock()
		if k == n {
			return
		}
	}
	t.Fatalf("never saw %d waiters", n)
}

// TestDeliveriesShareFlushBudget runs more large deliveries at once than
// the flush budget can hold flushes for: each must wait its turn, none may
// be starved or deadlocked, every one must be stored intact, and the
// budget must be whole again afterwards.
func TestDeliveriesShareFlushBudget(t *testing.T) {
	s := openTest(t, func(o *Options) {
		o.ChunkSize, o.FlushBytes = 1<<10, 2<<10
		o.FlushBudget, o.FlushAhead = 8<<10, 4<<10 // four flushes in all, two each
	})
	mustAddAccount(t, s, "alice@example.com")
	const deliveries = 12
	bodies := make([]string, deliveries)
	for i := range bodies {
		bodies[i] = strings.Repeat(fmt.Sprintf("delivery %02d %s\r\n", i, strings.Repeat("x", 60)), 300+50*i)
	}
	ids := make([]MessageID, deliveries)
	var wg sync.WaitGroup
	for i := range deliveries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := s.Begin(context.Background(), Envelope{})
			for p := []byte(bodies[i]); len(p) > 0; {
				n := min(len(p), 700)
				if _, err := d.Write(p[:n]); err != nil {
					t.Error(err)
					d.Abort()
					return
				}
				p = p[n:]
			}
			id, err := d.Commit(nil, []string{"alice@example.com"})
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	m := openDrop(t, s, "alice@example.com")
	defer m.Close()
	byID := map[MessageID]int{}
	for j, msg := range m.Messages() {
		byID[msg.ID()] = j
	}
	for i, id := range ids {
		j, ok := byID[id]
		if !ok {
			t.Fatalf("delivery %d (%v) is missing", i, id)
		}
		if got := readAll(t, m, j); !bytes.Equal(got, []byte(bodies[i])) {
			t.Fatalf("delivery %d stored %d bytes, want %d", i, len(got), len(bodies[i]))
		}
	}
	if s.flushBudget.free != s.flushBudget.size {
		t.Fatalf("flush budget has %d of %d bytes free after every delivery ended", s.flushBudget.free, s.flushBudget.size)
	}
	checkVerify(t, s)
}

// TestDeliveryWaitingForBudgetCancelled: a delivery that waits for the
// flush budget when its context ends fails instead of waiting on, and
// Abort leaves nothing of it behind.
func TestDeliveryWaitingForBudgetCancelled(t *testing.T) {
	s := openTest(t, func(o *Options) {
		o.ChunkSize, o.FlushBytes = 1<<10, 2<<10
		o.FlushBudget = 4 << 10
	})
	mustAddAccount(t, s, "alice@example.com")
	// Hold the whole budget, as deliveries with flushes in flight would.
	held, _ := s.flushBudget.acquire(context.Background(), s.flushBudget.size)
	ctx, cancel := context.WithCancel(context.Background())
	d := s.Begin(ctx, Envelope{})
	errc := make(chan error, 1)
	go func() {
		_, err := d.Write([]byte(strings.Repeat("x\r\n", 10_000)))
		errc <- err
	}()
	waitWaiters(t, s.flushBudget, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Write waiting for the budget returned %v, want context.Canceled", err)
	}
	d.Abort()
	s.flushBudget.release(held)
	if s.flushBudget.free != s.flushBudget.size {
		t.Fatalf("flush budget has %d of %d bytes free", s.flushBudget.free, s.flushBudget.size)
	}
	// The same store still takes mail.
	deliver(t, s, strings.Repeat("y\r\n", 10_000), "alice@example.com")
	checkVerify(t, s)
}

// TestFlushFailureFailsQueuedCommit: a delivery larger than the space
// left has flushes that land and then one that fails, while the delivery
// goes on writing and queues its Commit behind it. The Commit must fail
// with the flush's ErrStorageFull, nothing may be linked, and what had
// landed must go.
func TestFlushFailureFailsQueuedCommit(t *testing.T) {
	s := openTest(t, func(o *Options) { o.MaxSize = 4 << 20 })
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()
	for _, size := range []int{5 << 20, 6 << 20, 9 << 20} {
		d := s.Begin(ctx, Envelope{})
		var err error
		body := []byte(strings.Repeat(strings.Repeat("z", 78)+"\r\n", size/80))
		for p := body; len(p) > 0 && err == nil; {
			n := min(len(p), 32<<10)
			_, err = d.Write(p[:n])
			p = p[n:]
		}
		if err == nil {
			_, err = d.Commit(nil, []string{"alice@example.com"})
		} else {
			d.Abort()
		}
		if !errors.Is(err, ErrStorageFull) {
			t.Fatalf("%d MiB into a 4 MiB spool: %v, want ErrStorageFull", size>>20, err)
		}
		checkVerify(t, s)
		if n := countChunks(t, s); n != 0 {
			t.Fatalf("%d MiB: %d chunks left after the failed delivery", size>>20, n)
		}
		if st, err := s.Stats(); err != nil || st.Messages != 0 {
			t.Fatalf("%d MiB: %d messages stored (%v)", size>>20, st.Messages, err)
		}
	}
	// The space is there again for a message that fits.
	deliver(t, s, strings.Repeat("y\r\n", 100_000), "alice@example.com")
	checkVerify(t, s)
}

// TestLaterFlushChecksFirst: a delivery's later writes find its id where
// its first flush left it, and must refuse to write when that flush did
// not land, even when the same id now belongs to another delivery (the
// sequence rolls back with a failed transaction and is handed out again).
func TestLaterFlushChecksFirst(t *testing.T) {
	s := openTest(t, nil)
	err := s.update(context.Background(), 0, func(tx *bbolt.Tx) error {
		// Another delivery (token 2) holds id 7.
		if err := tx.Bucket(bucketPending).Put(u64(7), pendingMark(time.Now(), 2, 1)); err != nil {
			return err
		}
		for _, slot := range []*idSlot{{id: 0, token: 1}, {id: 7, token: 1}, {id: 8, token: 1}} {
			if err := landFlush(tx, slot); !errors.Is(err, errFlushLost) {
				t.Errorf("slot %+v: %v, want errFlushLost", *slot, err)
			}
		}
		ours := &idSlot{id: 7, token: 2}
		if err := landFlush(tx, ours); err != nil {
			return err
		}
		v, err := pendingFor(tx, ours)
		if err != nil {
			return err
		}
		if n := binary.BigEndian.Uint32(v[16:]); n != 2 {
			t.Errorf("%d flushes counted as landed, want 2", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
