package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"go.etcd.io/bbolt"
)

// Delivery is one message being written into the store. It is made by
// [Store.Begin], fed with Write (or ReadFrom), and ended by exactly one of
// Commit or Abort. A Delivery is not safe for concurrent use.
//
// Nothing is visible in any mailbox before Commit returns; a Delivery that
// is neither committed nor aborted (the process died) is removed by the next
// Open.
type Delivery struct {
	s   *Store
	ctx context.Context
	env Envelope

	id      uint64 // message id, 0 until the first flush is known to have landed
	slot    *idSlot
	flushes uint32 // flushes handed to the committer so far
	nextIdx uint32 // index of the next body chunk to store (from 1)
	size    int64  // normalised body bytes so far
	cr      bool   // the last byte written was a CR
	last2   [2]byte

	cur      *[]byte    // chunk being filled
	full     []*[]byte  // filled chunks not yet flushed
	inflight []flushing // flushes handed to the committer, oldest first
	ahead    int        // body bytes they hold
	err      error      // sticky: once set, the delivery is dead
	done     bool
}

// idSlot is where a delivery's first flush leaves the message id it
// allocated, for the delivery's later writes to find. Those run in the
// committer goroutine after it, so they read it without a lock; the
// delivery itself reads it only once it has the first flush's outcome.
type idSlot struct {
	id    uint64
	token uint64 // tells this delivery's pending mark from any other's
}

// Begin starts a delivery.
func (s *Store) Begin(ctx context.Context, env Envelope) *Delivery {
	return &Delivery{s: s, ctx: ctx, env: env, nextIdx: 1, slot: &idSlot{token: s.deliveries.Add(1)}}
}

// Deliver stores body for the given accounts in one step: Begin, ReadFrom,
// Commit. It returns once the message is durable.
func (s *Store) Deliver(ctx context.Context, env Envelope, accounts []string, body io.Reader) (MessageID, error) {
	d := s.Begin(ctx, env)
	if _, err := d.ReadFrom(body); err != nil {
		d.Abort()
		return 0, err
	}
	return d.Commit(nil, accounts)
}

// MessageID identifies a stored message in logs and in the admin tools.
type MessageID uint64

// String formats the id as it appears in logs and headers.
func (id MessageID) String() string { return fmt.Sprintf("%016x", uint64(id)) }

// Size returns the normalised size of the body written so far.
func (d *Delivery) Size() int64 { return d.size }

// Write appends p to the body, normalising line endings to CRLF.
func (d *Delivery) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.done {
		return 0, errors.New("spool: write after commit or abort")
	}
	n := len(p)
	if d.cr && len(p) > 0 {
		// The last write ended in a CR: it gets its LF, this one's
		// first byte if that is one.
		d.cr = false
		d.put(lf)
		if p[0] == '\n' {
			p = p[1:]
		}
	}
	// A CR at the end may be the first half of a CRLF split between
	// writes: it is stored now and its LF at the next write or Commit.
	heldCR := len(p) > 0 && p[len(p)-1] == '\r'
	if heldCR {
		p = p[:len(p)-1]
	}
	// Mail arrives as CRLF text almost always; checking that with two
	// vectorised scans and copying the whole write costs a fraction of
	// normalising it line by line.
	if isCRLF(p) {
		d.put(p)
	} else {
		d.normalise(p)
	}
	if heldCR {
		d.put(cr)
		d.cr = true
	}
	if d.err != nil {
		return 0, d.err
	}
	return n, nil
}

var (
	cr   = []byte{'\r'}
	lf   = []byte{'\n'}
	crlf = []byte{'\r', '\n'}
)

// isCRLF reports whether every line break in b is a CRLF: each LF follows
// a CR and there are no other CRs. b must not end in a CR.
func isCRLF(b []byte) bool {
	lines := 0
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if j == 0 || b[j-1] != '\r' {
			return false
		}
		lines++
		i = j + 1
	}
	return bytes.Count(b, cr) == lines
}

// normalise puts b with every bare CR, bare LF and CRLF as a CRLF. b must
// not end in a CR (Write holds that one back).
func (d *Delivery) normalise(b []byte) {
	for len(b) > 0 && d.err == nil {
		i := indexLineBreak(b)
		if i < 0 {
			d.put(b)
			return
		}
		d.put(b[:i])
		d.put(crlf)
		if b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n' {
			i++
		}
		b = b[i+1:]
	}
}

// indexLineBreak returns the index of the first CR or LF in b, or -1. It
// looks for a CR only before the first LF, so text with bare LFs costs one
// scan per line, not one of the rest of b.
func indexLineBreak(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	before := b
	if i >= 0 {
		before = b[:i]
	}
	if j := bytes.IndexByte(before, '\r'); j >= 0 {
		return j
	}
	return i
}

// ReadFrom copies r into the body until EOF.
func (d *Delivery) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if _, werr := d.Write(buf[:n]); werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// put appends normalised bytes to the current chunk, flushing full chunks.
func (d *Delivery) put(p []byte) {
	if d.err != nil || len(p) == 0 {
		return
	}
	d.size += int64(len(p))
	if d.size > int64(d.s.opts.MaxMessageSize) {
		d.fail(ErrTooLarge)
		return
	}
	if len(p) >= 2 {
		d.last2 = [2]byte{p[len(p)-2], p[len(p)-1]}
	} else {
		d.last2 = [2]byte{d.last2[1], p[0]}
	}
	cs := d.s.opts.ChunkSize
	for len(p) > 0 {
		if d.cur == nil {
			d.cur = d.s.chunkPool.Get().(*[]byte)
			*d.cur = (*d.cur)[:0]
		}
		n := min(cs-len(*d.cur), len(p))
		*d.cur = append(*d.cur, p[:n]...)
		p = p[n:]
		if len(*d.cur) == cs {
			d.full = append(d.full, d.cur)
			d.cur = nil
			if len(d.full)*cs >= d.s.opts.FlushBytes {
				d.flush()
			}
		}
	}
}

func (d *Delivery) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// flush hands the full chunks to the committer and goes on without
// waiting for their commit: while one transaction is written and synced
// the next flushes queue up, and the committer takes them all, and often
// the delivery's Commit too, in its next one. Few large transactions cost
// fewer syncs, and bbolt rewrites the leaf a delivery's body ends in once
// per transaction, not once per flush. What flushes hold until committed
// counts against the store's flush budget, so many deliveries at once stay
// within it; past it, flush waits.
func (d *Delivery) flush() {
	chunks := d.full
	d.full = nil
	cost := len(chunks) * d.s.opts.ChunkSize
	d.reap()
	// One delivery alone may not take the whole budget: its batches would
	// be larger than they need to be, each one held twice over while bbolt
	// writes it, and the heap of a single large delivery would grow by
	// that much.
	for len(d.inflight) > 0 && d.ahead+cost > d.s.opts.FlushAhead && d.err == nil {
		d.landed(<-d.inflight[0].o.done)
	}
	if d.err != nil {
		d.s.putChunks(chunks)
		return
	}
	taken, err := d.s.flushBudget.acquire(d.ctx, cost)
	if err != nil {
		d.s.putChunks(chunks)
		d.fail(fmt.Errorf("spool: store message body: %w", err))
		return
	}
	first := d.nextIdx
	d.nextIdx += d.s.storedCount(chunks)
	d.flushes++
	o := &op{cost: cost, done: make(chan error, 1)}
	if d.flushes == 1 {
		o.fn = d.firstFlush(chunks)
	} else {
		s, slot := d.s, d.slot
		o.fn = func(tx *bbolt.Tx) error {
			if err := landFlush(tx, slot); err != nil {
				return err
			}
			return s.writeChunks(tx, slot.id, first, chunks)
		}
	}
	o.after = func(error) {
		d.s.putChunks(chunks)
		d.s.flushBudget.release(taken)
	}
	if err := d.s.submit(d.ctx, o); err != nil {
		o.after(err)
		d.fail(fmt.Errorf("spool: store message body: %w", err))
		return
	}
	d.inflight = append(d.inflight, flushing{o, cost})
	d.ahead += cost
}

// firstFlush returns the write of a delivery's first flush: it allocates
// the message id, leaves it in the delivery's slot and marks it pending.
func (d *Delivery) firstFlush(chunks []*[]byte) func(tx *bbolt.Tx) error {
	s, slot, now := d.s, d.slot, d.s.opts.Now
	return func(tx *bbolt.Tx) error {
		// Should this transaction roll back, the later flushes must
		// not write under the id it allocated: another delivery may be
		// given the same one.
		slot.id = 0
		id, err := tx.Bucket(bucketMessages).NextSequence()
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketPending).Put(u64(id), pendingMark(now(), slot.token, 1)); err != nil {
			return err
		}
		slot.id = id
		return s.writeChunks(tx, id, 1, chunks)
	}
}

// pendingMark is the value of a delivery's entry in the pending bucket:
// when it started (8 bytes), its token (8) and how many of its flushes
// have landed (4).
func pendingMark(start time.Time, token uint64, landed uint32) []byte {
	v := make([]byte, 20)
	binary.BigEndian.PutUint64(v, uint64(start.Unix()))
	binary.BigEndian.PutUint64(v[8:], token)
	binary.BigEndian.PutUint32(v[16:], landed)
	return v
}

// errFlushLost means a delivery's write found that one of its earlier
// flushes did not land; that flush's own error says why.
var errFlushLost = errors.New("spool: an earlier part of the message body was not stored")

// landFlush checks, in a later flush's transaction, that the delivery's
// first flush landed under the id in slot, and counts this flush as
// landed too.
func landFlush(tx *bbolt.Tx, slot *idSlot) error {
	v, err := pendingFor(tx, slot)
	if err != nil {
		return err
	}
	v = append([]byte(nil), v...)
	binary.BigEndian.PutUint32(v[16:], binary.BigEndian.Uint32(v[16:])+1)
	return tx.Bucket(bucketPending).Put(u64(slot.id), v)
}

// pendingFor returns the pending mark of the delivery of slot, or
// errFlushLost if its first flush did not land.
func pendingFor(tx *bbolt.Tx, slot *idSlot) ([]byte, error) {
	if slot.id == 0 {
		return nil, errFlushLost
	}
	v := tx.Bucket(bucketPending).Get(u64(slot.id))
	if len(v) != 20 || binary.BigEndian.Uint64(v[8:]) != slot.token {
		return nil, errFlushLost
	}
	return v, nil
}

// flushing is a flush handed to the committer.
type flushing struct {
	o    *op
	cost int
}

// reap takes the outcomes of the flushes that have committed, without
// waiting for the others, so that a failed flush stops the delivery early.
func (d *Delivery) reap() {
	for len(d.inflight) > 0 {
		select {
		case err := <-d.inflight[0].o.done:
			d.landed(err)
		default:
			return
		}
	}
}

// landed takes the outcome of the oldest flush in flight.
func (d *Delivery) landed(err error) {
	d.ahead -= d.inflight[0].cost
	d.inflight = d.inflight[1:]
	if err != nil {
		d.fail(fmt.Errorf("spool: store message body: %w", err))
		return
	}
	if d.id == 0 {
		// The first flush is committed: its id is the message's. Its
		// write never runs again, so the slot holds still.
		d.id = d.slot.id
	}
}

// waitFlushes waits for every flush in flight and returns the delivery's
// error, if any.
func (d *Delivery) waitFlushes() error {
	for len(d.inflight) > 0 {
		d.landed(<-d.inflight[0].o.done)
	}
	return d.err
}

// putChunks gives body chunks back to the pool.
func (s *Store) putChunks(chunks []*[]byte) {
	for _, c := range chunks {
		s.chunkPool.Put(c)
	}
}

// tailPieces is how many small values a run of chunks ends in (see
// writeChunks).
const tailPieces = 4

// tailPiece returns the size of those small values, or 0 when a run of
// chunks whose last one holds last bytes is stored as it is.
func (s *Store) tailPiece(last int) int {
	// Under 1 KiB four fit in one leaf page with their keys. Small
	// chunk sizes (tests) get small pieces, so the split is tested.
	piece := min(960, s.opts.ChunkSize/16)
	if piece == 0 || last < s.opts.ChunkSize/2 {
		return 0
	}
	return piece
}

// storedCount returns how many values writeChunks stores chunks as.
func (s *Store) storedCount(chunks []*[]byte) uint32 {
	n := uint32(len(chunks))
	if len(chunks) > 0 && s.tailPiece(len(*chunks[len(chunks)-1])) > 0 {
		n += tailPieces
	}
	return n
}

// writeChunks stores a run of chunks of message id from index first, as
// storedCount values. The last tailPieces*tailPiece bytes of a large last
// chunk go in as tailPieces small values of their own. bbolt splits a
// leaf from its front two keys at a time and leaves two to four keys in
// the last one, and the next transaction that appends to the message
// rewrites that whole leaf: ending in four small values keeps it to one
// page, where four chunks cost 256 KiB of rewriting per transaction.
// (Measured, 1 MiB x8 paced at 100 MiB/s, where each flush gets its own
// transaction: 2.06 bytes written per byte stored before, 1.2 after.)
func (s *Store) writeChunks(tx *bbolt.Tx, id uint64, first uint32, chunks []*[]byte) error {
	b := tx.Bucket(bucketChunks)
	idx := first
	put := func(v []byte) error {
		err := b.Put(chunkKey(id, idx), v)
		idx++
		return err
	}
	for i, c := range chunks {
		v := *c
		if i < len(chunks)-1 {
			if err := put(v); err != nil {
				return err
			}
			continue
		}
		piece := s.tailPiece(len(v))
		if piece == 0 {
			return put(v)
		}
		cut := len(v) - tailPieces*piece
		if err := put(v[:cut]); err != nil {
			return err
		}
		for k := range tailPieces {
			if err := put(v[cut+k*piece : cut+(k+1)*piece]); err != nil {
				return err
			}
		}
	}
	return nil
}

// Commit stores the message with prefix (header lines to put before the
// body, or nil; their line ends normalised as the body's) in the mailboxes of the given
// accounts, atomically: either every account has it or none does. It
// returns only once the message is durable on disk.
//
// It fails with ErrNoSuchAccount if an account does not exist, with
// ErrQuotaExceeded if one would go over its storage limit, and with
// ErrStorageFull if the disk is full; in each case nothing is stored.
func (d *Delivery) Commit(prefix []byte, accounts []string) (MessageID, error) {
	return d.commit(prefix, accounts, nil)
}

// commit is Commit, or with note the same into the quarantine instead of
// the mailboxes (CommitQuarantine).
func (d *Delivery) commit(prefix []byte, accounts []string, note *QuarantineNote) (MessageID, error) {
	if d.done {
		return 0, errors.New("spool: delivery already ended")
	}
	if d.cr {
		d.cr = false
		d.put(lf)
	}
	if d.size > 0 && d.last2 != [2]byte{'\r', '\n'} {
		d.put(crlf)
	}
	prefix = NormalizeLineEnds(prefix)
	if d.err == nil && d.size+int64(len(prefix)) > int64(d.s.opts.MaxMessageSize) {
		d.fail(ErrTooLarge)
	}
	d.reap()
	if d.err != nil {
		d.Abort()
		return 0, d.err
	}
	d.done = true

	rcpts := make([]string, 0, len(accounts))
	for _, a := range accounts {
		n, err := NormalizeAddress(a)
		if err != nil {
			d.abortStored()
			return 0, err
		}
		rcpts = append(rcpts, n)
	}
	sort.Strings(rcpts)
	rcpts = compactStrings(rcpts)
	if len(rcpts) == 0 {
		d.abortStored()
		return 0, errors.New("spool: commit without recipients")
	}

	if d.cur != nil && len(*d.cur) > 0 {
		d.full = append(d.full, d.cur)
		d.cur = nil
	}
	chunks := d.full
	d.full = nil
	defer d.s.putChunks(chunks)
	first := d.nextIdx
	nChunks := first - 1 + d.s.storedCount(chunks)
	size := d.size + int64(len(prefix))
	now := d.s.opts.Now()
	flushes, slot := d.flushes, d.slot
	var id uint64
	// The commit is queued behind the flushes still in flight, without
	// waiting for them, and often shares their transaction. It checks
	// that all of them landed: a flush that failed was taken out of its
	// transaction, and the message must not be linked without its part.
	err := d.s.update(d.ctx, len(chunks)*d.s.opts.ChunkSize+len(prefix), func(tx *bbolt.Tx) error {
		if flushes > 0 {
			v, err := pendingFor(tx, slot)
			if err != nil {
				return err
			}
			if binary.BigEndian.Uint32(v[16:]) != flushes {
				return errFlushLost
			}
			id = slot.id
		} else {
			seq, err := tx.Bucket(bucketMessages).NextSequence()
			if err != nil {
				return err
			}
			id = seq
		}
		// Check every mailbox before writing anything, so a refusal
		// leaves the transaction clean for the other work in it. The
		// quarantine is no mailbox's, and counts against no quota.
		boxes := make([]*bbolt.Bucket, len(rcpts))
		if note != nil {
			boxes = nil
		}
		for i, r := range rcpts {
			if note != nil {
				break
			}
			a, err := getAccount(tx, r)
			if err != nil {
				return err
			}
			mb := tx.Bucket(bucketMailboxes).Bucket([]byte(r))
			if mb == nil {
				return fmt.Errorf("spool: account %s has no mailbox", r)
			}
			// The total alone decides when it is under the quota;
			// only above it is the retained mail summed and left out.
			if q := d.s.quota(a); q > 0 && getMailboxStats(mb).Bytes+size > q {
				used, err := d.s.quotaUsed(mb)
				if err != nil {
					return err
				}
				if used+size > q {
					return fmt.Errorf("%w: %s", ErrQuotaExceeded, r)
				}
			}
			boxes[i] = mb
		}
		if err := d.s.writeChunks(tx, id, first, chunks); err != nil {
			return err
		}
		if len(prefix) > 0 {
			if err := tx.Bucket(bucketChunks).Put(chunkKey(id, 0), prefix); err != nil {
				return err
			}
		}
		rec := messageRecord{Envelope: d.env, Arrived: now, Size: size, Chunks: nChunks, Prefix: len(prefix) > 0, Refs: len(boxes)}
		if note != nil {
			rec.Refs = 1 // the quarantine's
			q := quarantineRecord{QuarantineNote: *note, Accounts: rcpts, Arrived: now, Size: size}
			if err := tx.Bucket(bucketQuarantine).Put(u64(id), encode(&q)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMessages).Put(u64(id), encode(&rec)); err != nil {
			return err
		}
		for _, mb := range boxes {
			uid, err := mb.NextSequence()
			if err != nil {
				return err
			}
			e := entryRecord{Message: id, Size: size, Arrived: now}
			if err := mb.Put(u64(uid), encode(&e)); err != nil {
				return err
			}
			if err := addMailboxStats(mb, 1, size); err != nil {
				return err
			}
		}
		if err := addStoreStats(tx, 1, size); err != nil {
			return err
		}
		if flushes > 0 {
			return tx.Bucket(bucketPending).Delete(u64(id))
		}
		return nil
	})
	if err != nil {
		// A flush that failed tells better what went wrong than the
		// loss it caused.
		if ferr := d.waitFlushes(); ferr != nil && errors.Is(err, errFlushLost) {
			err = ferr
		}
		d.abortStored()
		return 0, err
	}
	// Every flush landed before the commit: take their outcomes.
	d.waitFlushes()
	return MessageID(id), nil
}

// Abort ends a delivery without storing it and removes what it had written.
// It is safe to call after Commit (it does nothing then).
func (d *Delivery) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.fail(errors.New("spool: delivery aborted"))
	d.abortStored()
	d.s.putChunks(d.full)
	d.full = nil
	if d.cur != nil {
		d.s.chunkPool.Put(d.cur)
		d.cur = nil
	}
}

// abortStored removes flushed chunks of a delivery that will not be
// committed. If that fails, the next Open removes them.
func (d *Delivery) abortStored() {
	// The flushes in flight must have landed before their chunks are
	// removed, or they would outlive the pending mark; and only then is
	// the id known.
	d.waitFlushes()
	if d.id == 0 {
		return
	}
	id := d.id
	d.id = 0
	if err := d.s.update(context.WithoutCancel(d.ctx), 0, func(tx *bbolt.Tx) error { return dropPending(tx, id) }); err != nil {
		d.s.log.Warn("could not remove an aborted delivery; it will be removed at the next start", "message", id, "err", err)
	}
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func getMailboxStats(mb *bbolt.Bucket) mailboxStats {
	var st mailboxStats
	if mb == nil {
		return st
	}
	if v := mb.Get(keyStats); v != nil {
		decode("mailbox stats", v, &st)
	}
	return st
}

func addMailboxStats(mb *bbolt.Bucket, msgs int, bytes int64) error {
	st := getMailboxStats(mb)
	st.Messages += msgs
	st.Bytes += bytes
	return mb.Put(keyStats, encode(&st))
}

func getStoreStats(tx *bbolt.Tx) storeStats {
	var st storeStats
	if v := tx.Bucket(bucketMeta).Get(keyStats); v != nil {
		decode("store stats", v, &st)
	}
	return st
}

func addStoreStats(tx *bbolt.Tx, msgs int, bytes int64) error {
	st := getStoreStats(tx)
	st.Messages += msgs
	st.Bytes += bytes
	return tx.Bucket(bucketMeta).Put(keyStats, encode(&st))
}

// unref drops one mailbox reference to a message, deleting the message and
// its body when none is left. It runs inside the caller's transaction.
func unref(tx *bbolt.Tx, id uint64) error {
	mb := tx.Bucket(bucketMessages)
	v := mb.Get(u64(id))
	if v == nil {
		return nil
	}
	var rec messageRecord
	if err := decode("message", v, &rec); err != nil {
		return err
	}
	rec.Refs--
	if rec.Refs > 0 {
		return mb.Put(u64(id), encode(&rec))
	}
	if err := deleteChunks(tx, id); err != nil {
		return err
	}
	if err := addStoreStats(tx, -1, -rec.Size); err != nil {
		return err
	}
	return mb.Delete(u64(id))
}

// Stats are totals over the whole store.
type Stats struct {
	Messages int   // distinct stored messages
	Bytes    int64 // their total size
	Accounts int
	FileSize int64 // size of the spool file
}

// Stats returns the store's totals.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	err := s.view(func(tx *bbolt.Tx) error {
		ss := getStoreStats(tx)
		st.Messages, st.Bytes = ss.Messages, ss.Bytes
		st.Accounts = tx.Bucket(bucketAccounts).Stats().KeyN
		st.FileSize = tx.Size()
		return nil
	})
	return st, err
}

// quotaUsed is the part of a mailbox's bytes that counts against its
// quota: retained mail, which the owner deleted, does not. With retention
// on, finding it scans the mailbox.
func (s *Store) quotaUsed(mb *bbolt.Bucket) (int64, error) {
	used := getMailboxStats(mb).Bytes
	if s.opts.Retention.D() == 0 || mb == nil {
		return used, nil
	}
	err := forEachEntry(mb, func(_ uint64, e *entryRecord) error {
		if !e.Trashed.IsZero() {
			used -= e.Size
		}
		return nil
	})
	return used, err
}

// NormalizeLineEnds returns b as the store keeps text: every bare LF or CR
// made CRLF, and a CRLF added at the end when b does not end in one. A
// delivery's body gets the same as it streams through Write; Commit applies
// it to the prefix. It returns b itself when nothing changes.
func NormalizeLineEnds(b []byte) []byte {
	if len(b) == 0 || isCRLF(b) && bytes.HasSuffix(b, crlf) {
		return b
	}
	out := make([]byte, 0, len(b)+len(b)/32+2)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case c == '\r' || c == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	if !bytes.HasSuffix(out, crlf) {
		out = append(out, crlf...)
	}
	return out
}
