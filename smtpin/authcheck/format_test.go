package authcheck

import (
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
)

func TestFormatResults(t *testing.T) {
	spf := SPF{Result: Pass, Property: "smtp.mailfrom", Value: "alice@sender.example", Domain: "sender.example"}
	sigs := []DKIM{{Result: Pass, Domain: "sender.example", Selector: "sel", B: "AbCd+/12"}, {Result: Fail, Domain: "other.example", Selector: "s2"}}
	dm := []DMARC{{Result: Pass, Domain: "sender.example", Policy: PolicyReject}}
	got := FormatResults("mx.example.test", spf, sigs, dm)
	want := "mx.example.test;\r\n" +
		"\tspf=pass smtp.mailfrom=alice@sender.example;\r\n" +
		"\tdkim=pass header.d=sender.example header.s=sel header.b=\"AbCd+/12\";\r\n" +
		"\tdkim=fail header.d=other.example header.s=s2;\r\n" +
		"\tdmarc=pass (p=reject) header.from=sender.example"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	id, results, err := authres.Parse(unfold(got))
	if err != nil || id != "mx.example.test" || len(results) != 4 {
		t.Fatalf("authres.Parse: %q %d results, %v", id, len(results), err)
	}
	if r, ok := results[1].(*authres.DKIMResult); !ok || r.Value != authres.ResultPass || r.Domain != "sender.example" {
		t.Errorf("dkim result parsed as %#v", results[1])
	}

	none := FormatResults("mx.example.test", SPF{Result: None, Property: "smtp.helo", Value: "client.example"}, nil, nil)
	if want := "mx.example.test;\r\n\tspf=none smtp.helo=client.example;\r\n\tdkim=none (no signatures);\r\n\tdmarc=permerror (no author domain)"; none != want {
		t.Errorf("got\n%s\nwant\n%s", none, want)
	}
}

// TestFormatResultsHostileValues: whatever a sender puts in its HELO name
// or addresses, the field stays one well-formed header field.
func TestFormatResultsHostileValues(t *testing.T) {
	for _, v := range []string{
		"a\r\nX-Injected: yes",
		"evil\"; dkim=pass",
		`back\slash`,
		"nul\x00byte",
		"bad utf8 \xff\xfe",
		"spaces and (comments)",
		"ünïcödé@例え.テスト",
	} {
		got := FormatResults("mx.example.test", SPF{Result: Fail, Property: "smtp.helo", Value: v}, nil, nil)
		if strings.ContainsAny(strings.ReplaceAll(got, "\r\n\t", ""), "\r\n\x00") {
			t.Errorf("value %q: field has a line break or NUL outside folding: %q", v, got)
		}
		_, results, err := authres.Parse(unfold(got))
		if err != nil {
			t.Errorf("value %q: %q does not parse: %v", v, got, err)
			continue
		}
		if len(results) != 3 {
			t.Errorf("value %q: %d results, want 3 (the value smuggled a result in?)", v, len(results))
		}
	}
}

func unfold(s string) string { return strings.ReplaceAll(s, "\r\n\t", " ") }

func FuzzFormatResults(f *testing.F) {
	f.Add("client.example", "sender.example", "sel")
	f.Add("a\r\nb", "x\"y", "\\")
	f.Fuzz(func(t *testing.T, helo, domain, sel string) {
		got := FormatResults("mx.example.test", SPF{Result: Pass, Property: "smtp.helo", Value: helo}, []DKIM{{Result: Pass, Domain: domain, Selector: sel}}, nil)
		if strings.ContainsAny(strings.ReplaceAll(got, "\r\n\t", ""), "\r\n") {
			t.Fatalf("line break outside folding: %q", got)
		}
		if _, results, err := authres.Parse(unfold(got)); err != nil || len(results) != 3 {
			t.Fatalf("%q: %d results, %v", got, len(results), err)
		}
	})
}
