package main

import (
	"bytes"
	"encoding"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
)

// TestExampleConfigIsTheDefaults loads config.example.toml and checks that
// every value it shows is the real default: apart from the keys an owner
// must set (hostname, domains), loading it gives DefaultConfig.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	got, err := parseExample(t)
	if err != nil {
		t.Fatalf("config.example.toml: %v", err)
	}
	want := DefaultConfig()
	want.Hostname, want.Domains = got.Hostname, got.Domains
	want.Aliases = got.Aliases
	want.spread()
	// Compared as TOML, where an empty list and no list read the same.
	var g, w bytes.Buffer
	toml.NewEncoder(&g).Encode(got)
	toml.NewEncoder(&w).Encode(want)
	if g.String() != w.String() {
		t.Fatalf("config.example.toml does not show the defaults.\nexample:\n%s\ndefaults:\n%s", g.String(), w.String())
	}
}

func parseExample(t *testing.T) (Config, error) {
	t.Helper()
	b, err := os.ReadFile("config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	// The example leaves acme's agreement to the owner; agree here so that
	// it validates.
	b = bytes.Replace(b, []byte("agree_terms = false"), []byte("agree_terms = true"), 1)
	c, err := parseConfig("config.example.toml", bytes.NewReader(b))
	c.TLS.AgreeTerms = false
	return c, err
}

// textUnmarshaler is the interface of types written in TOML as one value
// (units.Duration, time.Time), not as a table.
var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// TestExampleConfigDocumentsEveryKey walks the config types by reflection
// and checks that every key appears in config.example.toml.
func TestExampleConfigDocumentsEveryKey(t *testing.T) {
	b, err := os.ReadFile("config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(typ reflect.Type, doc map[string]any, path string)
	walk = func(typ reflect.Type, doc map[string]any, path string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			key := strings.Split(f.Tag.Get("toml"), ",")[0]
			if key == "" || key == "-" || !f.IsExported() {
				continue
			}
			v, ok := doc[key]
			if !ok {
				t.Errorf("config.example.toml lacks %s%s", path, key)
				continue
			}
			if f.Type.Kind() == reflect.Struct && !reflect.PointerTo(f.Type).Implements(textUnmarshaler) {
				sub, ok := v.(map[string]any)
				if !ok {
					t.Errorf("%s%s should be a table", path, key)
					continue
				}
				walk(f.Type, sub, path+key+".")
			}
		}
	}
	walk(reflect.TypeOf(Config{}), doc, "")
}

// TestBadConfigs loads each testdata/badconfig file and checks that it is
// refused with the error its "# want:" line describes (a regexp).
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/badconfig/*.toml")
	if len(files) == 0 {
		t.Fatal("no bad configs found")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, _ := os.ReadFile(f)
			first, _, _ := strings.Cut(string(b), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("%s has no \"# want:\" line", f)
			}
			_, err := LoadConfig(f)
			if err == nil {
				t.Fatalf("accepted; want an error matching %q", want)
			}
			if !regexp.MustCompile(want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, want)
			}
		})
	}
}

func TestLocalConfigIsValid(t *testing.T) {
	c, err := localConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Mode != "self-signed" || c.SMTP.Listen[0] != "127.0.0.1:2525" || c.POP3.ListenTLS[0] != "127.0.0.1:1995" {
		t.Fatalf("local config: %+v", c)
	}
}

// TestDomainsCompareAsDomainNames: the config compares domains as SMTP
// routing does (case, trailing dot, IDNA), so an alias written with the
// A-label of a domain configured with its U-label is accepted, the account
// is named under the configured spelling, and the same domain twice is
// caught.
func TestDomainsCompareAsDomainNames(t *testing.T) {
	c := DefaultConfig()
	c.Hostname, c.DataDir = "mail.example.com", t.TempDir()
	c.TLS.Mode = "self-signed"
	c.Domains = []string{"Bücher.example", "example.com"}
	c.Aliases = map[string][]string{"info@xn--bcher-kva.example.": {"Carol@XN--BCHER-KVA.example"}}
	c.spread()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for _, in := range []string{"Carol@XN--BCHER-KVA.example", "carol@bücher.example", "carol@Bücher.Example."} {
		if got, err := c.LocalAddress(in); err != nil || got != "carol@bücher.example" {
			t.Errorf("LocalAddress(%q) = %q, %v; want carol@bücher.example", in, got, err)
		}
	}
	if _, err := c.LocalAddress("carol@example.org"); err == nil {
		t.Error("LocalAddress took a foreign domain")
	}
	c.Domains = append(c.Domains, "xn--bcher-kva.example")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("the same domain in two spellings: %v", err)
	}
}
