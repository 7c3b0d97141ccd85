package spool

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

// authCache remembers recent successful checks of account passwords, as
// Dovecot's auth cache does, so that a mail client that logs in every few
// minutes does not cost an argon2 hash each time.
//
// An entry is an HMAC, under a key made at start-up and never stored, of
// the account, its current password hash and the password: the cache holds
// no password, a changed password (a new hash) never matches an old entry,
// and only successes are cached, so a wrong password always takes the full
// check.
type authCache struct {
	ttl time.Duration
	now func() time.Time
	key []byte

	mu      sync.Mutex
	entries map[[sha256.Size]byte]time.Time // -> expiry
}

// authCacheSize bounds the entries; a full cache forgets the expired ones,
// then all, which only costs the next logins a hash.
const authCacheSize = 4096

func newAuthCache(ttl time.Duration, now func() time.Time) *authCache {
	key := make([]byte, 32)
	rand.Read(key)
	return &authCache{ttl: ttl, now: now, key: key, entries: map[[sha256.Size]byte]time.Time{}}
}

func (c *authCache) sum(account, hash, password string) [sha256.Size]byte {
	m := hmac.New(sha256.New, c.key)
	for _, s := range []string{account, hash, password} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// hit reports whether this account, hash and password passed a check
// within the TTL.
func (c *authCache) hit(account, hash, password string) bool {
	if c.ttl <= 0 {
		return false
	}
	k := c.sum(account, hash, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.entries[k]
	if !ok {
		return false
	}
	if !c.now().Before(exp) {
		delete(c.entries, k)
		return false
	}
	return true
}

// remember records a successful check.
func (c *authCache) remember(account, hash, password string) {
	if c.ttl <= 0 {
		return
	}
	k := c.sum(account, hash, password)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= authCacheSize {
		for e, exp := range c.entries {
			if !now.Before(exp) {
				delete(c.entries, e)
			}
		}
		if len(c.entries) >= authCacheSize {
			clear(c.entries)
		}
	}
	c.entries[k] = now.Add(c.ttl)
}
