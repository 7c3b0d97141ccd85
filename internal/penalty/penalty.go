// Package penalty slows down peers that keep failing: failed logins, probes
// for unknown recipients. Each failure recorded against a key (a client
// network, an account) doubles the delay the next attempt with that key must
// wait, from Base up to Max, and a key that stays quiet for Forget is
// forgotten. It never locks anyone out: the worst a stranger can do to the
// owner's account is make a login wait Max.
package penalty

import (
	"sync"
	"time"
)

// Table records failures per key. It is safe for concurrent use and holds at
// most MaxKeys keys: when full, it forgets the keys that have been quiet
// longest.
type Table struct {
	base, max, forget time.Duration
	maxKeys           int
	now               func() time.Time

	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	failures int
	last     time.Time
}

// Config sets a Table's parameters.
type Config struct {
	Base    time.Duration // delay after the first failure (default 1s)
	Max     time.Duration // the longest delay (default 15s)
	Forget  time.Duration // quiet time after which a key is forgotten (default 10m)
	MaxKeys int           // bound on remembered keys (default 100000)
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// New makes a Table.
func New(c Config) *Table {
	c = c.withDefaults()
	return &Table{base: c.Base, max: c.Max, forget: c.Forget, maxKeys: c.MaxKeys, now: c.Now, keys: map[string]*entry{}}
}

// SetConfig changes the delays, the forget time and the bound of a table in
// use (a config reload), keeping the failures it remembers: a reload must
// not forgive a peer that was guessing.
func (t *Table) SetConfig(c Config) {
	c = c.withDefaults()
	t.mu.Lock()
	t.base, t.max, t.forget, t.maxKeys, t.now = c.Base, c.Max, c.Forget, c.MaxKeys, c.Now
	t.mu.Unlock()
}

func (c Config) withDefaults() Config {
	if c.Base <= 0 {
		c.Base = time.Second
	}
	if c.Max < c.Base {
		c.Max = 15 * time.Second
		if c.Max < c.Base {
			c.Max = c.Base
		}
	}
	if c.Forget <= 0 {
		c.Forget = 10 * time.Minute
	}
	if c.MaxKeys <= 0 {
		c.MaxKeys = 100_000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Failures returns the failures remembered for key.
func (t *Table) Failures(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.live(key); e != nil {
		return e.failures
	}
	return 0
}

// Delay returns how long the next attempt must wait: the longest delay of
// the given keys.
func (t *Table) Delay(keys ...string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d time.Duration
	for _, k := range keys {
		if e := t.live(k); e != nil {
			d = max(d, t.delayFor(e.failures))
		}
	}
	return d
}

func (t *Table) delayFor(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := t.base
	for i := 1; i < failures && d < t.max; i++ {
		d *= 2
	}
	return min(d, t.max)
}

// live returns the entry of key unless it has been forgotten. Callers hold mu.
func (t *Table) live(key string) *entry {
	e := t.keys[key]
	if e == nil {
		return nil
	}
	if t.now().Sub(e.last) >= t.forget {
		delete(t.keys, key)
		return nil
	}
	return e
}

// Fail records a failure against each key.
func (t *Table) Fail(keys ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, k := range keys {
		e := t.live(k)
		if e == nil {
			if len(t.keys) >= t.maxKeys {
				t.evict()
			}
			e = &entry{}
			t.keys[k] = e
		}
		e.failures++
		e.last = now
	}
}

// Forgive forgets the failures of each key (after a success).
func (t *Table) Forgive(keys ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range keys {
		delete(t.keys, k)
	}
}

// evict makes room: it drops forgotten keys, and if that is not enough, the
// quietest tenth. Callers hold mu.
func (t *Table) evict() {
	now := t.now()
	for k, e := range t.keys {
		if now.Sub(e.last) >= t.forget {
			delete(t.keys, k)
		}
	}
	if len(t.keys) < t.maxKeys {
		return
	}
	var cutoff time.Time
	n := 0
	for _, e := range t.keys {
		if n == 0 || e.last.Before(cutoff) {
			cutoff = e.last
		}
		n++
	}
	// Drop entries in the oldest tenth of the time range.
	span := now.Sub(cutoff) / 10
	for k, e := range t.keys {
		if e.last.Sub(cutoff) <= span {
			delete(t.keys, k)
		}
	}
}

// Len returns the number of keys remembered.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}
