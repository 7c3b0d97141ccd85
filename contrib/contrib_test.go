// Package contrib_test checks the files in contrib/ with the real tools that
// read them.
package contrib_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// verifyUnit runs systemd-analyze verify on a copy of a unit whose ExecStart
// binary is replaced by one that exists here, and returns what it printed.
// systemd-analyze exits 0 even for unknown keys and bad values, so any
// output is a finding.
func verifyUnit(t *testing.T, unit string) string {
	t.Helper()
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install the systemd package (.ci/run does)")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "postie.service")
	unit = strings.ReplaceAll(unit, "/usr/local/bin/postie", "/bin/true")
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "verify", p).CombinedOutput()
	if err != nil {
		return string(out) + "\n(exit: " + err.Error() + ")"
	}
	return string(out)
}

func TestSystemdUnitVerifies(t *testing.T) {
	b, err := os.ReadFile("postie.service")
	if err != nil {
		t.Fatal(err)
	}
	if out := verifyUnit(t, string(b)); strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify complains:\n%s", out)
	}
	// The unit has what the issue asks for.
	for _, want := range []string{"DynamicUser=yes", "StateDirectory=postie", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("postie.service lacks %s", want)
		}
	}
}

// TestSystemdVerifyCatchesMistakes proves the check above can fail.
func TestSystemdVerifyCatchesMistakes(t *testing.T) {
	out := verifyUnit(t, "[Service]\nExecStart=/usr/local/bin/postie serve\nProtectSystem=strictt\n")
	if !strings.Contains(out, "strictt") {
		t.Fatalf("a bad value went unnoticed: %q", out)
	}
}
