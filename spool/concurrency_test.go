package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// TestConcurrentDeliveriesAndDeletions runs deliveries to several mailboxes
// beside POP3-style sessions that delete at random, and checks the totals
// and the file's invariants at the end. Run it under -race.
func TestConcurrentDeliveriesAndDeletions(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 2048 })
	accounts := []string{"a@example.com", "b@example.com", "c@example.com"}
	for _, a := range accounts {
		mustAddAccount(t, s, a)
	}
	ctx := context.Background()
	var delivered [3]atomic.Int64
	var deleted [3]atomic.Int64
	stop := make(chan struct{})
	var deliverers, sessions sync.WaitGroup
	for w := 0; w < 16; w++ {
		deliverers.Add(1)
		go func() {
			defer deliverers.Done()
			for i := 0; i < 40; i++ {
				// To one, two or three of the accounts.
				var to []string
				var idx []int
				for j := range accounts {
					if mrand.IntN(2) == 0 || (j == 2 && len(to) == 0) {
						to = append(to, accounts[j])
						idx = append(idx, j)
					}
				}
				body := strings.Repeat(fmt.Sprintf("line %d\n", i), 1+mrand.IntN(600))
				if _, err := s.Deliver(ctx, Envelope{}, to, strings.NewReader(body)); err != nil {
					t.Error(err)
					return
				}
				for _, j := range idx {
					delivered[j].Add(1)
				}
			}
		}()
	}
	for j := range accounts {
		sessions.Add(1)
		go func() {
			defer sessions.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m, err := s.OpenMaildrop(ctx, Login{Account: accounts[j]}, "")
				if err != nil {
					t.Error(err)
					return
				}
				var del []int
				for i := range m.Messages() {
					if mrand.IntN(3) == 0 {
						r, err := m.Open(i)
						if err != nil {
							t.Error(err)
						} else {
							var buf bytes.Buffer
							buf.ReadFrom(r)
							r.Close()
						}
						del = append(del, i)
					}
				}
				if mrand.IntN(4) == 0 {
					m.Close() // dropped connection: nothing deleted
					continue
				}
				if err := m.Commit(ctx, del); err != nil {
					t.Error(err)
					return
				}
				deleted[j].Add(int64(len(del)))
			}
		}()
	}
	deliverers.Wait()
	close(stop)
	sessions.Wait()
	for j, a := range accounts {
		info, err := s.Account(a)
		if err != nil {
			t.Fatal(err)
		}
		if want := delivered[j].Load() - deleted[j].Load(); int64(info.Messages) != want {
			t.Errorf("%s: %d messages, want %d delivered - %d deleted = %d", a, info.Messages, delivered[j].Load(), deleted[j].Load(), want)
		}
	}
	checkVerify(t, s)
}

// TestDeviceViewFollowsCommitOrder: which mail a new device sees depends on
// the order in which the device and the messages were stored, not on the
// clock: a clock stepped back after a device was added (an NTP correction)
// must not hide mail from it, nor let the others' deletions remove mail it
// has not fetched.
func TestDeviceViewFollowsCommitOrder(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now })
	ctx := context.Background()
	const acct = "alice@example.com"
	mustAddAccount(t, s, acct)
	deliver(t, s, "before\r\n", acct)
	pw, err := s.AddDevice(ctx, acct, "phone", false)
	if err != nil {
		t.Fatal(err)
	}
	phone, err := s.Authenticate(acct, pw)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(-time.Hour)
	deliver(t, s, "after, by a clock an hour behind\r\n", acct)
	m, err := s.OpenMaildrop(ctx, phone, "")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if msgs := m.Messages(); len(msgs) != 1 || string(readAll(t, m, 0)) != "after, by a clock an hour behind\r\n" {
		t.Fatalf("the phone sees %d messages; want only the one stored after it was added", len(msgs))
	}
}

func TestDevices(t *testing.T) {
	clock := newClock()
	day := 24 * clock.t.Sub(clock.t.Add(-1*3600e9))
	s := openTest(t, func(o *Options) { o.Now = clock.Now })
	ctx := context.Background()
	const acct = "alice@example.com"
	mustAddAccount(t, s, acct)
	phonePW, err := s.AddDevice(ctx, acct, "phone", false)
	if err != nil {
		t.Fatal(err)
	}
	laptopPW, _ := s.AddDevice(ctx, acct, "laptop", false)
	if _, err := s.AddDevice(ctx, acct, "Phone", false); !errors.Is(err, ErrDeviceExists) {
		t.Fatalf("duplicate device: %v", err)
	}
	if _, err := s.AddDevice(ctx, acct, "bad name!", false); err == nil {
		t.Fatal("bad device name accepted")
	}
	phone, err := s.Authenticate(acct, phonePW)
	if err != nil || phone.DeviceName != "phone" || phone.Device == 0 {
		t.Fatalf("phone login: %+v, %v", phone, err)
	}
	laptop, _ := s.Authenticate(acct, laptopPW)
	if _, err := s.Authenticate("bob@example.com", phonePW); !errors.Is(err, ErrAuthFailed) {
		t.Fatal("a device password worked for another address")
	}

	clock.Advance(1e9)
	deliver(t, s, "one\r\n", acct)
	deliver(t, s, "two\r\n", acct)
	open := func(l Login) *Maildrop {
		t.Helper()
		m, err := s.OpenMaildrop(ctx, l, "192.0.2.1")
		if err != nil {
			t.Fatalf("OpenMaildrop(%s): %v", l.DeviceName, err)
		}
		return m
	}
	stored := func() int { st, _ := s.Stats(); return st.Messages }

	// Different devices at once; the same device twice is refused.
	mp, ml := open(phone), open(laptop)
	if _, err := s.OpenMaildrop(ctx, phone, ""); !errors.Is(err, ErrMaildropLocked) {
		t.Fatalf("same device twice: %v", err)
	}
	if len(mp.Messages()) != 2 || len(ml.Messages()) != 2 {
		t.Fatalf("views: phone %d, laptop %d", len(mp.Messages()), len(ml.Messages()))
	}
	if mp.Messages()[0].UIDL != ml.Messages()[0].UIDL {
		t.Fatal("UIDLs differ between devices")
	}
	ml.Close()
	// The phone deletes "one": gone from its view only.
	if err := mp.Commit(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	if n := len(open(phone).Messages()); n != 1 {
		t.Fatalf("phone sees %d after deleting one, want 1", n)
	}
	s.unlockDevice(acct, phone.Device)
	ml = open(laptop)
	if len(ml.Messages()) != 2 || stored() != 2 {
		t.Fatalf("laptop sees %d, store holds %d; want 2, 2", len(ml.Messages()), stored())
	}
	// The laptop deletes it too: now it leaves the store.
	if err := ml.Commit(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	if stored() != 1 {
		t.Fatalf("after both devices deleted: store holds %d, want 1", stored())
	}

	// A device added now does not see older mail, unless added with --all.
	clock.Advance(1e9)
	tabletPW, _ := s.AddDevice(ctx, acct, "tablet", false)
	allPW, _ := s.AddDevice(ctx, acct, "desktop", true)
	tablet, _ := s.Authenticate(acct, tabletPW)
	desktop, _ := s.Authenticate(acct, allPW)
	if m := open(tablet); len(m.Messages()) != 0 {
		t.Fatalf("new device sees %d old messages", len(m.Messages()))
	} else {
		m.Close()
	}
	if m := open(desktop); len(m.Messages()) != 1 {
		t.Fatalf("--all device sees %d, want 1", len(m.Messages()))
	} else {
		m.Close()
	}

	// Revoking a device removes its claim: "two" is deleted by phone, laptop
	// and desktop; the tablet never had a claim; revoking nobody else keeps
	// it... until the last claimant deletes.
	for _, l := range []Login{phone, laptop} {
		m := open(l)
		if err := m.Commit(ctx, []int{0}); err != nil {
			t.Fatal(err)
		}
	}
	if stored() != 1 {
		t.Fatalf("desktop still wants it: store holds %d, want 1", stored())
	}
	// The desktop keeps a session open while it is revoked (a thief with
	// the device): the revocation does not wait for it, that session is
	// told to end, and its deletions no longer count. Another device's
	// session is left alone.
	held, other := open(desktop), open(tablet)
	if err := s.DeleteDevice(ctx, acct, "desktop"); err != nil {
		t.Fatalf("revoking a device with a session open: %v", err)
	}
	select {
	case <-held.Revoked():
	default:
		t.Fatal("the revoked device's session was not told")
	}
	select {
	case <-other.Revoked():
		t.Fatal("another device's session was revoked")
	default:
	}
	if err := held.Commit(ctx, []int{0}); !errors.Is(err, ErrNoSuchDevice) {
		t.Fatalf("QUIT of a revoked device: %v, want ErrNoSuchDevice", err)
	}
	other.Close()
	if stored() != 0 {
		t.Fatalf("after revoking the last claimant: store holds %d, want 0", stored())
	}
	if _, err := s.Authenticate(acct, allPW); !errors.Is(err, ErrAuthFailed) {
		t.Fatal("revoked device can still log in")
	}
	if err := s.DeleteDevice(ctx, acct, "desktop"); !errors.Is(err, ErrNoSuchDevice) {
		t.Fatalf("second revoke: %v", err)
	}

	// An idle device does not hold mail back. The laptop logs in, so it is
	// active and keeps "three" after the phone deletes it...
	deliver(t, s, "three\r\n", acct)
	open(laptop).Close()
	m := open(phone)
	m.Commit(ctx, []int{0})
	if stored() != 1 {
		t.Fatalf("the active laptop still wants it: store holds %d, want 1", stored())
	}
	infos, _ := s.Devices(acct)
	waiting := map[string]int{}
	for _, d := range infos {
		waiting[d.Name] = d.Waiting
	}
	if waiting["phone"] != 0 || waiting["laptop"] != 1 || waiting["tablet"] != 1 {
		t.Fatalf("waiting counts %v", waiting)
	}
	// ...until the laptop and the tablet go idle: the sweep removes it.
	clock.Advance(31 * day)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if stored() != 0 {
		t.Fatalf("after sweep with only idle claimants: store holds %d, want 0", stored())
	}
	// A deletion when every other claimant is idle is final at once.
	deliver(t, s, "three-b\r\n", acct)
	clock.Advance(31 * day)
	m = open(phone)
	m.Commit(ctx, []int{0})
	if stored() != 0 {
		t.Fatalf("deleted while the others were idle: store holds %d, want 0", stored())
	}

	// The grace time: an active device that never deletes cannot keep a
	// message for ever once another device deleted it.
	deliver(t, s, "four\r\n", acct)
	m = open(laptop) // laptop active again
	m.Close()
	m = open(phone)
	m.Commit(ctx, []int{0})
	for i := 0; i < 4; i++ { // keep the laptop active, 25 days at a time
		clock.Advance(25 * day)
		m = open(laptop)
		m.Close()
		s.Sweep(ctx)
	}
	if stored() != 0 {
		t.Fatalf("100 days after the first deletion: store holds %d, want 0", stored())
	}
	checkVerify(t, s)
}

func TestAccountPasswordAloneBehavesAsBefore(t *testing.T) {
	s := openTest(t, nil)
	ctx := context.Background()
	mustAddAccount(t, s, "bob@example.com")
	deliver(t, s, "x\r\n", "bob@example.com")
	l, err := s.Authenticate("bob@example.com", "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := s.OpenMaildrop(ctx, l, "")
	m.Commit(ctx, []int{0})
	if st, _ := s.Stats(); st.Messages != 0 {
		t.Fatalf("single-device deletion left %d messages", st.Messages)
	}
}

// TestQuotaIgnoresRetainedMail: mail the owner deleted but retention keeps
// does not count against the quota, so deleting is how an owner makes room.
func TestQuotaIgnoresRetainedMail(t *testing.T) {
	s := openTest(t, func(o *Options) { o.Retention = units.DurationOf(3600e9) })
	ctx := context.Background()
	mustAddAccount(t, s, "alice@example.com")
	deliver(t, s, "keep me\r\n", "alice@example.com")
	deliver(t, s, "other\r\n", "alice@example.com")
	m := openDrop(t, s, "alice@example.com")
	other := m.Messages()[1].Size
	if err := m.Commit(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	// The quota holds "other" and a newcomer exactly (both stored with the
	// same Return-Path line); "keep me", retained, is not counted.
	newcomer := "newcomer\r\n"
	quota := 2*other - int64(len("other\r\n")) + int64(len(newcomer))
	if err := s.SetQuota(ctx, "alice@example.com", quota); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, newcomer, "alice@example.com")
	if _, err := s.Deliver(ctx, Envelope{}, []string{"alice@example.com"}, strings.NewReader("x")); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("Deliver over the quota of what is visible: %v, want ErrQuotaExceeded", err)
	}
	if st, _ := s.Stats(); st.Messages != 3 {
		t.Fatalf("%d messages stored, want 3 (one retained)", st.Messages)
	}
	if info, _ := s.Account("alice@example.com"); info.QuotaUsed != quota || info.Bytes <= quota {
		t.Fatalf("account info: %d bytes, %d counted against the quota; want %d counted", info.Bytes, info.QuotaUsed, quota)
	}
	checkVerify(t, s)
}

func TestRetention(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now; o.Retention = units.DurationOf(3600e9) })
	ctx := context.Background()
	mustAddAccount(t, s, "alice@example.com")
	deliver(t, s, "keep me\r\n", "alice@example.com")
	deliver(t, s, "other\r\n", "alice@example.com")
	m := openDrop(t, s, "alice@example.com")
	uidl := m.Messages()[0].UIDL
	m.Commit(ctx, []int{0})
	m = openDrop(t, s, "alice@example.com")
	if len(m.Messages()) != 1 {
		t.Fatalf("deleted message still visible: %d", len(m.Messages()))
	}
	m.Close()
	if st, _ := s.Stats(); st.Messages != 2 {
		t.Fatalf("retained message not kept: %d stored", st.Messages)
	}
	var buf bytes.Buffer
	if n, _ := s.Export(ctx, "alice@example.com", &buf); n != 1 {
		t.Fatalf("export included %d messages, want 1 (retained ones are not exported)", n)
	}
	n, err := s.Restore(ctx, "alice@example.com")
	if err != nil || n != 1 {
		t.Fatalf("Restore: %d, %v", n, err)
	}
	m = openDrop(t, s, "alice@example.com")
	if len(m.Messages()) != 2 || m.Messages()[0].UIDL != uidl || string(readAll(t, m, 0)) != "keep me\r\n" {
		t.Fatalf("restored view: %d messages", len(m.Messages()))
	}
	m.Commit(ctx, []int{0, 1})
	clock.Advance(30 * 60e9)
	s.Sweep(ctx)
	if st, _ := s.Stats(); st.Messages != 2 {
		t.Fatalf("purged before the retention time: %d stored", st.Messages)
	}
	clock.Advance(31 * 60e9)
	s.Sweep(ctx)
	if st, _ := s.Stats(); st.Messages != 0 {
		t.Fatalf("not purged after the retention time: %d stored", st.Messages)
	}
	if n, _ := s.Restore(ctx, "alice@example.com"); n != 0 {
		t.Fatalf("restored %d purged messages", n)
	}
	checkVerify(t, s)

	off := openTest(t, nil)
	mustAddAccount(t, off, "alice@example.com")
	if _, err := off.Restore(ctx, "alice@example.com"); !errors.Is(err, ErrNotRetained) {
		t.Fatalf("Restore with retention off: %v", err)
	}
}

func TestBackupWhileDelivering(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 1024 })
	mustAddAccount(t, s, "alice@example.com")
	ctx := context.Background()
	// One message before the first backup, so that every copy must hold
	// at least one.
	deliver(t, s, strings.Repeat("body\r\n", 1000), "alice@example.com")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Deliver(ctx, Envelope{}, []string{"alice@example.com"}, strings.NewReader(strings.Repeat("body\r\n", 1000))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	dir := t.TempDir()
	var copies []string
	for i := 0; i < 3; i++ {
		p := filepath.Join(dir, fmt.Sprintf("backup%d.db", i))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Backup(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		copies = append(copies, p)
	}
	close(stop)
	wg.Wait()
	prev := 1
	for _, p := range copies {
		problems, err := VerifyFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range problems {
			t.Errorf("%s: %v", p, pr)
		}
		// A backup is a working spool.
		opts := DefaultOptions()
		opts.Path, opts.HashParams = p, fastHash
		b, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		m, err := b.OpenMaildrop(ctx, Login{Account: "alice@example.com"}, "")
		if err != nil {
			t.Fatal(err)
		}
		// Each copy holds what the one before it held, and more or as
		// much: deliveries only add.
		if n := len(m.Messages()); n < prev {
			t.Fatalf("%s holds %d messages; the copy before it held %d", p, n, prev)
		} else {
			prev = n
		}
		for i := range m.Messages() {
			if got := readAll(t, m, i); len(got) != 6000 {
				t.Fatalf("%s: message %d has %d bytes", p, i, len(got))
			}
		}
		m.Close()
		b.Close()
	}
}

func TestExportMboxrd(t *testing.T) {
	s := openTest(t, nil)
	mustAddAccount(t, s, "alice@example.com")
	deliver(t, s, "Subject: a\r\n\r\nFrom here\r\n>From there\r\nnot From\r\n", "alice@example.com")
	id, err := s.Deliver(context.Background(), Envelope{}, []string{"alice@example.com"}, strings.NewReader("Subject: b\n\nlast line without newline"))
	if err != nil || id == 0 {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := s.Export(context.Background(), "alice@example.com", &buf)
	if err != nil || n != 2 {
		t.Fatalf("Export: %d, %v", n, err)
	}
	got := buf.String()
	lines := strings.Split(got, "\n")
	if !strings.HasPrefix(lines[0], "From sender@example.net ") || !strings.HasPrefix(lines[7], "From MAILER-DAEMON ") {
		t.Fatalf("From_ lines wrong:\n%s", got)
	}
	want := "Subject: a\n\n>From here\n>>From there\nnot From\n\n"
	if !strings.Contains(got, want) {
		t.Fatalf("body quoting wrong:\n%q", got)
	}
	if strings.Contains(got, "\r") {
		t.Fatal("export kept CR characters")
	}
	if !strings.HasSuffix(got, "last line without newline\n\n") {
		t.Fatalf("end wrong: %q", got[len(got)-40:])
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	s := openTest(t, func(o *Options) { o.ChunkSize = 1024 })
	mustAddAccount(t, s, "alice@example.com")
	id := deliver(t, s, strings.Repeat("x", 5000), "alice@example.com")
	checkVerify(t, s)
	damage := []struct {
		name string
		do   func(tx *bboltTx) error
		want string
	}{
		{"missing chunk", func(tx *bboltTx) error { return tx.Bucket(bucketChunks).Delete(chunkKey(uint64(id), 2)) }, "chunks missing"},
		{"orphan chunk", func(tx *bboltTx) error { return tx.Bucket(bucketChunks).Put(chunkKey(999, 1), []byte("x")) }, "orphan"},
		{"wrong totals", func(tx *bboltTx) error { return addStoreStats(tx, 3, 0) }, "store totals"},
		{"orphan mailbox", func(tx *bboltTx) error {
			_, err := tx.Bucket(bucketMailboxes).CreateBucket([]byte("ghost@example.com"))
			return err
		}, "has no account"},
	}
	for _, d := range damage {
		if err := s.db.Update(d.do); err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, p := range s.Verify() {
			if strings.Contains(p.Error(), d.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: Verify did not report %q: %v", d.name, d.want, s.Verify())
		}
	}
}
