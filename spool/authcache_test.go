package spool

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// TestAuthCache checks that a repeated login with the right password skips
// the hash, and that a wrong password, a changed password or an expired
// entry never gets through the cache.
func TestAuthCache(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now; o.AuthCacheTTL = units.DurationOf(3600e9) })
	ctx := context.Background()
	mustAddAccount(t, s, "alice@example.com")
	if _, err := s.Authenticate("alice@example.com", "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if !s.auth.hit("alice@example.com", accountHash(t, s, "alice@example.com"), "correct horse battery") {
		t.Fatal("a successful login was not remembered")
	}
	// A wrong password is never a hit and never remembered.
	if _, err := s.Authenticate("alice@example.com", "wrong password!"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	if s.auth.hit("alice@example.com", accountHash(t, s, "alice@example.com"), "wrong password!") {
		t.Fatal("a failure was cached")
	}
	// A new password: the old one fails at once, cache or not.
	if err := s.SetPassword(ctx, "alice@example.com", "another good password"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate("alice@example.com", "correct horse battery"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("the old password still works through the cache: %v", err)
	}
	if _, err := s.Authenticate("alice@example.com", "another good password"); err != nil {
		t.Fatal(err)
	}
	// Entries expire.
	clock.Advance(2 * time.Hour)
	if s.auth.hit("alice@example.com", accountHash(t, s, "alice@example.com"), "another good password") {
		t.Fatal("an expired entry was a hit")
	}
	// The cache is bounded.
	for i := 0; i < 2*authCacheSize; i++ {
		s.auth.remember(fmt.Sprint(i), "h", "p")
	}
	if n := len(s.auth.entries); n > authCacheSize {
		t.Fatalf("%d entries, bound %d", n, authCacheSize)
	}
}

func accountHash(t *testing.T, s *Store, addr string) string {
	t.Helper()
	var h string
	s.view(func(tx *bboltTx) error {
		a, err := getAccount(tx, addr)
		if err == nil {
			h = a.Hash
		}
		return err
	})
	return h
}

// BenchmarkAuthenticate compares a login with the real argon2 parameters
// with and without the cache.
func BenchmarkAuthenticate(b *testing.B) {
	for _, ttl := range []time.Duration{0, time.Hour} {
		b.Run(fmt.Sprintf("cache=%v", ttl > 0), func(b *testing.B) {
			s := openTest(b, func(o *Options) {
				o.HashParams = DefaultHashParams()
				o.AuthCacheTTL = units.DurationOf(0)
				o.AuthCacheTTL.UnmarshalText([]byte(ttl.String()))
			})
			mustAddAccount(b, s, "alice@example.com")
			for b.Loop() {
				if _, err := s.Authenticate("alice@example.com", "correct horse battery"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
