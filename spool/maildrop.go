package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"go.etcd.io/bbolt"
)

// lockKey names what a POP3 session locks: one device's view of a mailbox.
type lockKey struct {
	account string
	device  uint32
}

// lock is a held maildrop lock. revoked is closed when an admin change
// (the device revoked, the account deleted) ends the right to it.
type lock struct {
	revoked chan struct{}
	closed  bool
}

// lockDevice takes the lock of one device's view; it returns nil when a
// session already holds it.
func (s *Store) lockDevice(account string, device uint32) *lock {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	k := lockKey{account, device}
	if _, busy := s.locks[k]; busy {
		return nil
	}
	l := &lock{revoked: make(chan struct{})}
	s.locks[k] = l
	return l
}

func (s *Store) unlockDevice(account string, device uint32) {
	s.locksMu.Lock()
	delete(s.locks, lockKey{account, device})
	s.locksMu.Unlock()
}

// revoke tells the sessions holding locks of an account that they lost the
// right to them: those of one device, or of every device when all is true.
// Admin changes never wait for a session (a stolen phone that keeps one
// open must not be able to stop its own revocation); the session ends
// instead, and its QUIT changes nothing.
func (s *Store) revoke(account string, device uint32, all bool) {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	for k, l := range s.locks {
		if k.account == account && (all || k.device == device) && !l.closed {
			l.closed = true
			close(l.revoked)
		}
	}
}

// Message is one message of a maildrop snapshot.
type Message struct {
	// UID numbers the message in its mailbox; it is never reused.
	UID uint64
	// UIDL is the unique-id listing POP3 shows (RFC 1939 §7).
	UIDL string
	// Size is the exact number of octets RETR sends before dot-stuffing.
	Size int64
	// Arrived is when the message was stored.
	Arrived time.Time

	id uint64
}

// ID returns the message's store-wide id.
func (m Message) ID() MessageID { return MessageID(m.id) }

// Maildrop is one POP3 session's hold on a mailbox: an exclusive lock on the
// logged-in device's view and a snapshot of its messages, numbered and sized
// for the whole session (RFC 1939 §3). Mail that arrives meanwhile appears
// in the next maildrop.
type Maildrop struct {
	s      *Store
	login  Login
	lock   *lock
	msgs   []Message
	closed bool
}

// Revoked is closed when the session lost its right to the maildrop: the
// device was revoked or the account deleted while it was open. The session
// should end; Commit would fail.
func (m *Maildrop) Revoked() <-chan struct{} { return m.lock.revoked }

// OpenMaildrop locks the view of the logged-in device and snapshots it. It
// fails with ErrMaildropLocked when another session holds that view, and
// records the login time and remoteIP for the device, and remoteIP's
// network as one the account logs in from (KnownNetwork).
func (s *Store) OpenMaildrop(ctx context.Context, login Login, remoteIP string) (*Maildrop, error) {
	l := s.lockDevice(login.Account, login.Device)
	if l == nil {
		return nil, fmt.Errorf("%w: %s", ErrMaildropLocked, login.Account)
	}
	m := &Maildrop{s: s, login: login, lock: l}
	now := s.opts.Now()
	err := s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, login.Account)
		if err != nil {
			return err
		}
		a.rememberNetwork(remoteIP, now)
		if login.Device == 0 {
			a.LastLogin, a.LastIP = now, remoteIP
		} else if d := a.device(login.Device); d != nil {
			d.LastLogin, d.LastIP = now, remoteIP
		} else {
			return fmt.Errorf("%w: %s device %d", ErrNoSuchDevice, login.Account, login.Device)
		}
		return putAccount(tx, a)
	})
	if err == nil {
		err = s.view(func(tx *bbolt.Tx) error {
			a, err := getAccount(tx, login.Account)
			if err != nil {
				return err
			}
			mb := tx.Bucket(bucketMailboxes).Bucket([]byte(login.Account))
			if mb == nil {
				return fmt.Errorf("spool: account %s has no mailbox", login.Account)
			}
			return forEachEntry(mb, func(uid uint64, e *entryRecord) error {
				if a.visible(uid, e, login.Device) {
					m.msgs = append(m.msgs, Message{UID: uid, UIDL: uidl(uid, e.Arrived), Size: e.Size, Arrived: e.Arrived, id: e.Message})
				}
				return nil
			})
		})
	}
	if err != nil {
		s.unlockDevice(login.Account, login.Device)
		return nil, err
	}
	return m, nil
}

// Login returns who holds the maildrop.
func (m *Maildrop) Login() Login { return m.login }

// Messages returns the snapshot, in arrival order. Message n of a POP3
// session is Messages()[n-1].
func (m *Maildrop) Messages() []Message { return m.msgs }

// Open streams message i (0-based) of the snapshot. The reader copies a few
// chunks at a time out of short read transactions.
func (m *Maildrop) Open(i int) (io.ReadCloser, error) {
	if m.closed {
		return nil, ErrClosed
	}
	if i < 0 || i >= len(m.msgs) {
		return nil, ErrNoSuchMessage
	}
	return m.s.openMessage(m.msgs[i].id, m.msgs[i].Size)
}

// Commit removes the messages at the given snapshot indexes (0-based) from
// the device's view in one transaction (RFC 1939 §6, the UPDATE state),
// then releases the maildrop. A message leaves the store when no active
// device still wants it.
func (m *Maildrop) Commit(ctx context.Context, deleted []int) error {
	if m.closed {
		return ErrClosed
	}
	defer m.Close()
	if len(deleted) == 0 {
		return nil
	}
	uids := make([]uint64, 0, len(deleted))
	for _, i := range deleted {
		if i < 0 || i >= len(m.msgs) {
			return fmt.Errorf("%w: index %d", ErrNoSuchMessage, i)
		}
		uids = append(uids, m.msgs[i].UID)
	}
	login := m.login
	s := m.s
	now := s.opts.Now()
	return s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, login.Account)
		if err != nil {
			return err
		}
		if login.Device != 0 && a.device(login.Device) == nil {
			// Revoked while the session was open: its deletions no
			// longer count.
			return fmt.Errorf("%w: %s device %d", ErrNoSuchDevice, login.Account, login.Device)
		}
		mb := tx.Bucket(bucketMailboxes).Bucket([]byte(login.Account))
		if mb == nil {
			return fmt.Errorf("spool: account %s has no mailbox", login.Account)
		}
		for _, uid := range uids {
			v := mb.Get(u64(uid))
			if v == nil {
				continue // already gone (swept, or the account was emptied)
			}
			var e entryRecord
			if err := decode("entry", v, &e); err != nil {
				return err
			}
			if !e.deletedBy(login.Device) {
				e.DeletedBy = append(e.DeletedBy, login.Device)
			}
			if e.FirstDeleted.IsZero() {
				e.FirstDeleted = now
			}
			if err := s.settle(tx, a, mb, uid, &e, now); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close releases the maildrop without deleting anything (a session that
// ends without QUIT). It may be called more than once.
func (m *Maildrop) Close() {
	if m.closed {
		return
	}
	m.closed = true
	m.s.unlockDevice(m.login.Account, m.login.Device)
}

// visible reports whether device dev sees entry e, stored under uid.
func (a *accountRecord) visible(uid uint64, e *entryRecord, dev uint32) bool {
	if !e.Trashed.IsZero() || e.deletedBy(dev) {
		return false
	}
	if dev == 0 {
		return true
	}
	d := a.device(dev)
	return d != nil && d.claims(uid, e)
}

// claims reports whether a device has a claim on a message: it sees it
// because it existed when the message was stored, or was added with --all.
func (d *deviceRecord) claims(uid uint64, e *entryRecord) bool {
	switch {
	case d.All:
		return true
	case d.FirstUID > 0:
		return uid >= d.FirstUID
	}
	return !e.Arrived.Before(d.Created)
}

func (a *accountRecord) device(id uint32) *deviceRecord {
	for i := range a.Devices {
		if a.Devices[i].ID == id {
			return &a.Devices[i]
		}
	}
	return nil
}

// wantedBy reports whether some active device other than those that
// deleted e still has a claim on it. The account password (device 0) is
// active when it logged in within DeviceIdle; a device is active when it
// was added or logged in within DeviceIdle, so a new device gets the
// chance to fetch what arrived for it.
func (s *Store) wantedBy(a *accountRecord, uid uint64, e *entryRecord, now time.Time) bool {
	idle := s.opts.DeviceIdle.D()
	if !e.deletedBy(0) && now.Sub(a.LastLogin) < idle {
		return true
	}
	for i := range a.Devices {
		d := &a.Devices[i]
		if e.deletedBy(d.ID) || !d.claims(uid, e) {
			continue
		}
		last := d.LastLogin
		if d.Created.After(last) {
			last = d.Created
		}
		if now.Sub(last) < idle {
			return true
		}
	}
	return false
}

// settle decides what becomes of an entry that some device deleted: kept
// (written back) while an active device still wants it, otherwise moved to
// the trash when retention is on, or removed. It runs inside the caller's
// transaction.
func (s *Store) settle(tx *bbolt.Tx, a *accountRecord, mb *bbolt.Bucket, uid uint64, e *entryRecord, now time.Time) error {
	if !e.Trashed.IsZero() {
		return nil
	}
	graceOver := !e.FirstDeleted.IsZero() && now.Sub(e.FirstDeleted) >= s.opts.DeviceDeleteGrace.D()
	if len(e.DeletedBy) == 0 || (!graceOver && s.wantedBy(a, uid, e, now)) {
		return mb.Put(u64(uid), encode(e))
	}
	if s.opts.Retention.D() > 0 {
		e.Trashed = now
		return mb.Put(u64(uid), encode(e))
	}
	return removeEntry(tx, mb, uid, e)
}

// removeEntry deletes an entry from its mailbox for good. It runs inside
// the caller's transaction.
func removeEntry(tx *bbolt.Tx, mb *bbolt.Bucket, uid uint64, e *entryRecord) error {
	if err := mb.Delete(u64(uid)); err != nil {
		return err
	}
	if err := addMailboxStats(mb, -1, -e.Size); err != nil {
		return err
	}
	return unref(tx, e.Message)
}

// messageReader streams one message's chunks.
type messageReader struct {
	s      *Store
	id     uint64
	next   uint32 // next chunk index to read
	remain int64  // bytes not yet copied out of the store
	buf    []byte
	pooled *[]byte // buf's pool slot, if it came from the pool
	off    int
}

// readBatch is how much a reader copies out of one read transaction.
const readBatch = 256 << 10

// smallRead is the size up to which a message is read into a buffer of its
// own size; larger ones borrow a pooled readBatch buffer.
const smallRead = 16 << 10

func (s *Store) openMessage(id uint64, size int64) (*messageReader, error) {
	r := &messageReader{s: s, id: id, remain: size}
	err := s.view(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketMessages).Get(u64(id))
		if v == nil {
			return ErrNoSuchMessage
		}
		var rec messageRecord
		if err := decode("message", v, &rec); err != nil {
			return err
		}
		if rec.Size != size {
			return fmt.Errorf("spool: message %d: stored size %d, expected %d", id, rec.Size, size)
		}
		if !rec.Prefix {
			r.next = 1
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Read implements io.Reader.
func (r *messageReader) Read(p []byte) (int, error) {
	if r.off == len(r.buf) {
		if r.remain == 0 {
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

// WriteTo implements io.WriterTo, so io.Copy needs no buffer of its own.
func (r *messageReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.off == len(r.buf) {
			if r.remain == 0 {
				return total, nil
			}
			if err := r.fill(); err != nil {
				return total, err
			}
		}
		n, err := w.Write(r.buf[r.off:])
		total += int64(n)
		r.off += n
		if err != nil {
			return total, err
		}
	}
}

// fill copies the next chunks out of one short read transaction.
func (r *messageReader) fill() error {
	if r.buf == nil {
		if r.remain > int64(smallRead) {
			r.pooled = r.s.readPool.Get().(*[]byte)
			r.buf = *r.pooled
		} else {
			r.buf = make([]byte, 0, r.remain)
		}
	}
	r.buf, r.off = r.buf[:0], 0
	err := r.s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketChunks).Cursor()
		for k, v := c.Seek(chunkKey(r.id, r.next)); len(r.buf) < readBatch; k, v = c.Next() {
			if k == nil || len(k) != 12 || binary.BigEndian.Uint64(k) != r.id || binary.BigEndian.Uint32(k[8:]) != r.next {
				break
			}
			if int64(len(v)) > r.remain {
				return fmt.Errorf("spool: message %d is longer than its recorded size", r.id)
			}
			r.buf = append(r.buf, v...)
			r.remain -= int64(len(v))
			r.next++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(r.buf) == 0 {
		return fmt.Errorf("%w: message %d ends early (it was removed or is damaged)", ErrNoSuchMessage, r.id)
	}
	return nil
}

// Close implements io.Closer; it gives the read buffer back.
func (r *messageReader) Close() error {
	if r.pooled != nil {
		*r.pooled = r.buf[:0]
		r.s.readPool.Put(r.pooled)
		r.pooled = nil
	}
	r.buf = nil
	r.remain = 0
	return nil
}

// ErrNotRetained means retention is off, so there is nothing to restore.
var ErrNotRetained = errors.New("spool: retention is off; deleted messages are not kept")
