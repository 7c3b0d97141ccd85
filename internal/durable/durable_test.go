package durable

import (
	"os"
	"path/filepath"
	"testing"
)

// The power cut itself is simulated in e2e (TestPowerCutFirstStart,
// TestPowerCutBackup, TestPowerCutSelfSigned on crashfs); here, the
// plain behaviour.
func TestMkdirAll(t *testing.T) {
	base := t.TempDir()
	deep := filepath.Join(base, "a", "b", "c")
	if err := MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(deep)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("Stat(%s) = %v, %v", deep, st, err)
	}
	// Again: nothing to create, no error.
	if err := MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(filepath.Join(base, "missing")); err == nil {
		t.Error("SyncDir of a missing directory succeeded")
	}
	f := filepath.Join(deep, "x")
	os.WriteFile(f, nil, 0o600)
	if err := Created(f); err != nil {
		t.Fatal(err)
	}
}
