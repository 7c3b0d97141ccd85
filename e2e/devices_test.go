package e2e

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// devicePassword adds a device with "postie device add" and returns the
// password it prints.
func (s *server) devicePassword(t *testing.T, addr, name string, extra ...string) string {
	t.Helper()
	out := s.postie(t, "", append([]string{"device", "add", addr, name}, extra...)...)
	m := regexp.MustCompile(`(?m)^    ([a-z2-7]{5}-[a-z2-7]{5}-[a-z2-7]{5}-[a-z2-7]{5})$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("device add printed no password:\n%s", out)
	}
	return m[1]
}

func subjects(msgs [][]byte) []string {
	var out []string
	re := regexp.MustCompile(`(?m)^Subject: (.*?)\r?$`)
	for _, m := range msgs {
		if s := re.FindSubmatch(m); s != nil {
			out = append(out, string(s[1]))
		}
	}
	sort.Strings(out)
	return out
}

// TestTwoDevicesWithRealClients gives one account two device passwords:
// fetchmail is the phone, mpop the laptop. Each deletes what it fetches,
// yet each gets every message exactly once; the spool lets a message go
// only when both have deleted it; a revoked device can no longer log in.
func TestTwoDevicesWithRealClients(t *testing.T) {
	for _, p := range []string{"swaks", "fetchmail", "mpop"} {
		testutil.Tool(t, p)
	}
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	phone := s.devicePassword(t, alice, "phone")
	laptop := s.devicePassword(t, alice, "laptop")
	laptopState := t.TempDir() // mpop keeps its UIDL file across runs

	for _, subj := range []string{"one", "two", "three"} {
		s.sendMail(t, alice, subj)
	}
	if got := subjects(fetchmail(t, s, alice, phone)); strings.Join(got, ",") != "one,three,two" {
		t.Fatalf("the phone got %v", got)
	}
	// The phone deleted them, but only from its own view.
	if got := subjects(mpopIn(t, s, laptopState, alice, laptop)); strings.Join(got, ",") != "one,three,two" {
		t.Fatalf("the laptop got %v", got)
	}
	// Both deleted: the spool is empty (the account password has not been
	// used, so it holds no claim).
	if out := s.postie(t, "", "user", "list"); !regexp.MustCompile(alice + `\s+0\s`).MatchString(out) {
		t.Fatalf("after both devices deleted, user list says:\n%s", out)
	}

	// New mail: each device gets only the new messages, once.
	s.sendMail(t, alice, "four")
	s.sendMail(t, alice, "five")
	if got := subjects(fetchmail(t, s, alice, phone)); strings.Join(got, ",") != "five,four" {
		t.Fatalf("the phone's second fetch got %v", got)
	}
	list := s.postie(t, "", "device", "list", alice)
	if !regexp.MustCompile(`(?m)^laptop\s.*\s2$`).MatchString(list) || !regexp.MustCompile(`(?m)^phone\s.*from 127\.0\.0\.1\s+0$`).MatchString(list) {
		t.Fatalf("device list (the laptop has 2 waiting, the phone 0):\n%s", list)
	}
	if got := subjects(mpopIn(t, s, laptopState, alice, laptop)); strings.Join(got, ",") != "five,four" {
		t.Fatalf("the laptop's second fetch got %v", got)
	}
	if got := subjects(fetchmail(t, s, alice, phone)); len(got) != 0 {
		t.Fatalf("the phone fetched %v again", got)
	}

	// A lost phone is revoked; the laptop and the account password go on.
	s.postie(t, "", "device", "del", alice, "phone")
	if !s.curlFails(alice, phone) {
		t.Fatal("the revoked phone can still log in")
	}
	s.sendMail(t, alice, "six")
	if got := subjects(mpopIn(t, s, laptopState, alice, laptop)); strings.Join(got, ",") != "six" {
		t.Fatalf("the laptop after the revocation got %v", got)
	}
	if out := s.curlPOP3(t, alice, password, ""); strings.TrimSpace(out) != "" {
		// The account password sees mail from before, minus what the
		// devices' deletions removed: all of it was removed.
		t.Fatalf("the account password's view: %q", out)
	}
}

// stored returns the number of messages in an account's mailbox, as "postie
// user list" shows it.
func (s *server) stored(t *testing.T, addr string) int {
	t.Helper()
	out := s.postie(t, "", "user", "list")
	m := regexp.MustCompile(regexp.QuoteMeta(addr) + `\s+(\d+)\s`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("user list has no %s:\n%s", addr, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestThreeDevicesOverSockets holds POP3 sessions of three devices of one
// account at once, over real TLS sockets against the real binary: the same
// device twice is [IN-USE], different devices are not; each deletes from its
// own view; a message leaves the spool exactly when the last device that
// wants it deletes it; the account password behaves as before.
func TestThreeDevicesOverSockets(t *testing.T) {
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	pw := map[string]string{}
	for _, d := range []string{"phone", "laptop", "tablet"} {
		pw[d] = s.devicePassword(t, alice, d)
	}
	s.sendMail(t, alice, "one")
	s.sendMail(t, alice, "two")

	// Concurrent logins of three devices; a second phone session is refused.
	sess := map[string]*pop3{}
	for _, d := range []string{"phone", "laptop", "tablet"} {
		sess[d] = dialPOP3(t, s)
		sess[d].login(alice, pw[d], "+OK")
	}
	again := dialPOP3(t, s)
	again.login(alice, pw["phone"], "-ERR [IN-USE]")
	// Same UIDLs everywhere.
	u := sess["phone"].uidls()
	for _, d := range []string{"laptop", "tablet"} {
		if got := sess[d].uidls(); fmt.Sprint(got) != fmt.Sprint(u) {
			t.Fatalf("%s sees UIDLs %v, the phone %v", d, got, u)
		}
	}
	// The phone deletes "one"; the laptop deletes both; the tablet nothing.
	sess["phone"].cmd("+OK", "DELE 1")
	sess["phone"].quit()
	sess["laptop"].cmd("+OK", "DELE 1")
	sess["laptop"].cmd("+OK", "DELE 2")
	sess["laptop"].quit()
	sess["tablet"].quit()
	if n := s.stored(t, alice); n != 2 {
		t.Fatalf("the tablet still wants both: %d stored, want 2", n)
	}
	views := map[string]int{}
	for _, d := range []string{"phone", "laptop", "tablet"} {
		p := dialPOP3(t, s)
		p.login(alice, pw[d], "+OK")
		views[d] = len(p.uidls())
		p.quit()
	}
	if views["phone"] != 1 || views["laptop"] != 0 || views["tablet"] != 2 {
		t.Fatalf("views after the deletions: %v", views)
	}
	// The tablet deletes "one": every device has now deleted it, so it
	// leaves the spool; "two" stays for the phone and the tablet.
	p := dialPOP3(t, s)
	p.login(alice, pw["tablet"], "+OK")
	if subj := p.subject(1); subj != "one" {
		t.Fatalf("the tablet's message 1 is %q", subj)
	}
	p.cmd("+OK", "DELE 1")
	p.quit()
	if n := s.stored(t, alice); n != 1 {
		t.Fatalf("after the last device deleted \"one\": %d stored, want 1", n)
	}
	// Revoking the phone and the tablet leaves nobody wanting "two" but...
	// the account password has never logged in, so it holds no claim.
	s.postie(t, "", "device", "del", alice, "phone")
	if n := s.stored(t, alice); n != 1 {
		t.Fatalf("the tablet still wants \"two\": %d stored, want 1", n)
	}
	s.postie(t, "", "device", "del", alice, "tablet")
	if n := s.stored(t, alice); n != 0 {
		t.Fatalf("after revoking every device that wanted it: %d stored, want 0", n)
	}
	// The account password alone: fetch and delete as ever.
	s.sendMail(t, alice, "three")
	p = dialPOP3(t, s)
	p.login(alice, password, "+OK")
	if subj := p.subject(1); subj != "three" {
		t.Fatalf("the account password's message 1 is %q", subj)
	}
	p.cmd("+OK", "DELE 1")
	p.quit()
	// The laptop (the one device left) was active and has not deleted
	// "three", so it stays until the laptop deletes it too.
	if n := s.stored(t, alice); n != 1 {
		t.Fatalf("the laptop still wants \"three\": %d stored, want 1", n)
	}
	p = dialPOP3(t, s)
	p.login(alice, pw["laptop"], "+OK")
	p.cmd("+OK", "DELE 1")
	p.quit()
	if n := s.stored(t, alice); n != 0 {
		t.Fatalf("after the account password and the laptop deleted it: %d stored", n)
	}
}

// TestDeviceAddAll: "postie device add ... -all" (the flag anywhere on the
// line) gives a device the mail already in the mailbox; without it, a new
// device sees only what arrives after it was added.
func TestDeviceAddAll(t *testing.T) {
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	s.sendMail(t, alice, "before")
	newOnly := s.devicePassword(t, alice, "phone")
	all := s.devicePassword(t, alice, "-all", "tablet")
	s.sendMail(t, alice, "after")
	if out := s.curlPOP3(t, alice, newOnly, ""); strings.Count(out, "\n") != 1 {
		t.Errorf("the device added without -all lists %q, want only the message after it", out)
	}
	if out := s.curlPOP3(t, alice, all, ""); strings.Count(out, "\n") != 2 {
		t.Errorf("the device added with -all lists %q, want both messages", out)
	}
	if list := s.postie(t, "", "device", "list", alice); !regexp.MustCompile(`(?m)^tablet\s.*\sall\s`).MatchString(list) {
		t.Errorf("device list does not show the tablet seeing all:\n%s", list)
	}
}
