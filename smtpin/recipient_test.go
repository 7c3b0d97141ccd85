package smtpin

import (
	"slices"
	"strings"
	"testing"

	"github.com/postie/postie/spool"
)

// accountList is an accountBook over a list of addresses.
type accountList []string

func (l accountList) HasAccount(a string) (bool, error) { return slices.Contains(l, a), nil }
func (l accountList) Accounts() ([]spool.AccountInfo, error) {
	sorted := slices.Sorted(slices.Values(l))
	out := make([]spool.AccountInfo, len(sorted))
	for i, a := range sorted {
		out[i].Address = a
	}
	return out, nil
}

func testRouter(t *testing.T) (*router, accountBook) {
	t.Helper()
	cfg := testConfig()
	cfg.Domains = append(cfg.Domains, "bücher.example")
	cfg.PlusSeparator = "+-"
	cfg.Aliases["Sales@Example.TEST"] = []string{"Bob@example.test"}
	cfg.Aliases["info@bücher.example"] = []string{alice}
	r, err := newRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, accountList{bob, alice, "carol@bücher.example"}
}

func TestResolve(t *testing.T) {
	r, has := testRouter(t)
	for _, tc := range []struct {
		rcpt  string
		utf8  bool
		want  []string
		reply *string
	}{
		{rcpt: "alice@example.test", want: []string{alice}},
		{rcpt: "ALICE@EXAMPLE.TEST", want: []string{alice}},
		{rcpt: "alice+tag@example.test", want: []string{alice}},
		{rcpt: "alice-tag@example.test", want: []string{alice}},
		{rcpt: "alice+a-b+c@example.test", want: []string{alice}},
		{rcpt: "team@example.test", want: []string{alice, bob}},
		{rcpt: "team+x@example.test", want: []string{alice, bob}},
		{rcpt: "sales@example.test", want: []string{bob}},
		{rcpt: "anyone@other.test", want: []string{bob}},
		{rcpt: "alice@other.test", want: []string{bob}},
		{rcpt: "carol@bücher.example", utf8: true, want: []string{"carol@bücher.example"}},
		{rcpt: "carol@xn--bcher-kva.example", want: []string{"carol@bücher.example"}},
		{rcpt: "info@xn--bcher-kva.example", want: []string{alice}},
		{rcpt: "nobody@example.test", reply: &errUnknownUser.Message},
		{rcpt: "+alice@example.test", reply: &errUnknownUser.Message},
		{rcpt: "ghost@example.test", reply: &errLocal.Message},
		{rcpt: "carol@bücher.example", utf8: false, reply: &errNeedUTF8.Message},
		{rcpt: "x@foreign.example", reply: &errRelayDenied.Message},
		{rcpt: "x%foreign.example@example.test", reply: &errRelayDenied.Message},
		{rcpt: "foreign.example!x@example.test", reply: &errRelayDenied.Message},
		{rcpt: "x@foreign.example@example.test", reply: &errRelayDenied.Message},
		{rcpt: "alice@[127.0.0.1]", reply: &errRelayDenied.Message},
		{rcpt: "alice@example.test.", reply: &errRelayDenied.Message},
		{rcpt: "alice@sub.example.test", reply: &errRelayDenied.Message},
		{rcpt: "al ice@example.test", reply: &errBadRecipient.Message},
		{rcpt: "al\x00ice@example.test", reply: &errBadRecipient.Message},
		{rcpt: "\"alice\"@example.test", reply: &errBadRecipient.Message},
		{rcpt: strings.Repeat("a", 65) + "@example.test", reply: &errBadRecipient.Message},
		{rcpt: "@example.test", reply: &errBadRecipient.Message},
		{rcpt: "alice@", reply: &errBadRecipient.Message},
		{rcpt: "alice", reply: &errBadRecipient.Message},
		{rcpt: "bad\xffutf8@example.test", utf8: true, reply: &errBadRecipient.Message},
		// RFC 5321 §4.5.1: postmaster is always accepted. An alias wins;
		// else the first account (no postmaster key in this config).
		{rcpt: "postmaster@example.test", want: []string{alice}},
		{rcpt: "PostMaster@Example.Test", want: []string{alice}},
		{rcpt: "postmaster@other.test", want: []string{alice}},
		{rcpt: "postmaster@xn--bcher-kva.example", want: []string{alice}},
		{rcpt: "Postmaster", want: []string{alice}},
		{rcpt: "postmaster+x@xn--bcher-kva.example", reply: &errUnknownUser.Message},
	} {
		rt, refusal, _ := r.resolve(tc.rcpt, tc.utf8, has)
		switch {
		case tc.reply != nil:
			if refusal == nil || refusal.Message != *tc.reply {
				t.Errorf("resolve(%q): %v %v, want refusal %q", tc.rcpt, rt.accounts, refusal, *tc.reply)
			}
		case refusal != nil:
			t.Errorf("resolve(%q): refused %v, want %v", tc.rcpt, refusal, tc.want)
		case !slices.Equal(rt.accounts, tc.want):
			t.Errorf("resolve(%q) = %v, want %v", tc.rcpt, rt.accounts, tc.want)
		}
	}
}

// TestPostmasterAccount: the postmaster key names the account; without it,
// the first account in address order; with no account, a temporary error.
func TestPostmasterAccount(t *testing.T) {
	cfg := testConfig()
	delete(cfg.Aliases, "postmaster@example.test")
	cfg.Postmaster = "Bob@Example.Test"
	r, err := newRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"postmaster@example.test", "postmaster@other.test", "POSTMASTER"} {
		if rt, refusal, err := r.resolve(rcpt, false, accountList{alice, bob}); refusal != nil || !slices.Equal(rt.accounts, []string{bob}) {
			t.Errorf("resolve(%q) = %v, %v, %v; want bob", rcpt, rt.accounts, refusal, err)
		}
	}
	// An account named postmaster@ wins over the key.
	if rt, _, _ := r.resolve("postmaster@example.test", false, accountList{alice, bob, "postmaster@example.test"}); !slices.Equal(rt.accounts, []string{"postmaster@example.test"}) {
		t.Errorf("an account postmaster@ got %v", rt.accounts)
	}
	// The key names an account that does not exist: 451, never 550.
	if _, refusal, err := r.resolve("postmaster@example.test", false, accountList{alice}); refusal != errLocal || err == nil {
		t.Errorf("postmaster without its account: %v %v, want errLocal", refusal, err)
	}
	cfg.Postmaster = ""
	if r, err = newRouter(cfg); err != nil {
		t.Fatal(err)
	}
	if rt, _, _ := r.resolve("postmaster@example.test", false, accountList{"zed@example.test", bob}); !slices.Equal(rt.accounts, []string{bob}) {
		t.Errorf("default postmaster = %v, want the first account in address order (bob)", rt.accounts)
	}
	if _, refusal, _ := r.resolve("postmaster@example.test", false, accountList{}); refusal != errLocal {
		t.Errorf("no account at all: %v, want errLocal", refusal)
	}
	cfg.Postmaster = "x@foreign.example"
	if _, err := newRouter(cfg); err == nil {
		t.Error("newRouter took a postmaster outside the domains")
	}
}

func TestRouterConfigErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Aliases = map[string][]string{"x@foreign.example": {alice}, "y@example.test": {"z@foreign.example"}}
	_, err := newRouter(cfg)
	if err == nil || !strings.Contains(err.Error(), `"x@foreign.example"`) || !strings.Contains(err.Error(), `"z@foreign.example"`) {
		t.Errorf("newRouter: %v", err)
	}
}

func TestCheckSender(t *testing.T) {
	for _, tc := range []struct {
		from string
		utf8 bool
		ok   bool
	}{
		{"", false, true},
		{"a@sender.example", false, true},
		{"a b@sender.example", false, true},
		{"jösé@sender.example", true, true},
		{"jösé@sender.example", false, false},
		{"a\x01@sender.example", false, false},
		{"a@", false, false},
		{"nodomain", false, false},
		{strings.Repeat("a", 400) + "@x.example", false, false},
	} {
		if got := checkSender(tc.from, tc.utf8) == nil; got != tc.ok {
			t.Errorf("checkSender(%q, %v) ok = %v, want %v", tc.from, tc.utf8, got, tc.ok)
		}
	}
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{"alice@example.test", "a+b@example.test", "x%y@example.test", "a@[1.2.3.4]", "\"a\"@b", "@", "a@b@c", "ü@bücher.example"} {
		f.Add(s, true)
	}
	cfg := testConfig()
	r, err := newRouter(cfg)
	if err != nil {
		f.Fatal(err)
	}
	has := accountList{alice, bob}
	f.Fuzz(func(t *testing.T, rcpt string, utf8 bool) {
		rt, refusal, err := r.resolve(rcpt, utf8, has)
		if refusal == nil && (err != nil || len(rt.accounts) == 0) {
			t.Fatalf("resolve(%q) accepted with no accounts (%v)", rcpt, err)
		}
		if refusal == nil && !strings.EqualFold(rcpt, "postmaster") {
			at := strings.LastIndexByte(rcpt, '@')
			if strings.ContainsAny(rcpt[:at], "@%!") {
				t.Fatalf("resolve(%q) accepted a routing local part", rcpt)
			}
		}
	})
}
