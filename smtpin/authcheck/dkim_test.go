package authcheck

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/postie/postie/internal/testutil"
	"github.com/postie/postie/smtpin/internal/dkimtest"
)

const dkimMessage = "From: Alice <alice@sender.example>\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nHello Bob,\r\nthis is the body.\r\n"

// verifyStream feeds msg to a DKIMVerifier in small writes, as the SMTP
// session does, and returns the verdicts.
func verifyStream(t *testing.T, r Resolver, msg string, max int) []DKIM {
	t.Helper()
	hdr, _, _ := strings.Cut(msg, "\r\n\r\n")
	var sigs []string
	for _, line := range strings.Split(strings.NewReplacer("\r\n\t", "\t", "\r\n ", " ").Replace(hdr), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "DKIM-Signature") {
			sigs = append(sigs, v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v := NewDKIMVerifier(ctx, r, sigs, max)
	for len(msg) > 0 {
		n := min(7, len(msg))
		if _, err := io.WriteString(v, msg[:n]); err != nil {
			t.Fatal(err)
		}
		msg = msg[n:]
	}
	return v.Close()
}

func TestDKIM(t *testing.T) {
	d := testutil.NewDNSServer(t)
	rsaKey := dkimtest.NewRSA(t, "sender.example", "rsa1")
	edKey := dkimtest.NewEd25519(t, "sender.example", "ed1")
	otherKey := dkimtest.NewRSA(t, "sender.example", "wrong")
	unpublished := dkimtest.NewEd25519(t, "sender.example", "gone")
	tempKey := dkimtest.NewEd25519(t, "sender.example", "temp")
	d.Add(rsaKey.RecordName(), "TXT", rsaKey.Record(t))
	d.Add(edKey.RecordName(), "TXT", edKey.Record(t))
	// A record that does not match the key that signed.
	d.Add(otherKey.RecordName(), "TXT", edKey.Record(t))
	d.Fail(tempKey.RecordName(), dns.RcodeServerFailure)
	r := d.Resolver()

	flip := func(msg string) string { return strings.Replace(msg, "this is the body", "this is the bodY", 1) }

	for _, tc := range []struct {
		name string
		msg  string
		want []Result
	}{
		{"rsa pass", rsaKey.Sign(t, dkimMessage), []Result{Pass}},
		{"ed25519 pass", edKey.Sign(t, dkimMessage), []Result{Pass}},
		{"rsa: one body byte changed", flip(rsaKey.Sign(t, dkimMessage)), []Result{Fail}},
		{"ed25519: one body byte changed", flip(edKey.Sign(t, dkimMessage)), []Result{Fail}},
		{"signed header changed", strings.Replace(edKey.Sign(t, dkimMessage), "Subject: hello", "Subject: hellO", 1), []Result{Fail}},
		{"wrong key type in record", otherKey.Sign(t, dkimMessage), []Result{PermError}},
		{"no key record", unpublished.Sign(t, dkimMessage), []Result{PermError}},
		{"key lookup SERVFAIL", tempKey.Sign(t, dkimMessage), []Result{TempError}},
		{"two signatures", edKey.Sign(t, rsaKey.Sign(t, dkimMessage)), []Result{Pass, Pass}},
		{"two signatures, body changed", flip(edKey.Sign(t, rsaKey.Sign(t, dkimMessage))), []Result{Fail, Fail}},
		{"malformed signature", "DKIM-Signature: v=1; a=rsa-sha256; garbage\r\n" + dkimMessage, []Result{PermError}},
		{"no signature", dkimMessage, []Result{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := verifyStream(t, r, tc.msg, 5)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d verdicts %+v, want %v", len(got), got, tc.want)
			}
			for i := range got {
				if got[i].Result != tc.want[i] {
					t.Errorf("signature %d: %s (%v), want %s", i, got[i].Result, got[i].Err, tc.want[i])
				}
			}
		})
	}

	t.Run("verdict names the signature", func(t *testing.T) {
		got := verifyStream(t, r, edKey.Sign(t, dkimMessage), 5)
		if got[0].Domain != "sender.example" || got[0].Selector != "ed1" || len(got[0].B) != 8 {
			t.Errorf("got %+v, want domain sender.example, selector ed1 and 8 characters of b=", got[0])
		}
	})

	t.Run("signatures over the cap are not verified", func(t *testing.T) {
		msg := dkimMessage
		for range 4 {
			msg = edKey.Sign(t, msg)
		}
		before := d.Queries()
		got := verifyStream(t, r, msg, 2)
		if len(got) != 4 {
			t.Fatalf("got %d verdicts, want 4", len(got))
		}
		for i, v := range got {
			want := Pass
			if i >= 2 {
				want = PermError
			}
			if v.Result != want {
				t.Errorf("signature %d: %s, want %s", i, v.Result, want)
			}
		}
		if !errors.Is(got[3].Err, dkim.ErrTooManySignatures) {
			t.Errorf("signature 3: cause %v, want too many signatures", got[3].Err)
		}
		if q := d.Queries() - before; q > 2 {
			t.Errorf("%d key lookups for 2 verified signatures", q)
		}
	})
}
