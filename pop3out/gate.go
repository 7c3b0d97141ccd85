package pop3out

import (
	"context"
	"sync"
)

// gate lets one password check at a time through per account, across
// every connection: parallel connections then cannot multiply the rate of
// guesses, since each check also waits out the account's penalty delay
// before it is made. Keys with nobody holding or waiting are dropped, so
// the map is bounded by the sessions in flight.
type gate struct {
	mu    sync.Mutex
	slots map[string]*gateSlot
}

type gateSlot struct {
	ch    chan struct{} // holds a token while the key is taken
	users int           // holders and waiters
}

func newGate() *gate { return &gate{slots: map[string]*gateSlot{}} }

// enter waits until key is free and takes it, or returns ctx's error. The
// returned function gives it back.
func (g *gate) enter(ctx context.Context, key string) (func(), error) {
	g.mu.Lock()
	sl := g.slots[key]
	if sl == nil {
		sl = &gateSlot{ch: make(chan struct{}, 1)}
		g.slots[key] = sl
	}
	sl.users++
	g.mu.Unlock()
	select {
	case sl.ch <- struct{}{}:
		return func() { <-sl.ch; g.leave(key, sl) }, nil
	case <-ctx.Done():
		g.leave(key, sl)
		return nil, ctx.Err()
	}
}

func (g *gate) leave(key string, sl *gateSlot) {
	g.mu.Lock()
	if sl.users--; sl.users == 0 {
		delete(g.slots, key)
	}
	g.mu.Unlock()
}
