package spool

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// DeviceInfo describes one way of logging in to an account: the account
// password (Name "", ID 0) or a device password.
type DeviceInfo struct {
	ID        uint32
	Name      string
	Created   time.Time
	All       bool // sees mail that arrived before it was added
	LastLogin time.Time
	LastIP    string
	Waiting   int // messages in its view
}

// validDeviceName accepts 1 to 64 letters, digits, '.', '_' and '-'.
func validDeviceName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("invalid device name %q: use 1 to 64 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("invalid device name %q: use letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

// newDevicePassword returns a random password of 20 base32 letters (100
// bits) in groups of five, easy to type on a phone:
//
//	k3vqd-7ahfm-2pxse-wq4no
func newDevicePassword() string {
	t := strings.ToLower(rand.Text()[:20])
	return t[0:5] + "-" + t[5:10] + "-" + t[10:15] + "-" + t[15:20]
}

// AddDevice gives an account a new device password and returns it; only its
// hash is stored. The device sees mail that arrives from now on, or all the
// mailbox when all is true.
func (s *Store) AddDevice(ctx context.Context, addr, name string, all bool) (string, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return "", err
	}
	if err := validDeviceName(name); err != nil {
		return "", err
	}
	pw := newDevicePassword()
	now := s.opts.Now()
	err = s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		for _, d := range a.Devices {
			if strings.EqualFold(d.Name, name) {
				return fmt.Errorf("%w: %s on %s", ErrDeviceExists, name, addr)
			}
		}
		a.NextDevice++
		if a.NextDevice == 0 { // wrapped: 2^32 devices added
			return fmt.Errorf("spool: %s: out of device numbers", addr)
		}
		first := uint64(1)
		if mb := tx.Bucket(bucketMailboxes).Bucket([]byte(addr)); mb != nil {
			first = mb.Sequence() + 1
		}
		a.Devices = append(a.Devices, deviceRecord{ID: a.NextDevice, Name: name, TokenHash: tokenHash(pw), Created: now, FirstUID: first, All: all})
		return putAccount(tx, a)
	})
	if err != nil {
		return "", err
	}
	return pw, nil
}

// Devices lists an account's ways of logging in: first the account
// password, then each device.
func (s *Store) Devices(addr string) ([]DeviceInfo, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return nil, err
	}
	var out []DeviceInfo
	err = s.view(func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		out = append(out, DeviceInfo{Created: a.Created, All: true, LastLogin: a.LastLogin, LastIP: a.LastIP})
		for _, d := range a.Devices {
			out = append(out, DeviceInfo{ID: d.ID, Name: d.Name, Created: d.Created, All: d.All, LastLogin: d.LastLogin, LastIP: d.LastIP})
		}
		mb := tx.Bucket(bucketMailboxes).Bucket([]byte(addr))
		if mb == nil {
			return nil
		}
		return forEachEntry(mb, func(uid uint64, e *entryRecord) error {
			for i := range out {
				if a.visible(uid, e, out[i].ID) {
					out[i].Waiting++
				}
			}
			return nil
		})
	})
	return out, err
}

// DeleteDevice revokes a device password. Its claim on the mail goes with
// it: messages that every remaining active device has deleted are removed.
func (s *Store) DeleteDevice(ctx context.Context, addr, name string) error {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return err
	}
	now := s.opts.Now()
	var gone uint32
	err = s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		i := -1
		for j, d := range a.Devices {
			if strings.EqualFold(d.Name, name) {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("%w: %s on %s", ErrNoSuchDevice, name, addr)
		}
		gone = a.Devices[i].ID
		a.Devices = append(a.Devices[:i], a.Devices[i+1:]...)
		if err := putAccount(tx, a); err != nil {
			return err
		}
		return s.resettle(tx, a, now, func(e *entryRecord) {
			kept := e.DeletedBy[:0]
			for _, d := range e.DeletedBy {
				if d != gone {
					kept = append(kept, d)
				}
			}
			e.DeletedBy = kept
		})
	})
	if err == nil {
		s.revoke(addr, gone, false)
	}
	return err
}

// resettle runs settle again over every entry of a's mailbox that some
// device deleted, after fix (if any) adjusts it. It runs inside the
// caller's transaction.
func (s *Store) resettle(tx *bbolt.Tx, a *accountRecord, now time.Time, fix func(*entryRecord)) error {
	mb := tx.Bucket(bucketMailboxes).Bucket([]byte(a.Address))
	if mb == nil {
		return nil
	}
	type item struct {
		uid uint64
		e   entryRecord
	}
	var items []item
	if err := forEachEntry(mb, func(uid uint64, e *entryRecord) error {
		if len(e.DeletedBy) > 0 || !e.Trashed.IsZero() {
			items = append(items, item{uid, *e})
		}
		return nil
	}); err != nil {
		return err
	}
	for _, it := range items {
		e := it.e
		if !e.Trashed.IsZero() {
			if s.opts.Retention.D() == 0 || now.Sub(e.Trashed) >= s.opts.Retention.D() {
				if err := removeEntry(tx, mb, it.uid, &e); err != nil {
					return err
				}
			}
			continue
		}
		if fix != nil {
			fix(&e)
		}
		if len(e.DeletedBy) == 0 {
			e.FirstDeleted = time.Time{}
		}
		if err := s.settle(tx, a, mb, it.uid, &e, now); err != nil {
			return err
		}
	}
	return nil
}

// Sweep applies the passing of time to every mailbox: messages whose
// remaining claimants went idle, or whose first deletion is older than
// DeviceDeleteGrace, leave the views; retained messages older than
// Retention are purged. It returns the number of accounts it went through.
// Serve runs it periodically.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	accts, err := s.Accounts()
	if err != nil {
		return 0, err
	}
	for _, ai := range accts {
		addr := ai.Address
		now := s.opts.Now()
		if err := s.update(ctx, 0, func(tx *bbolt.Tx) error {
			a, err := getAccount(tx, addr)
			if err != nil {
				return nil // deleted meanwhile
			}
			return s.resettle(tx, a, now, nil)
		}); err != nil {
			return 0, fmt.Errorf("spool: sweep %s: %w", addr, err)
		}
	}
	return len(accts), nil
}

// Restore brings back every retained message of an account, for every
// device, and returns how many. It fails with ErrNotRetained when retention
// is off.
func (s *Store) Restore(ctx context.Context, addr string) (int, error) {
	if s.opts.Retention.D() == 0 {
		return 0, ErrNotRetained
	}
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return 0, err
	}
	var n int
	err = s.update(ctx, 0, func(tx *bbolt.Tx) error {
		n = 0
		if _, err := getAccount(tx, addr); err != nil {
			return err
		}
		mb := tx.Bucket(bucketMailboxes).Bucket([]byte(addr))
		if mb == nil {
			return nil
		}
		var uids []uint64
		var entries []entryRecord
		if err := forEachEntry(mb, func(uid uint64, e *entryRecord) error {
			if !e.Trashed.IsZero() {
				uids = append(uids, uid)
				entries = append(entries, *e)
			}
			return nil
		}); err != nil {
			return err
		}
		for i, uid := range uids {
			e := entries[i]
			e.Trashed, e.FirstDeleted, e.DeletedBy = time.Time{}, time.Time{}, nil
			if err := mb.Put(u64(uid), encode(&e)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
