package confkit

import (
	"slices"
	"strings"
	"testing"
	"time"
)

type dur struct{ d time.Duration } // a leaf value type without TOML keys

type inner struct {
	Timeout dur    `toml:"timeout"`
	Max     int    `toml:"max"`
	Skip    string `toml:"-"`
}

type table struct {
	Listen  []string          `toml:"listen"`
	Limit   int               `toml:"limit"`
	Aliases map[string]string `toml:"aliases"`
	Checks  inner             `toml:"checks"`
	Copied  string            `toml:"-"`
	Untag   int
}

func TestChanged(t *testing.T) {
	a := table{Listen: []string{":25"}, Limit: 1, Aliases: map[string]string{"a": "b"}, Checks: inner{Timeout: dur{time.Second}}}
	for _, tc := range []struct {
		name   string
		change func(*table)
		want   []string
	}{
		{"nothing", func(*table) {}, nil},
		{"slice", func(b *table) { b.Listen = []string{":2525"} }, []string{"smtp.listen"}},
		{"same slice, new backing array", func(b *table) { b.Listen = []string{":25"} }, nil},
		{"map", func(b *table) { b.Aliases = map[string]string{"a": "c"} }, []string{"smtp.aliases"}},
		{"nested leaf", func(b *table) { b.Checks.Timeout = dur{time.Minute} }, []string{"smtp.checks.timeout"}},
		{"two keys", func(b *table) { b.Limit = 2; b.Checks.Max = 3 }, []string{"smtp.limit", "smtp.checks.max"}},
		{"untagged and dash ignored", func(b *table) { b.Copied = "x"; b.Untag = 9; b.Checks.Skip = "y" }, nil},
	} {
		b := a
		b.Listen = slices.Clone(a.Listen)
		tc.change(&b)
		if got := Changed("smtp", a, b); !slices.Equal(got, tc.want) {
			t.Errorf("%s: Changed = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := Changed("", a, table{}); !slices.Contains(got, "listen") {
		t.Errorf("top level: %v, want keys without a prefix", got)
	}
}

func TestReport(t *testing.T) {
	smtp := NewReport([]string{"smtp.listen", "smtp.max_errors", "smtp.checks.timeout"}, "smtp.listen")
	tls := NewReport([]string{"tls.mode", "tls.acme.email"}, "tls")
	r := Merge(smtp, tls, NewReport(nil))
	if want := []string{"smtp.checks.timeout", "smtp.listen", "smtp.max_errors", "tls.acme.email", "tls.mode"}; !slices.Equal(r.Changed, want) {
		t.Errorf("Changed = %v", r.Changed)
	}
	if want := []string{"smtp.listen", "tls.acme.email", "tls.mode"}; !slices.Equal(r.Restart, want) {
		t.Errorf("Restart = %v", r.Restart)
	}
	if want := []string{"smtp.checks.timeout", "smtp.max_errors"}; !slices.Equal(r.Applied(), want) {
		t.Errorf("Applied = %v", r.Applied())
	}
}

func TestProblems(t *testing.T) {
	p := Check("smtp")
	p.AtLeast("max_recipients", 5, 100, "")
	p.AtLeast("fine", 100, 100, "")
	p.AtMost("max_line_length", 2<<20, 1<<20, " bytes")
	p.Positive("read_timeout", 0)
	p.Positive("ok", time.Second)
	p.Addf("listen", "%q: want host:port", "x")
	err := p.Err()
	if err == nil {
		t.Fatal("no problems reported")
	}
	for _, want := range []string{
		"smtp.max_recipients: 5 is too small: at least 100",
		"smtp.max_line_length: 2097152 is too large: at most 1048576 bytes",
		"smtp.read_timeout: must be more than 0",
		`smtp.listen: "x": want host:port`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "fine") || strings.Contains(err.Error(), "smtp.ok") {
		t.Errorf("a valid key was reported:\n%v", err)
	}
	if Check("").Err() != nil {
		t.Error("no problems should be nil")
	}
	top := Check("")
	top.Addf("hostname", "missing")
	if top.Err().Error() != "hostname: missing" {
		t.Errorf("top-level key: %v", top.Err())
	}
}
