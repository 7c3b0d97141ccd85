package spool

import (
	"context"
	"sync"
)

// budget is a number of bytes shared by the deliveries in flight: what
// their body flushes, handed to the committer and not yet committed, may
// hold in memory together. Waiters are served first come, first served,
// so a delivery asking for a large share is not passed over for ever by
// small ones.
type budget struct {
	mu      sync.Mutex
	size    int
	free    int
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	n     int
	ready chan struct{} // closed once the bytes are granted
}

func newBudget(size int) *budget {
	return &budget{size: size, free: size}
}

// acquire takes n bytes, waiting for them while the others hold too much.
// It returns the bytes taken, to be given back with release: n, or the
// whole budget when n is larger, so that one oversized request waits for
// an idle store instead of for ever.
func (b *budget) acquire(ctx context.Context, n int) (int, error) {
	n = min(n, b.size)
	b.mu.Lock()
	if len(b.waiters) == 0 && b.free >= n {
		b.free -= n
		b.mu.Unlock()
		return n, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return n, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready:
			// Granted as the context ended: give it back.
			b.mu.Unlock()
			b.release(n)
		default:
			for i, o := range b.waiters {
				if o == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
			// The first waiter leaving may let the next ones in.
			b.grantLocked()
			b.mu.Unlock()
		}
		return 0, ctx.Err()
	}
}

// release gives back n bytes taken by acquire.
func (b *budget) release(n int) {
	b.mu.Lock()
	b.free += n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *budget) grantLocked() {
	for len(b.waiters) > 0 && b.free >= b.waiters[0].n {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.free -= w.n
		close(w.ready)
	}
}
