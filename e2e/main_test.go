// Package e2e runs the real postie binary with real third-party programs on
// both ends: swaks and Postfix sending, fetchmail, getmail6, mpop and curl
// fetching, over loopback, with a DNS server of the test's own. A missing
// program fails the test; CI installs them all (.ci/run).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// postieBin is the binary under test, built once by TestMain.
var postieBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postie-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	postieBin = filepath.Join(dir, "postie")
	args := []string{"build", "-o", postieBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "..")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building postie:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run is testutil.Run with the output as a string.
func run(t testing.TB, dir string, env []string, stdin io.Reader, name string, args ...string) string {
	t.Helper()
	return string(testutil.Run(t, dir, env, stdin, name, args...))
}

// waitPort waits until something accepts connections on addr.
func waitPort(t testing.TB, addr string, proc *process) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if proc != nil && proc.exited() {
			t.Fatalf("postie exited before listening on %s:\n%s", addr, proc.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}

// process is a running postie.
type process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer // stdout and stderr, interleaved
	done   chan struct{}
	err    error
	stdout *bytes.Buffer
}

// start runs postie with args in dir.
func start(t testing.TB, dir string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(postieBin, args...), done: make(chan struct{}), stdout: new(bytes.Buffer)}
	p.cmd.Dir = dir
	pr, pw := io.Pipe()
	p.cmd.Stdout = io.MultiWriter(pw, lockedWriter{p, p.stdout})
	p.cmd.Stderr = lockedWriter{p, &p.out}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(40 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("postie %s log:\n%s", strings.Join(args, " "), p.logs())
		}
	})
	return p
}

type lockedWriter struct {
	p *process
	b *bytes.Buffer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.b.Write(b)
}

func (p *process) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *process) printed() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the process to exit; it returns the exit error.
func (p *process) stop(t testing.TB, sig syscall.Signal) error {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.err
	case <-time.After(45 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("postie did not stop within 45s of %v:\n%s", sig, p.logs())
		return nil
	}
}

// waitLog waits until the log contains s.
func (p *process) waitLog(t testing.TB, s string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.logs(), s) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("log never said %q:\n%s", s, p.logs())
}

// server is a "postie serve" with a config of the test's own.
type server struct {
	dir, config       string
	smtp, pop3, pop3s string // host:port
	metrics           string
	ca                *testutil.CA
	caFile            string
	dns               *testutil.DNSServer
	proc              *process
}

// serverOptions adjust a test server's config.
type serverOptions struct {
	extra     string // more TOML, appended (tables only)
	top       string // more top-level TOML keys
	logFormat string // [log] format; "" means text
}

const (
	hostname = "mail.example.test"
	domain   = "example.test"
	password = "correct horse battery staple"
)

// newServer writes a config for dir and starts postie serve with it.
func newServer(t testing.TB, o serverOptions) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{dir: dir, ca: testutil.NewCA(t), dns: testutil.NewDNSServer(t)}
	cert := s.ca.IssueValid(t, time.Now().Add(90*24*time.Hour), hostname, "127.0.0.1")
	tlsDir := filepath.Join(dir, "tls")
	os.Mkdir(tlsDir, 0o700)
	certFile, keyFile := testutil.WriteFiles(t, tlsDir, cert)
	s.caFile = filepath.Join(dir, "ca.pem")
	os.WriteFile(s.caFile, s.ca.PEM, 0o644)
	s.smtp = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	s.pop3 = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	s.pop3s = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	s.metrics = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	logFormat := o.logFormat
	if logFormat == "" {
		logFormat = "text"
	}
	cfg := fmt.Sprintf(`hostname = %q
domains = [%q]
data_dir = %q
%s

[log]
level = "debug"
format = %q

[dns]
resolver = %q
timeout = "2s"

[smtp]
listen = [%q]

[pop3]
listen = [%q]
listen_tls = [%q]
auth_duration = "50ms"

[tls]
mode = "files"
cert_file = %q
key_file = %q
http_listen = ""
https_listen = ""

[metrics]
listen = %q
%s
`, hostname, domain, filepath.Join(dir, "data"), o.top, logFormat, s.dns.Addr, s.smtp, s.pop3, s.pop3s, certFile, keyFile, s.metrics, o.extra)
	s.config = filepath.Join(dir, "postie.toml")
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	return s
}

func (s *server) start(t testing.TB) {
	t.Helper()
	s.proc = start(t, s.dir, "serve", "-config", s.config)
	for _, a := range []string{s.smtp, s.pop3, s.pop3s, s.metrics} {
		waitPort(t, a, s.proc)
	}
}

// postie runs an admin command against the server's config.
func (s *server) postie(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	return run(t, s.dir, nil, strings.NewReader(stdin), postieBin, append(args, "-config", s.config)...)
}

// addUser creates an account through the running server.
func (s *server) addUser(t testing.TB, addr string) {
	t.Helper()
	out := s.postie(t, password+"\n", "user", "add", addr)
	if !strings.Contains(out, "the running server uses it now") {
		t.Fatalf("user add did not go through the running server: %s", out)
	}
}

// scrape returns the metrics as name{labels} -> value lines.
func (s *server) scrape(t testing.TB) map[string]string {
	t.Helper()
	out := run(t, s.dir, nil, nil, "curl", "--silent", "--show-error", "--max-time", "10", "http://"+s.metrics+"/metrics")
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			m[line[:i]] = line[i+1:]
		}
	}
	return m
}

// runErr runs a program and returns its error, for checks that expect a
// failure.
func runErr(dir, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("QUIT\r\n")
	return cmd.Run()
}
