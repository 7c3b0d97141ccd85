package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"go.etcd.io/bbolt"
)

func TestNormalisation(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"crlf kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare lf", "a\nb\n", "a\r\nb\r\n"},
		{"bare cr", "a\rb\r", "a\r\nb\r\n"},
		{"mixed", "a\r\r\nb\n\rc", "a\r\n\r\nb\r\n\r\nc\r\n"},
		{"no final newline", "Subject: x\r\n\r\nbody", "Subject: x\r\n\r\nbody\r\n"},
		{"smuggling sequences", "x\n.\ny\r\n.\nz\n.\r\n", "x\r\n.\r\ny\r\n.\r\nz\r\n.\r\n"},
		{"8-bit and NUL", "\xff\x00\xc3\xa9\n", "\xff\x00\xc3\xa9\r\n"},
		{"empty", "", ""},
	}
	s := openTest(t, nil)
	mustAddAccount(t, s, "alice@example.com")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte at a time, so every CR lands at a write boundary.
			d := s.Begin(context.Background(), Envelope{})
			if _, err := d.ReadFrom(iotest.OneByteReader(strings.NewReader(tt.in))); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Commit(nil, []string{"alice@example.com"}); err != nil {
				t.Fatal(err)
			}
			m := openDrop(t, s, "alice@example.com")
			defer m.Commit(context.Background(), []int{len(m.Messages()) - 1})
			last := len(m.Messages()) - 1
			got := readAll(t, m, last)
			if string(got) != tt.want {
				t.Errorf("stored %q, want %q", got, tt.want)
			}
			if m.Messages()[last].Size != int64(len(tt.want)) {
				t.Errorf("size %d, want %d", m.Messages()[last].Size, len(tt.want))
			}
		})
	}
}

func TestPrefixAndChunks(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 16; o.FlushBytes = 32 })
	mustAddAccount(t, s, "alice@example.com")
	body := strings.Repeat("0123456789abcdef\r\n", 50)
	d := s.Begin(context.Background(), Envelope{})
	io.Copy(d, strings.NewReader(body))
	prefix := []byte("Received: from x\r\nAuthentication-Results: y")
	if _, err := d.Commit(prefix, []string{"alice@example.com"}); err != nil {
		t.Fatal(err)
	}
	m := openDrop(t, s, "alice@example.com")
	defer m.Close()
	got := readAll(t, m, 0)
	want := string(prefix) + "\r\n" + body
	if string(got) != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if m.Messages()[0].Size != int64(len(want)) {
		t.Fatalf("size %d, want %d", m.Messages()[0].Size, len(want))
	}
	checkVerify(t, s)
}

func TestMultiRecipientAtomic(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 1024 })
	for _, a := range []string{"alice@example.com", "bob@example.com", "carol@example.com"} {
		mustAddAccount(t, s, a)
	}
	ctx := context.Background()
	big := strings.Repeat("x", 10_000) // several chunks, flushed before commit

	// All three get it, stored once.
	deliver(t, s, big, "alice@example.com", "bob@example.com", "carol@example.com", "Alice@Example.com")
	st, _ := s.Stats()
	if st.Messages != 1 {
		t.Fatalf("store holds %d messages, want 1", st.Messages)
	}
	for _, a := range []string{"alice@example.com", "bob@example.com", "carol@example.com"} {
		info, _ := s.Account(a)
		if info.Messages != 1 {
			t.Errorf("%s has %d messages, want 1", a, info.Messages)
		}
	}

	// One unknown account: nobody gets it, and no chunk is left behind.
	_, err := s.Deliver(ctx, Envelope{}, []string{"alice@example.com", "nobody@example.com"}, strings.NewReader(big))
	if !errors.Is(err, ErrNoSuchAccount) {
		t.Fatalf("Deliver to an unknown account: %v, want ErrNoSuchAccount", err)
	}
	// Over quota for one: nobody gets it.
	if err := s.SetQuota(ctx, "bob@example.com", 15_000); err != nil {
		t.Fatal(err)
	}
	_, err = s.Deliver(ctx, Envelope{}, []string{"alice@example.com", "bob@example.com"}, strings.NewReader(big))
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("Deliver over quota: %v, want ErrQuotaExceeded", err)
	}
	for _, a := range []string{"alice@example.com", "bob@example.com"} {
		info, _ := s.Account(a)
		if info.Messages != 1 {
			t.Errorf("%s has %d messages after refused deliveries, want 1", a, info.Messages)
		}
	}
	st, _ = s.Stats()
	if st.Messages != 1 {
		t.Errorf("store holds %d messages, want 1", st.Messages)
	}
	checkVerify(t, s)

	// Deleting from one mailbox keeps it for the others; the last one frees it.
	for i, a := range []string{"alice@example.com", "bob@example.com", "carol@example.com"} {
		m := openDrop(t, s, a)
		if err := m.Commit(ctx, []int{0}); err != nil {
			t.Fatal(err)
		}
		st, _ = s.Stats()
		if want := map[bool]int{true: 0, false: 1}[i == 2]; st.Messages != want {
			t.Errorf("after %s deleted: %d stored, want %d", a, st.Messages, want)
		}
		checkVerify(t, s)
	}
}

func TestUIDLUniqueAcrossDeletionAndReopen(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now })
	path := s.Path()
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()
	seen := map[string]bool{}
	record := func(m *Maildrop) {
		for _, msg := range m.Messages() {
			seen[msg.UIDL] = true
		}
	}
	for i := 0; i < 5; i++ {
		deliver(t, s, fmt.Sprintf("Subject: %d\r\n\r\nsame body\r\n", i), "alice@example.com")
	}
	m := openDrop(t, s, "alice@example.com")
	record(m)
	if len(seen) != 5 {
		t.Fatalf("5 messages have %d distinct UIDLs", len(seen))
	}
	// The UIDLs are stable across sessions.
	first := m.Messages()
	m.Commit(ctx, []int{3, 4}) // delete the newest two
	m = openDrop(t, s, "alice@example.com")
	for i, msg := range m.Messages() {
		if msg.UIDL != first[i].UIDL {
			t.Errorf("message %d: UIDL %s became %s", i, first[i].UIDL, msg.UIDL)
		}
	}
	m.Close()
	s.Close()

	// After reopening, new messages never reuse a UIDL, deleted or not.
	opts := DefaultOptions()
	opts.Path, opts.HashParams, opts.Now = path, fastHash, clock.Now
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 3; i++ {
		deliver(t, s, "Subject: again\r\n\r\nsame body\r\n", "alice@example.com")
	}
	m = openDrop(t, s, "alice@example.com")
	defer m.Close()
	if len(m.Messages()) != 6 {
		t.Fatalf("%d messages, want 6", len(m.Messages()))
	}
	for _, msg := range m.Messages()[3:] {
		if seen[msg.UIDL] {
			t.Errorf("UIDL %s reused", msg.UIDL)
		}
		seen[msg.UIDL] = true
	}
}

func TestUIDLAfterSequenceRollback(t *testing.T) {
	// Restoring an old backup rolls the mailbox sequence back; a new message
	// must still get a UIDL no client has seen.
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now })
	mustAddAccount(t, s, "alice@example.com")
	var backup bytes.Buffer
	if _, err := s.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, "one\r\n", "alice@example.com")
	m := openDrop(t, s, "alice@example.com")
	old := m.Messages()[0].UIDL
	m.Close()
	s.Close()

	path := s.Path()
	if err := writeFile(path, backup.Bytes()); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2e9)
	opts := DefaultOptions()
	opts.Path, opts.HashParams, opts.Now = path, fastHash, clock.Now
	s2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	deliver(t, s2, "two\r\n", "alice@example.com")
	m = openDrop(t, s2, "alice@example.com")
	defer m.Close()
	if got := m.Messages()[0]; got.UID != 1 || got.UIDL == old {
		t.Fatalf("after rollback: uid %d, UIDL %s (old %s)", got.UID, got.UIDL, old)
	}
}

func TestMaildrop(t *testing.T) {
	s := openTest(t, nil)
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		deliver(t, s, fmt.Sprintf("message %d\r\n", i), "alice@example.com")
	}
	m := openDrop(t, s, "alice@example.com")

	// The lock: a second session gets ErrMaildropLocked.
	if _, err := s.OpenMaildrop(ctx, Login{Account: "alice@example.com"}, ""); !errors.Is(err, ErrMaildropLocked) {
		t.Fatalf("second OpenMaildrop: %v, want ErrMaildropLocked", err)
	}
	// Mail arriving during the session is not in its snapshot.
	deliver(t, s, "late\r\n", "alice@example.com")
	if n := len(m.Messages()); n != 3 {
		t.Fatalf("snapshot has %d messages, want 3", n)
	}
	// Closing without commit deletes nothing and unlocks.
	m.Close()
	m = openDrop(t, s, "alice@example.com")
	if n := len(m.Messages()); n != 4 {
		t.Fatalf("after Close: %d messages, want 4", n)
	}
	if err := m.Commit(ctx, []int{0, 2}); err != nil {
		t.Fatal(err)
	}
	m = openDrop(t, s, "alice@example.com")
	defer m.Close()
	var got []string
	for i := range m.Messages() {
		got = append(got, strings.TrimSpace(string(readAll(t, m, i))))
	}
	if strings.Join(got, ",") != "message 1,late" {
		t.Fatalf("left after deleting 1 and 3: %v", got)
	}
	if _, err := m.Open(5); !errors.Is(err, ErrNoSuchMessage) {
		t.Fatalf("Open(5): %v", err)
	}
	checkVerify(t, s)
}

func TestAbortAndAbandonedDeliveries(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 1024 })
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()

	// Abort after flushing: nothing is left.
	d := s.Begin(ctx, Envelope{})
	io.Copy(d, strings.NewReader(strings.Repeat("y", 20_000)))
	d.Abort()
	checkVerify(t, s)
	if n := countChunks(t, s); n != 0 {
		t.Fatalf("%d chunks left after Abort", n)
	}

	// A delivery abandoned without Abort (as by a crash) leaves pending
	// chunks; the next Open removes them.
	d = s.Begin(ctx, Envelope{})
	io.Copy(d, strings.NewReader(strings.Repeat("z", 20_000)))
	// Flushes land in the background: wait for them.
	for deadline := time.Now().Add(5 * time.Second); countChunks(t, s) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no chunks flushed; the test needs a flushed delivery")
		}
	}
	path := s.Path()
	s.Close()
	opts := DefaultOptions()
	opts.Path, opts.HashParams = path, fastHash
	s2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n := countChunks(t, s2); n != 0 {
		t.Fatalf("%d chunks left after reopening", n)
	}
	checkVerify(t, s2)
}

func TestSecondOpenFailsAtOnce(t *testing.T) {
	s := openTest(t, nil)
	opts := DefaultOptions()
	opts.Path = s.Path()
	_, err := Open(opts)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if _, err := VerifyFile(s.Path()); !errors.Is(err, ErrLocked) {
		t.Fatalf("VerifyFile while open: %v, want ErrLocked", err)
	}
}

func TestTooLarge(t *testing.T) {
	s := openTest(t, func(o *Options) { o.MaxMessageSize = 5000; o.ChunkSize = 1024 })
	mustAddAccount(t, s, "alice@example.com")
	_, err := s.Deliver(context.Background(), Envelope{}, []string{"alice@example.com"}, strings.NewReader(strings.Repeat("a", 6000)))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if n := countChunks(t, s); n != 0 {
		t.Fatalf("%d chunks left", n)
	}
	checkVerify(t, s)
}

func TestStorageFull(t *testing.T) {
	s := openTest(t, func(o *Options) { o.MaxSize = 4 << 20 })
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()
	body := strings.Repeat("0123456789\r\n", 20_000) // 240 KB
	var stored int
	var err error
	for i := 0; i < 100; i++ {
		if _, err = s.Deliver(ctx, Envelope{}, []string{"alice@example.com"}, strings.NewReader(body)); err != nil {
			break
		}
		stored++
	}
	if !errors.Is(err, ErrStorageFull) {
		t.Fatalf("after %d deliveries: %v, want ErrStorageFull", stored, err)
	}
	checkVerify(t, s)
	m := openDrop(t, s, "alice@example.com")
	if len(m.Messages()) != stored {
		t.Fatalf("%d messages visible, %d deliveries returned", len(m.Messages()), stored)
	}
	// Freeing space makes room again.
	all := make([]int, len(m.Messages()))
	for i := range all {
		all[i] = i
	}
	if err := m.Commit(ctx, all); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(ctx, Envelope{}, []string{"alice@example.com"}, strings.NewReader(body)); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
	checkVerify(t, s)
}

func TestAccounts(t *testing.T) {
	s := openTest(t, nil)
	ctx := context.Background()
	if err := s.AddAccount(ctx, "Alice@Example.com", "short"); !errors.Is(err, ErrWeakPassword) {
		t.Fatalf("weak password: %v", err)
	}
	for _, bad := range []string{"", "alice", "@example.com", "alice@", "a b@example.com", `"a@b"@example.com`, "a%b@example.com"} {
		if err := s.AddAccount(ctx, bad, "correct horse battery"); err == nil {
			t.Errorf("AddAccount(%q) accepted", bad)
		}
	}
	mustAddAccount(t, s, "Alice@Example.com")
	if err := s.AddAccount(ctx, "alice@example.com", "correct horse battery"); !errors.Is(err, ErrAccountExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if l, err := s.Authenticate("ALICE@example.com", "correct horse battery"); err != nil || l.Account != "alice@example.com" || l.Device != 0 {
		t.Fatalf("Authenticate: %+v, %v", l, err)
	}
	for _, c := range []struct{ user, pw string }{
		{"alice@example.com", "wrong password!"},
		{"nobody@example.com", "correct horse battery"},
		{"not an address", "x"},
	} {
		if _, err := s.Authenticate(c.user, c.pw); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("Authenticate(%q): %v, want ErrAuthFailed", c.user, err)
		}
	}
	if err := s.SetPassword(ctx, "alice@example.com", "another good password"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate("alice@example.com", "correct horse battery"); !errors.Is(err, ErrAuthFailed) {
		t.Fatal("old password still works")
	}
	if _, err := s.Authenticate("alice@example.com", "another good password"); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, "hello\r\n", "alice@example.com")
	// Deleting an account never waits for its POP3 sessions: they are
	// told to end, and their QUIT changes nothing.
	m := openDrop(t, s, "alice@example.com")
	select {
	case <-m.Revoked():
		t.Fatal("revoked before anything happened")
	default:
	}
	if err := s.DeleteAccount(ctx, "alice@example.com"); err != nil {
		t.Fatalf("DeleteAccount while in use: %v", err)
	}
	select {
	case <-m.Revoked():
	default:
		t.Fatal("the open session was not told the account is gone")
	}
	if err := m.Commit(ctx, []int{0}); err == nil {
		t.Fatal("Commit after the account was deleted succeeded")
	}
	if ok, _ := s.HasAccount("alice@example.com"); ok {
		t.Fatal("account still there")
	}
	if st, _ := s.Stats(); st.Messages != 0 {
		t.Fatalf("%d messages left after deleting the only account", st.Messages)
	}
	// A new account of the same name starts empty.
	mustAddAccount(t, s, "alice@example.com")
	if info, _ := s.Account("alice@example.com"); info.Messages != 0 {
		t.Fatalf("recreated account has %d messages", info.Messages)
	}
	checkVerify(t, s)
}

func countChunks(t testing.TB, s *Store) int {
	t.Helper()
	var n int
	s.view(func(tx *bboltTx) error {
		n = tx.Bucket(bucketChunks).Stats().KeyN
		return nil
	})
	return n
}

// TestCommitFailureSparesSmallWrites: when a batch's commit fails because
// one large write filled max_size, the small writes queued with it (a
// QUIT's deletions, which free space) still go through.
func TestCommitFailureSparesSmallWrites(t *testing.T) {
	s := openTest(t, func(o *Options) { o.MaxSize = 4 << 20 })
	small := &op{done: make(chan error, 1), fn: func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("test"))
		if err != nil {
			return err
		}
		return b.Put([]byte("small"), []byte("fits"))
	}}
	big := &op{done: make(chan error, 1), fn: func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("test"))
		if err != nil {
			return err
		}
		return b.Put([]byte("big"), make([]byte, 8<<20))
	}}
	s.commit([]*op{small, big})
	if err := <-small.done; err != nil {
		t.Fatalf("the small write failed with the big one: %v", err)
	}
	if err := <-big.done; !errors.Is(err, ErrStorageFull) {
		t.Fatalf("the big write: %v, want ErrStorageFull", err)
	}
	err := s.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket([]byte("test")); b == nil || string(b.Get([]byte("small"))) != "fits" || b.Get([]byte("big")) != nil {
			return errors.New("the bucket does not hold exactly the small write")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNormalisationAcrossWrites checks Write against a byte-at-a-time
// reference on random text full of CRs and LFs, cut into writes of random
// sizes: the CRLF fast path and the line-by-line path must agree wherever
// a write starts or ends.
func TestNormalisationAcrossWrites(t *testing.T) {
	// The one-shot form is the reference: short enough to check by eye
	// (TestNormalizeLineEnds), and what Commit applies to a prefix.
	reference := NormalizeLineEnds
	s := openTest(t, func(o *Options) { o.ChunkSize = 64; o.FlushBytes = 256 })
	mustAddAccount(t, s, "alice@example.com")
	rng := mrand.New(mrand.NewPCG(1, 2))
	alphabet := []byte("ab\r\n")
	for round := range 200 {
		in := make([]byte, rng.IntN(600))
		for i := range in {
			in[i] = alphabet[rng.IntN(len(alphabet))]
			if round%2 == 0 && rng.IntN(4) != 0 {
				in[i] = 'x' // mostly text, so whole writes are CRLF
			}
		}
		if round%3 == 0 {
			// Well-formed CRLF text, the fast path's case.
			in = bytes.ReplaceAll(bytes.ReplaceAll(in, []byte("\r"), []byte("y")), []byte("\n"), []byte("\r\n"))
		}
		d := s.Begin(context.Background(), Envelope{})
		for p := in; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(40))
			if _, err := d.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		id, err := d.Commit(nil, []string{"alice@example.com"})
		if err != nil {
			t.Fatal(err)
		}
		m := openDrop(t, s, "alice@example.com")
		last := len(m.Messages()) - 1
		if m.Messages()[last].ID() != id {
			t.Fatalf("round %d: last message is %v, want %v", round, m.Messages()[last].ID(), id)
		}
		got, want := readAll(t, m, last), reference(in)
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: %q stored as %q, want %q", round, in, got, want)
		}
		if m.Messages()[last].Size != int64(len(want)) {
			t.Fatalf("round %d: size %d, want %d", round, m.Messages()[last].Size, len(want))
		}
		if err := m.Commit(context.Background(), []int{last}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSpaceReusedAfterReopen: the freelist is not stored (NoFreelistSync),
// so Open rebuilds it; space that deletions freed before a restart must be
// used again after it instead of growing the file, and the file must
// verify, also read-only.
func TestSpaceReusedAfterReopen(t *testing.T) {
	s := openTest(t, nil)
	mustAddAccount(t, s, "alice@example.com")
	body := strings.Repeat(strings.Repeat("r", 78)+"\r\n", 4<<20/80)
	for range 8 {
		deliver(t, s, body, "alice@example.com")
	}
	m := openDrop(t, s, "alice@example.com")
	all := make([]int, len(m.Messages()))
	for i := range all {
		all[i] = i
	}
	if err := m.Commit(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	before, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	path := s.Path()
	s.Close()
	opts := DefaultOptions()
	opts.Path, opts.HashParams = path, fastHash
	s2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for range 6 {
		deliver(t, s2, body, "alice@example.com")
	}
	after, err := s2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.FileSize > before.FileSize {
		t.Errorf("the file grew from %d to %d bytes though 32 MiB had been freed for 24 MiB of new mail", before.FileSize, after.FileSize)
	}
	checkVerify(t, s2)
	s2.Close()
	problems, err := VerifyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("VerifyFile: %v", p)
	}
}

func TestNormalizeLineEnds(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"a", "a\r\n"},
		{"a\r\n", "a\r\n"},
		{"a\nb", "a\r\nb\r\n"},
		{"a\rb\r", "a\r\nb\r\n"},
		{"\r\r\n\n", "\r\n\r\n\r\n"},
		{"a\n\r", "a\r\n\r\n"},
	} {
		if got := string(NormalizeLineEnds([]byte(tc.in))); got != tc.want {
			t.Errorf("NormalizeLineEnds(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
