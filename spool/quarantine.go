package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.etcd.io/bbolt"
)

// The quarantine holds messages for the owner instead of delivering them:
// a copy of every message refused after DATA for a policy reason (DMARC
// reject, a content filter's reject), whose sender got the refusal, and
// every message a content filter quarantined or discarded, whose sender
// got 250. It is no mailbox: it counts against no quota, POP3 never shows
// it, and the owner lists, reads, releases or deletes its messages with
// "postie quarantine". Messages leave it after QuarantineRetention, the
// oldest first when it is over QuarantineMaxSize.

// ErrQuarantineOff means the quarantine is turned off
// (QuarantineRetention 0).
var ErrQuarantineOff = errors.New("spool: the quarantine is off ([spool] quarantine_retention = \"0s\")")

// QuarantineNote is what a quarantined message is held with, for the owner
// to decide on it.
type QuarantineNote struct {
	Reason  string `json:"reason"`            // why it is held, in words
	Refused bool   `json:"refused,omitempty"` // the sender got a refusal (else 250)
	From    string `json:"from,omitempty"`    // the From field, for the listing
	Subject string `json:"subject,omitempty"` // the Subject field, for the listing
}

// quarantineRecord is a quarantined message as stored.
type quarantineRecord struct {
	QuarantineNote
	Accounts []string  `json:"accounts"` // the recipients' accounts: where release delivers it
	Arrived  time.Time `json:"arrived"`
	Size     int64     `json:"size"`
}

// Quarantined describes a message in the quarantine.
type Quarantined struct {
	ID       MessageID
	Arrived  time.Time
	Size     int64
	MailFrom string   // the envelope sender
	Accounts []string // the accounts it was for
	QuarantineNote
}

// CommitQuarantine ends the delivery like Commit, but into the quarantine:
// held for the owner, not delivered, with note. It fails with
// ErrQuarantineOff when the quarantine is off.
func (d *Delivery) CommitQuarantine(prefix []byte, accounts []string, note QuarantineNote) (MessageID, error) {
	if d.s.opts.QuarantineRetention.D() <= 0 {
		d.Abort()
		return 0, ErrQuarantineOff
	}
	note.From, note.Subject = displayText(note.From, 200), displayText(note.Subject, 200)
	note.Reason = displayText(note.Reason, 500)
	return d.commit(prefix, accounts, &note)
}

// ParseMessageID reads a message id as String writes it (16 hex digits;
// leading zeros may be left out).
func ParseMessageID(s string) (MessageID, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 16, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a message id (16 hex digits, as postie quarantine list shows)", s)
	}
	return MessageID(n), nil
}

// QuarantineOn reports whether the quarantine keeps messages.
func (s *Store) QuarantineOn() bool { return s.opts.QuarantineRetention.D() > 0 }

// QuarantineList lists the quarantined messages, oldest first; with an
// account, only those for it.
func (s *Store) QuarantineList(account string) ([]Quarantined, error) {
	if account != "" {
		a, err := NormalizeAddress(account)
		if err != nil {
			return nil, err
		}
		account = a
	}
	var out []Quarantined
	err := s.view(func(tx *bbolt.Tx) error {
		return forEachQuarantined(tx, func(id uint64, q *quarantineRecord, rec *messageRecord) error {
			if account != "" && !slices.Contains(q.Accounts, account) {
				return nil
			}
			out = append(out, Quarantined{ID: MessageID(id), Arrived: q.Arrived, Size: q.Size, MailFrom: rec.Envelope.MailFrom, Accounts: q.Accounts, QuarantineNote: q.QuarantineNote})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Arrived.Before(out[j].Arrived) })
	return out, err
}

// forEachQuarantined calls fn for every quarantined message with its
// records.
func forEachQuarantined(tx *bbolt.Tx, fn func(id uint64, q *quarantineRecord, rec *messageRecord) error) error {
	qb := tx.Bucket(bucketQuarantine)
	if qb == nil {
		return nil
	}
	return qb.ForEach(func(k, v []byte) error {
		var q quarantineRecord
		if err := decode("quarantine", v, &q); err != nil {
			return err
		}
		var rec messageRecord
		mv := tx.Bucket(bucketMessages).Get(k)
		if mv == nil {
			return fmt.Errorf("spool: quarantined message %d is missing", binary.BigEndian.Uint64(k))
		}
		if err := decode("message", mv, &rec); err != nil {
			return err
		}
		return fn(binary.BigEndian.Uint64(k), &q, &rec)
	})
}

// QuarantineMessage opens a quarantined message for reading (all of it,
// with the header fields Postie added). The caller closes it.
func (s *Store) QuarantineMessage(id MessageID) (io.ReadCloser, Quarantined, error) {
	var info Quarantined
	err := s.view(func(tx *bbolt.Tx) error {
		q, rec, err := getQuarantined(tx, id)
		if err != nil {
			return err
		}
		info = Quarantined{ID: id, Arrived: q.Arrived, Size: q.Size, MailFrom: rec.Envelope.MailFrom, Accounts: q.Accounts, QuarantineNote: q.QuarantineNote}
		return nil
	})
	if err != nil {
		return nil, info, err
	}
	// A release or deletion in between makes openMessage fail; the owner
	// tries again.
	r, err := s.openMessage(uint64(id), info.Size)
	if err != nil {
		return nil, info, err
	}
	return r, info, nil
}

// getQuarantined reads a quarantined message's records.
func getQuarantined(tx *bbolt.Tx, id MessageID) (*quarantineRecord, *messageRecord, error) {
	qb := tx.Bucket(bucketQuarantine)
	v := qb.Get(u64(uint64(id)))
	if v == nil {
		return nil, nil, fmt.Errorf("%w: %s is not in the quarantine", ErrNoSuchMessage, id)
	}
	var q quarantineRecord
	if err := decode("quarantine", v, &q); err != nil {
		return nil, nil, err
	}
	var rec messageRecord
	if err := decode("message", tx.Bucket(bucketMessages).Get(u64(uint64(id))), &rec); err != nil {
		return nil, nil, err
	}
	return &q, &rec, nil
}

// QuarantineRelease delivers a quarantined message to the mailboxes of
// the accounts it was for that still exist, with a header field on top
// saying when and why it was held, and takes it out of the quarantine. It
// returns the accounts it reached. The owner's decision goes past the
// quota.
func (s *Store) QuarantineRelease(ctx context.Context, id MessageID) ([]string, error) {
	var reached []string
	now := s.opts.Now()
	err := s.update(ctx, 0, func(tx *bbolt.Tx) error {
		reached = nil
		qb := tx.Bucket(bucketQuarantine)
		q, rec, err := getQuarantined(tx, id)
		if err != nil {
			return err
		}
		var boxes []*bbolt.Bucket
		for _, a := range q.Accounts {
			if mb := tx.Bucket(bucketMailboxes).Bucket([]byte(a)); mb != nil {
				boxes = append(boxes, mb)
				reached = append(reached, a)
			}
		}
		if len(boxes) == 0 {
			return fmt.Errorf("%w: none of its accounts (%s) exists any more", ErrNoSuchAccount, strings.Join(q.Accounts, ", "))
		}
		note := []byte(fmt.Sprintf("X-Postie-Released: %s; held in quarantine since %s: %s\r\n",
			now.UTC().Format(time.RFC1123Z), q.Arrived.UTC().Format(time.RFC1123Z), HeaderText(q.Reason)))
		chunks := tx.Bucket(bucketChunks)
		prefix := note
		if rec.Prefix {
			prefix = append(prefix, chunks.Get(chunkKey(uint64(id), 0))...)
		}
		if err := chunks.Put(chunkKey(uint64(id), 0), prefix); err != nil {
			return err
		}
		added := int64(len(note))
		rec.Prefix, rec.Size, rec.Refs = true, rec.Size+added, len(boxes)
		if err := tx.Bucket(bucketMessages).Put(u64(uint64(id)), encode(rec)); err != nil {
			return err
		}
		for _, mb := range boxes {
			uid, err := mb.NextSequence()
			if err != nil {
				return err
			}
			e := entryRecord{Message: uint64(id), Size: rec.Size, Arrived: now}
			if err := mb.Put(u64(uid), encode(&e)); err != nil {
				return err
			}
			if err := addMailboxStats(mb, 1, rec.Size); err != nil {
				return err
			}
		}
		if err := addStoreStats(tx, 0, added); err != nil {
			return err
		}
		return qb.Delete(u64(uint64(id)))
	})
	return reached, err
}

// HeaderText makes s safe inside a header field Postie writes: one line of
// printable ASCII, anything else as "?".
func HeaderText(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\r' || r == '\n' || r == '\t':
			return ' '
		case r < 0x20 || r > 0x7e:
			return '?'
		}
		return r
	}, s)
}

// displayText makes text from a message or a filter (From, Subject, a
// reason) safe to print on the owner's terminal: control characters (C0,
// DEL, C1: escape sequences could rewrite the screen) become spaces,
// invalid UTF-8 is replaced, and it is cut to n bytes at a character's
// boundary.
func displayText(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// QuarantineDelete removes a message from the quarantine for good.
func (s *Store) QuarantineDelete(ctx context.Context, id MessageID) error {
	return s.update(ctx, 0, func(tx *bbolt.Tx) error {
		qb := tx.Bucket(bucketQuarantine)
		if qb.Get(u64(uint64(id))) == nil {
			return fmt.Errorf("%w: %s is not in the quarantine", ErrNoSuchMessage, id)
		}
		if err := qb.Delete(u64(uint64(id))); err != nil {
			return err
		}
		return unref(tx, uint64(id))
	})
}

// QuarantinePrune removes the messages held longer than
// QuarantineRetention and, while the quarantine is over
// QuarantineMaxSize, the oldest. It returns how many it removed and how
// many arrived in the last 24 hours (for the daily count).
func (s *Store) QuarantinePrune(ctx context.Context) (removed, lastDay int, err error) {
	now := s.opts.Now()
	keep := s.opts.QuarantineRetention.D()
	err = s.update(ctx, 0, func(tx *bbolt.Tx) error {
		removed, lastDay = 0, 0
		type held struct {
			id      uint64
			arrived time.Time
			size    int64
		}
		var all []held
		var total int64
		err := forEachQuarantined(tx, func(id uint64, q *quarantineRecord, _ *messageRecord) error {
			all = append(all, held{id, q.Arrived, q.Size})
			total += q.Size
			if now.Sub(q.Arrived) < 24*time.Hour {
				lastDay++
			}
			return nil
		})
		if err != nil {
			return err
		}
		sort.Slice(all, func(i, j int) bool { return all[i].arrived.Before(all[j].arrived) })
		qb := tx.Bucket(bucketQuarantine)
		for _, h := range all {
			if now.Sub(h.arrived) <= keep && (s.opts.QuarantineMaxSize <= 0 || total <= int64(s.opts.QuarantineMaxSize)) {
				break
			}
			if err := qb.Delete(u64(h.id)); err != nil {
				return err
			}
			if err := unref(tx, h.id); err != nil {
				return err
			}
			total -= h.size
			removed++
		}
		return nil
	})
	return removed, lastDay, err
}
