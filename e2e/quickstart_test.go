package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// readmeCommand returns the command README.md gives under a heading.
func readmeCommand(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), heading)
	if !ok {
		t.Fatalf("README.md has no %q section", heading)
	}
	// The first indented line of the section is the command.
	for _, line := range strings.Split(after, "\n") {
		if strings.HasPrefix(line, "    ") && strings.TrimSpace(line) != "" {
			return strings.TrimSpace(line)
		}
		if strings.HasPrefix(line, "## ") {
			break
		}
	}
	t.Fatalf("README.md's %q section shows no command", heading)
	return ""
}

// TestQuickStartAsTheREADMESays runs Postie the way README.md tells a
// newcomer (the binary stands in for "go run ."), then runs the swaks and
// curl commands it prints exactly as printed, and checks that the message
// sent with swaks comes back with curl.
func TestQuickStartAsTheREADMESays(t *testing.T) {
	cmd := readmeCommand(t, "## Try it in one command")
	if cmd != "go run . local" {
		t.Fatalf("README.md's quick start is %q; this test runs \"go run . local\"", cmd)
	}
	testutil.Tool(t, "swaks")
	testutil.Tool(t, "curl")
	dir := t.TempDir()
	p := start(t, dir, "local")
	waitPort(t, "127.0.0.1:2525", p)
	waitPort(t, "127.0.0.1:1995", p)
	p.waitLog(t, "listening")
	var banner string
	for i := 0; i < 100 && !strings.Contains(banner, "curl "); i++ {
		banner = p.printed()
		p.waitLog(t, "listening")
	}
	swaks := regexp.MustCompile(`(?m)^  (swaks .*)$`).FindStringSubmatch(banner)
	curl := regexp.MustCompile(`(?m)^  (curl .*)$`).FindStringSubmatch(banner)
	if swaks == nil || curl == nil {
		t.Fatalf("the banner shows no swaks and curl commands:\n%s", banner)
	}
	if !strings.Contains(banner, "you@localhost") || !strings.Contains(banner, filepath.Join(dir, "postie-local")) {
		t.Fatalf("the banner does not show the account and data directory:\n%s", banner)
	}
	out := run(t, dir, nil, nil, "bash", "-c", swaks[1])
	if !strings.Contains(out, "250 2.0.0") || !strings.Contains(out, "STARTTLS") {
		t.Fatalf("swaks as printed did not deliver over STARTTLS:\n%s", out)
	}
	msg := run(t, dir, nil, nil, "bash", "-c", curl[1])
	for _, want := range []string{"Subject: hello", "From: friend@example.org", "Authentication-Results: localhost;", "with ESMTPS"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("curl as printed fetched no %q:\n%s", want, msg)
		}
	}
	// Ctrl-C ends it cleanly, and the spool it leaves verifies.
	if err := p.stop(t, syscall.SIGINT); err != nil {
		t.Fatalf("postie local did not exit cleanly on SIGINT: %v\n%s", err, p.logs())
	}
	if out := run(t, dir, nil, nil, postieBin, "verify", "-local"); !strings.Contains(out, "no problems found") {
		t.Fatalf("verify after local: %s", out)
	}
	// A second run keeps the account and the mail, and prints the same password.
	p2 := start(t, dir, "local")
	waitPort(t, "127.0.0.1:1995", p2)
	p2.waitLog(t, "listening")
	msg2 := run(t, dir, nil, nil, "bash", "-c", curl[1])
	if !strings.Contains(msg2, "Subject: hello") {
		t.Fatalf("after a restart the message or the password is gone:\n%s", msg2)
	}
}
