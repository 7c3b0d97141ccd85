package spool

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"time"

	"go.etcd.io/bbolt"
)

// Greylisting (RFC 6647) defers the first delivery attempt from an
// unknown (client network, sender, recipient) triplet: real MTAs retry,
// much spamware does not. Its state is kept in the spool so that it
// survives restarts: a triplet's first attempt, and the networks that
// passed, for a while.

// GreylistOptions set the greylisting rules.
type GreylistOptions struct {
	// Delay is how long after the first attempt a retry passes.
	Delay time.Duration
	// Expire is how long after the first attempt a retry may come; a
	// later one starts over.
	Expire time.Duration
	// PassTTL is how long a network that passed is let through without
	// greylisting.
	PassTTL time.Duration
	// MaxEntries bounds the triplets and networks kept; the oldest go first.
	MaxEntries int
}

// The greylist bucket's keys: "t" + SHA-256 of a triplet -> first attempt;
// "n" + network -> passed until. Values are Unix seconds, 8 bytes.
var bucketGreylist = []byte("greylist")

// Greylist judges a delivery attempt of one message from network (a /24 or
// /64, as the caller groups it) by sender to rcpts at now. It reports
// whether the attempt passes; an attempt that does not pass should get a
// temporary refusal. A pass lets the network through for PassTTL.
func (s *Store) Greylist(ctx context.Context, network, sender string, rcpts []string, now time.Time, o GreylistOptions) (bool, error) {
	netKey := append([]byte("n"), network...)
	// The common case, a known network, needs no write.
	passed := false
	if err := s.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketGreylist); b != nil {
			if v := b.Get(netKey); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > now.Unix() {
				passed = true
			}
		}
		return nil
	}); err != nil || passed {
		return passed, err
	}
	err := s.update(ctx, 0, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketGreylist)
		if err != nil {
			return err
		}
		passed = true
		for _, r := range rcpts {
			h := sha256.Sum256([]byte(network + "\x00" + sender + "\x00" + r))
			key := append([]byte("t"), h[:]...)
			first := int64(0)
			if v := b.Get(key); len(v) == 8 {
				first = int64(binary.BigEndian.Uint64(v))
			}
			age := now.Unix() - first
			switch {
			case first == 0 || age > int64(o.Expire.Seconds()):
				// First seen, or the retry came too late: start over.
				if err := b.Put(key, beUnix(now.Unix())); err != nil {
					return err
				}
				passed = false
			case age < int64(o.Delay.Seconds()):
				passed = false
			}
		}
		if passed {
			for _, r := range rcpts {
				h := sha256.Sum256([]byte(network + "\x00" + sender + "\x00" + r))
				if err := b.Delete(append([]byte("t"), h[:]...)); err != nil {
					return err
				}
			}
			return b.Put(netKey, beUnix(now.Add(o.PassTTL).Unix()))
		}
		return nil
	})
	return passed, err
}

func beUnix(t int64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t))
	return b[:]
}

// GreylistPrune removes triplets older than Expire and networks whose pass
// ran out, and the oldest entries while there are more than MaxEntries.
// It returns the entries left.
func (s *Store) GreylistPrune(ctx context.Context, now time.Time, o GreylistOptions) (int, error) {
	left := 0
	err := s.update(ctx, 0, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketGreylist)
		if b == nil {
			return nil
		}
		type entry struct {
			key  []byte
			when int64 // first attempt, or end of pass less PassTTL: comparable ages
		}
		var keep []entry
		var drop [][]byte
		b.ForEach(func(k, v []byte) error {
			if len(v) != 8 || len(k) == 0 {
				drop = append(drop, append([]byte(nil), k...))
				return nil
			}
			t := int64(binary.BigEndian.Uint64(v))
			switch k[0] {
			case 't':
				if now.Unix()-t > int64(o.Expire.Seconds()) {
					drop = append(drop, append([]byte(nil), k...))
					return nil
				}
				keep = append(keep, entry{append([]byte(nil), k...), t})
			case 'n':
				if t <= now.Unix() {
					drop = append(drop, append([]byte(nil), k...))
					return nil
				}
				keep = append(keep, entry{append([]byte(nil), k...), t - int64(o.PassTTL.Seconds())})
			default:
				drop = append(drop, append([]byte(nil), k...))
			}
			return nil
		})
		if o.MaxEntries > 0 && len(keep) > o.MaxEntries {
			// The oldest go first.
			sort.Slice(keep, func(i, j int) bool { return keep[i].when < keep[j].when })
			for _, e := range keep[:len(keep)-o.MaxEntries] {
				drop = append(drop, e.key)
			}
			keep = keep[len(keep)-o.MaxEntries:]
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		left = len(keep)
		return nil
	})
	return left, err
}
