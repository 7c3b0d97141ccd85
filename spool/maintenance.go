package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Backup writes a consistent copy of the whole spool file to w while the
// store stays in use, and returns the number of bytes written. The copy is a
// bbolt file that Open (and "bbolt check") accept as it is.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("spool: backup: %w", err)
	}
	return n, nil
}

// Export writes the messages of an account's mailbox that are not retained
// deletions to w in mboxrd format: each message starts with a "From " line
// carrying its envelope sender and arrival time, line endings become LF, and
// body lines that start with ">*From " get one more '>'.
func (s *Store) Export(ctx context.Context, addr string, w io.Writer) (int, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return 0, err
	}
	type item struct {
		id   uint64
		size int64
		from string
		at   time.Time
	}
	var items []item
	err = s.view(func(tx *bbolt.Tx) error {
		if _, err := getAccount(tx, addr); err != nil {
			return err
		}
		mb := tx.Bucket(bucketMailboxes).Bucket([]byte(addr))
		if mb == nil {
			return nil
		}
		msgs := tx.Bucket(bucketMessages)
		return forEachEntry(mb, func(_ uint64, e *entryRecord) error {
			if !e.Trashed.IsZero() {
				return nil
			}
			var rec messageRecord
			if mv := msgs.Get(u64(e.Message)); mv != nil {
				if err := decode("message", mv, &rec); err != nil {
					return err
				}
			}
			items = append(items, item{e.Message, e.Size, rec.Envelope.MailFrom, e.Arrived})
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	for n, it := range items {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		from := it.from
		if from == "" {
			from = "MAILER-DAEMON"
		}
		fmt.Fprintf(bw, "From %s %s\n", from, it.at.UTC().Format("Mon Jan _2 15:04:05 2006"))
		r, err := s.openMessage(it.id, it.size)
		if err != nil {
			return n, fmt.Errorf("spool: export message %d: %w", it.id, err)
		}
		err = writeMboxrd(bw, r)
		r.Close()
		if err != nil {
			return n, fmt.Errorf("spool: export message %d: %w", it.id, err)
		}
		bw.WriteByte('\n')
	}
	return len(items), bw.Flush()
}

// writeMboxrd copies a CRLF message as mboxrd lines. Lines are handled in
// pieces, so a line of any length costs no more than the reader's buffer.
func writeMboxrd(w *bufio.Writer, r io.Reader) error {
	br := bufio.NewReaderSize(r, 32<<10)
	atStart := true
	for {
		piece, err := br.ReadSlice('\n')
		if len(piece) > 0 {
			if atStart && isFromLine(piece) {
				w.WriteByte('>')
			}
			complete := piece[len(piece)-1] == '\n'
			if complete {
				piece = bytes.TrimSuffix(bytes.TrimSuffix(piece, []byte("\n")), []byte("\r"))
			}
			w.Write(piece)
			if complete {
				w.WriteByte('\n')
			}
			atStart = complete
		}
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// isFromLine reports whether a line matches ^>*From (mboxrd quoting).
func isFromLine(line []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(line, ">"), []byte("From "))
}

// Verify checks the spool file: bbolt's own consistency check, then
// Postie's invariants (every message's chunks present and adding up to its
// size, reference counts matching the mailboxes, no chunks or mailboxes
// without an owner, running totals right). It returns every problem found;
// none means the file is sound.
func (s *Store) Verify() []error {
	var problems []error
	err := s.view(func(tx *bbolt.Tx) error {
		problems = verifyTx(tx)
		return nil
	})
	if err != nil {
		problems = append(problems, err)
	}
	return problems
}

// VerifyFile opens the spool file at path read-only and verifies it (see
// Store.Verify). It fails with ErrLocked if a server has it open.
func VerifyFile(path string) ([]error, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 250 * time.Millisecond})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("spool: open %s: %w", path, err)
	}
	defer db.Close()
	var problems []error
	err = db.View(func(tx *bbolt.Tx) error {
		problems = verifyTx(tx)
		return nil
	})
	return problems, err
}

func verifyTx(tx *bbolt.Tx) []error {
	var problems []error
	add := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	for err := range tx.Check() {
		add("bbolt: %v", err)
	}
	if len(problems) > 0 {
		return problems // the invariants cannot be trusted on a damaged tree
	}
	for _, name := range [][]byte{bucketMeta, bucketAccounts, bucketMailboxes, bucketMessages, bucketChunks, bucketPending} {
		if tx.Bucket(name) == nil {
			add("bucket %q is missing", name)
		}
	}
	if len(problems) > 0 {
		return problems
	}

	// Messages and their chunks.
	type msgInfo struct {
		rec  messageRecord
		refs int
	}
	msgs := map[uint64]*msgInfo{}
	var total storeStats
	tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			add("message key %x has the wrong length", k)
			return nil
		}
		var rec messageRecord
		if err := decode("message", v, &rec); err != nil {
			add("message %d: %v", binary.BigEndian.Uint64(k), err)
			return nil
		}
		msgs[binary.BigEndian.Uint64(k)] = &msgInfo{rec: rec}
		total.Messages++
		total.Bytes += rec.Size
		return nil
	})
	pending := map[uint64]bool{}
	tx.Bucket(bucketPending).ForEach(func(k, _ []byte) error {
		if len(k) == 8 {
			pending[binary.BigEndian.Uint64(k)] = true
		}
		return nil
	})
	seen := map[uint64]int64{}  // message id -> chunk bytes
	next := map[uint64]uint32{} // message id -> next expected chunk index
	gapped := map[uint64]bool{} // message ids with missing chunks
	tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
		if len(k) != 12 {
			add("chunk key %x has the wrong length", k)
			return nil
		}
		id, idx := binary.BigEndian.Uint64(k), binary.BigEndian.Uint32(k[8:])
		m := msgs[id]
		if m == nil {
			if !pending[id] {
				add("chunk %d of message %d belongs to no message (orphan)", idx, id)
			}
			return nil
		}
		want, ok := next[id]
		if !ok {
			want = 1
			if m.rec.Prefix {
				want = 0
			}
		}
		if idx != want {
			gapped[id] = true
		}
		next[id] = idx + 1
		seen[id] += int64(len(v))
		return nil
	})
	for id, m := range msgs {
		last := next[id]
		if m.rec.Chunks > 0 && last != m.rec.Chunks+1 || gapped[id] {
			add("message %d: chunks missing (has up to %d of %d)", id, int(last)-1, m.rec.Chunks)
		}
		if seen[id] != m.rec.Size {
			add("message %d: chunks hold %d bytes, recorded size is %d", id, seen[id], m.rec.Size)
		}
	}

	// Mailboxes and accounts.
	accounts := map[string]bool{}
	tx.Bucket(bucketAccounts).ForEach(func(k, v []byte) error {
		var a accountRecord
		if err := decode("account", v, &a); err != nil {
			add("account %s: %v", k, err)
			return nil
		}
		accounts[string(k)] = true
		if tx.Bucket(bucketMailboxes).Bucket(k) == nil {
			add("account %s has no mailbox", k)
		}
		return nil
	})
	tx.Bucket(bucketMailboxes).ForEach(func(k, v []byte) error {
		if v != nil {
			add("mailboxes holds a plain key %q", k)
			return nil
		}
		if !accounts[string(k)] {
			add("mailbox %s has no account (orphan)", k)
		}
		mb := tx.Bucket(bucketMailboxes).Bucket(k)
		var st mailboxStats
		mb.ForEach(func(ek, ev []byte) error {
			if len(ek) != 8 {
				return nil
			}
			var e entryRecord
			if err := decode("entry", ev, &e); err != nil {
				add("mailbox %s uid %d: %v", k, binary.BigEndian.Uint64(ek), err)
				return nil
			}
			st.Messages++
			st.Bytes += e.Size
			m := msgs[e.Message]
			if m == nil {
				add("mailbox %s uid %d points at missing message %d", k, binary.BigEndian.Uint64(ek), e.Message)
				return nil
			}
			m.refs++
			if e.Size != m.rec.Size {
				add("mailbox %s uid %d: size %d, message %d has %d", k, binary.BigEndian.Uint64(ek), e.Size, e.Message, m.rec.Size)
			}
			return nil
		})
		if got := getMailboxStats(mb); got != st {
			add("mailbox %s: totals say %d messages, %d bytes; found %d, %d", k, got.Messages, got.Bytes, st.Messages, st.Bytes)
		}
		return nil
	})
	if qb := tx.Bucket(bucketQuarantine); qb != nil {
		qb.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				add("quarantine key %x has the wrong length", k)
				return nil
			}
			m := msgs[binary.BigEndian.Uint64(k)]
			if m == nil {
				add("quarantine holds missing message %d", binary.BigEndian.Uint64(k))
				return nil
			}
			m.refs++
			return nil
		})
	}
	for id, m := range msgs {
		if m.refs != m.rec.Refs {
			add("message %d: %d mailboxes (or the quarantine) hold it, its count says %d", id, m.refs, m.rec.Refs)
		}
	}
	if got := getStoreStats(tx); got != total {
		add("store totals say %d messages, %d bytes; found %d, %d", got.Messages, got.Bytes, total.Messages, total.Bytes)
	}
	return problems
}
