package spool

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/postie/postie/internal/units"
)

func quarantine(t *testing.T, s *Store, body string, note QuarantineNote, to ...string) MessageID {
	t.Helper()
	d := s.Begin(context.Background(), Envelope{MailFrom: "spammer@elsewhere.example"})
	if _, err := d.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	id, err := d.CommitQuarantine([]byte("Received: by test\r\n"), to, note)
	if err != nil {
		t.Fatalf("CommitQuarantine: %v", err)
	}
	return id
}

// TestQuarantine: a quarantined message is in no mailbox and counts
// against no quota; it is listed (per account too), read whole, released
// into its accounts' mailboxes with a note on top, or deleted; the spool
// verifies clean throughout.
func TestQuarantine(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) {
		o.Now = clock.Now
		o.Quota = 100 // smaller than the messages: the quarantine ignores it
		o.QuarantineRetention = DefaultOptions().QuarantineRetention
	})
	mustAddAccount(t, s, "alice@example.com")
	mustAddAccount(t, s, "bob@example.com")
	body := "Subject: win\r\n\r\n" + strings.Repeat("buy now ", 40) + "\r\n"
	a := quarantine(t, s, body, QuarantineNote{Reason: "rspamd: spam", Subject: "win"}, "alice@example.com", "bob@example.com")
	clock.Advance(time.Minute)
	b := quarantine(t, s, body, QuarantineNote{Reason: "DMARC fail", Refused: true}, "bob@example.com")
	checkVerify(t, s)

	if m := openDrop(t, s, "alice@example.com"); len(m.Messages()) != 0 {
		t.Fatalf("a quarantined message is in alice's mailbox")
	} else {
		m.Close()
	}
	all, err := s.QuarantineList("")
	if err != nil || len(all) != 2 || all[0].ID != a || all[1].ID != b || all[0].Reason != "rspamd: spam" || all[0].MailFrom != "spammer@elsewhere.example" {
		t.Fatalf("QuarantineList = %+v, %v", all, err)
	}
	if mine, _ := s.QuarantineList("Alice@Example.com"); len(mine) != 1 || mine[0].ID != a {
		t.Errorf("alice's quarantine: %+v", mine)
	}
	r, info, err := s.QuarantineMessage(a)
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(r)
	r.Close()
	if string(whole) != "Received: by test\r\n"+body || info.Subject != "win" {
		t.Errorf("QuarantineMessage = %q, %+v", whole, info)
	}

	reached, err := s.QuarantineRelease(context.Background(), a)
	if err != nil || strings.Join(reached, ",") != "alice@example.com,bob@example.com" {
		t.Fatalf("QuarantineRelease = %v, %v", reached, err)
	}
	checkVerify(t, s)
	m := openDrop(t, s, "alice@example.com")
	if len(m.Messages()) != 1 {
		t.Fatalf("after release alice has %d messages", len(m.Messages()))
	}
	got := string(readAll(t, m, 0))
	m.Close()
	if !strings.HasPrefix(got, "X-Postie-Released: ") || !strings.Contains(got, "held in quarantine since") || !strings.Contains(got, "rspamd: spam\r\nReceived: by test\r\n"+body) {
		t.Errorf("released message:\n%s", got)
	}
	if _, err := s.QuarantineRelease(context.Background(), a); !errors.Is(err, ErrNoSuchMessage) {
		t.Errorf("released twice: %v", err)
	}
	if err := s.QuarantineDelete(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if left, _ := s.QuarantineList(""); len(left) != 0 {
		t.Errorf("left in the quarantine: %+v", left)
	}
	checkVerify(t, s)
	if st, _ := s.Stats(); st.Messages != 1 {
		t.Errorf("%d messages stored, want the released one", st.Messages)
	}
}

// TestQuarantinePrune: messages leave after the retention, and the oldest
// go first while the quarantine is over its size.
func TestQuarantinePrune(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) {
		o.Now = clock.Now
		o.QuarantineRetention = DefaultOptions().QuarantineRetention
		o.QuarantineMaxSize = 3000
	})
	mustAddAccount(t, s, "alice@example.com")
	var ids []MessageID
	for range 4 {
		ids = append(ids, quarantine(t, s, strings.Repeat("x", 1000)+"\r\n", QuarantineNote{Reason: "test"}, "alice@example.com"))
		clock.Advance(time.Hour)
	}
	removed, lastDay, err := s.QuarantinePrune(context.Background())
	if err != nil || removed != 2 || lastDay != 4 {
		t.Fatalf("QuarantinePrune = %d, %d, %v; want 2 removed (4 KiB over 3000 bytes), 4 in the last day", removed, lastDay, err)
	}
	if left, _ := s.QuarantineList(""); len(left) != 2 || left[0].ID != ids[2] {
		t.Errorf("left %+v, want the two newest", left)
	}
	clock.Advance(8 * 24 * time.Hour)
	if removed, _, _ := s.QuarantinePrune(context.Background()); removed != 2 {
		t.Errorf("after the retention %d removed, want 2", removed)
	}
	checkVerify(t, s)
}

// TestQuarantineOff: with quarantine_retention 0 nothing is held.
func TestQuarantineOff(t *testing.T) {
	s := openTest(t, func(o *Options) { o.QuarantineRetention = units.DurationOf(0) })
	mustAddAccount(t, s, "alice@example.com")
	d := s.Begin(context.Background(), Envelope{})
	d.Write([]byte("x\r\n"))
	if _, err := d.CommitQuarantine(nil, []string{"alice@example.com"}, QuarantineNote{}); !errors.Is(err, ErrQuarantineOff) {
		t.Fatalf("CommitQuarantine with the quarantine off: %v", err)
	}
	checkVerify(t, s)
}

// TestQuarantineTextIsSafe: From, Subject and the reason come from the
// sender and filters; they are stored without control characters, so that
// postie quarantine list cannot be made to rewrite the owner's screen.
func TestQuarantineTextIsSafe(t *testing.T) {
	s := openTest(t, func(o *Options) { o.QuarantineRetention = DefaultOptions().QuarantineRetention })
	mustAddAccount(t, s, "alice@example.com")
	quarantine(t, s, "x\r\n", QuarantineNote{Reason: "bad\x1b[2J", Subject: "hi\x1b]0;owned\x07\u009b" + strings.Repeat("é", 150), From: "\xff\xfe"}, "alice@example.com")
	q, _ := s.QuarantineList("")
	for _, v := range []string{q[0].Reason, q[0].Subject, q[0].From} {
		if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 }) || !utf8.ValidString(v) || len(v) > 200 && v != q[0].Reason {
			t.Errorf("unsafe text kept: %q", v)
		}
	}
}
