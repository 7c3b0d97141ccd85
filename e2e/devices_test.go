package e2e

import (
	"regexp"
	"sort"
	"strings"
	"testing"
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
		tool(t, p)
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
