package testutil

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tool returns the path of a program a test needs, failing the test (never
// skipping it) when the program is missing: CI installs every one
// (.ci/run), and a test that skips proves nothing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed; .ci/run installs it (the README lists the Debian packages): %v", name, err)
	}
	return p
}

// Run runs a program (found with Tool) in dir with env added to the
// environment and stdin (nil: none) as its input, under a time limit of two
// minutes, and returns its standard output. A failure fails the test with
// both outputs.
func Run(t testing.TB, dir string, env []string, stdin io.Reader, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Tool(t, name), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

// Port returns the port of a "host:port" address.
func Port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// ReadFiles returns the contents of every regular file under dir, in
// lexical order of their paths: the messages a client stored in a maildir
// or a directory of its own.
func ReadFiles(t testing.TB, dir string) [][]byte {
	t.Helper()
	var out [][]byte
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out = append(out, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
