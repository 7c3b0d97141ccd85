package smtpin

import (
	"os"
	"strings"
	"testing"
)

// TestGoSMTPVersionReviewed fails loudly when go-smtp is upgraded: smtpin
// relies on a few things go-smtp does that its API does not promise, and
// docs/go-smtp.md lists them with the tests that cover each. Check them
// against the new version's changes, then update the "Reviewed against"
// line there.
func TestGoSMTPVersionReviewed(t *testing.T) {
	// The test binary carries no module versions; go.mod is the truth.
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, l := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "github.com/emersion/go-smtp" {
			version = f[1]
		}
	}
	if version == "" {
		t.Fatal("go.mod does not require github.com/emersion/go-smtp")
	}
	doc, err := os.ReadFile("../docs/go-smtp.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "Reviewed against: github.com/emersion/go-smtp " + version + "\n"
	if !strings.Contains(string(doc), want) {
		t.Fatalf("go-smtp is now %s, but docs/go-smtp.md was reviewed against another version: "+
			"check every entry there against the library's changes, run the tests it names, then update its \"Reviewed against\" line", version)
	}
}
