package e2e

import (
	"fmt"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// gtube is the GTUBE line every spam filter treats as spam.
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// rspamd is a real rspamd running for one test: the Debian package's
// configuration with a local directory of overrides in a temp dir, a proxy
// worker on a loopback port speaking milter and scanning itself, DNS
// pointed at the test's loopback server, no Redis, nothing that looks
// anything up elsewhere.
type rspamd struct {
	addr string
	cmd  *exec.Cmd
	out  *strings.Builder
}

func startRspamd(t testing.TB, dnsAddr string) *rspamd {
	t.Helper()
	bin := testutil.Tool(t, "rspamd")
	port := testutil.FreePort(t)
	dir := t.TempDir()
	local := filepath.Join(dir, "local")
	files := map[string]string{
		"local.d/options.inc": fmt.Sprintf(`dns { nameserver = ["%s"]; timeout = 1s; retransmits = 1; }
disable_monitoring = true;
`, dnsAddr),
		"local.d/worker-proxy.inc": fmt.Sprintf(`bind_socket = "127.0.0.1:%d";
milter = yes;
timeout = 60s;
count = 1;
upstream "local" { default = yes; self_scan = yes; }
`, port),
		"local.d/worker-normal.inc":     "enabled = false;\n",
		"local.d/worker-controller.inc": "enabled = false;\n",
		"local.d/worker-fuzzy.inc":      "enabled = false;\n",
		// These look up names with the system's resolver: off.
		"local.d/fuzzy_check.conf":   "enabled = false;\n",
		"local.d/rspamd_update.conf": "enabled = false;\n",
		"local.d/logging.inc":        "type = \"console\";\nlevel = \"warning\";\n",
		// The headers a mail app can filter on.
		"local.d/milter_headers.conf": "use = [\"x-spamd-result\", \"x-spam-status\", \"x-spam-level\"];\nskip_local = false;\nskip_authenticated = false;\n",
	}
	for name, body := range files {
		p := filepath.Join(local, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"db", "run", "log"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	args := []string{"-f", "-c", "/etc/rspamd/rspamd.conf",
		"--var", "LOCAL_CONFDIR=" + local, "--var", "DBDIR=" + filepath.Join(dir, "db"),
		"--var", "RUNDIR=" + filepath.Join(dir, "run"), "--var", "LOGDIR=" + filepath.Join(dir, "log")}
	// Unprivileged: as root, rspamd's workers run as the package's user.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("_rspamd")
		if err != nil {
			t.Fatalf("the rspamd package's user is missing: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, uid, gid) })
		args = append(args, "-u", "_rspamd", "-g", "_rspamd")
	}
	r := &rspamd{addr: fmt.Sprintf("127.0.0.1:%d", port), out: &strings.Builder{}}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	// A fresh machine compiles rspamd's regular expressions at the first
	// start, which takes a while.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("rspamd did not listen on %s:\n%s", r.addr, r.out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop ends rspamd and its workers.
func (r *rspamd) stop() {
	if r.cmd.Process != nil {
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		r.cmd.Wait()
	}
}

// swaksBody sends a message with the given body and returns swaks's
// transcript.
func (s *server) swaksBody(t *testing.T, to, subject, body string) string {
	t.Helper()
	out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "friend@elsewhere.test", "--to", to,
		"--header", "Subject: "+subject, "--body", body).CombinedOutput()
	return string(out)
}

// TestRspamdMilter: a real rspamd as Postie's milter. The GTUBE message is
// refused with rspamd's reason; a normal message is delivered byte for
// byte with the headers rspamd adds; with rspamd stopped, mail flows with
// on_failure = "accept" and is deferred with "tempfail".
func TestRspamdMilter(t *testing.T) {
	for _, p := range []string{"swaks", "curl", "rspamd"} {
		testutil.Tool(t, p)
	}
	dns := testutil.NewDNSServer(t)
	rs := startRspamd(t, dns.Addr)
	s := newServer(t, serverOptions{extra: fmt.Sprintf(`
[[smtp.milter]]
name = "rspamd"
address = "tcp:%s"
timeout = "60s"
`, rs.addr)})
	alice := "alice@" + domain
	s.addUser(t, alice)
	out := s.swaksBody(t, alice, "spam", "Buy now\n"+gtube+"\n")
	if !strings.Contains(out, "<** 5") || !strings.Contains(strings.ToLower(out), "gtube") {
		t.Fatalf("GTUBE was not refused with rspamd's reason:\n%s", out)
	}
	body := "Hello Alice,\n.a line with a dot\nsee you.\n"
	if out := s.swaksBody(t, alice, "ham", body); !strings.Contains(out, "250 2.0.0 Message stored") {
		t.Fatalf("a normal message was not accepted:\n%s", out)
	}
	got := s.curlPOP3(t, alice, password, "1")
	for _, want := range []string{"X-Spamd-Result: default: False", "X-Spam-Status: No", "Subject: ham", "\r\n\r\nHello Alice,\r\n.a line with a dot\r\nsee you.\r\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("the stored message lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, gtube) {
		t.Error("the GTUBE message was stored")
	}

	// rspamd stopped: mail flows, or is deferred.
	rs.stop()
	for _, tc := range []struct{ onFailure, want string }{{"accept", "250 2.0.0 Message stored"}, {"tempfail", "451 4.7.1"}} {
		s := newServer(t, serverOptions{extra: fmt.Sprintf("\n[[smtp.milter]]\nname = \"rspamd\"\naddress = \"tcp:%s\"\non_failure = %q\n", rs.addr, tc.onFailure)})
		s.addUser(t, "alice@"+domain)
		if out := s.swaksBody(t, "alice@"+domain, "while rspamd is down", "hello\n"); !strings.Contains(out, tc.want) {
			t.Errorf("on_failure = %s with rspamd down: want %q in\n%s", tc.onFailure, tc.want, out)
		}
		if !strings.Contains(s.proc.logs(), "content filter failed") {
			t.Errorf("on_failure = %s: no warning in the log", tc.onFailure)
		}
	}
}

// BenchmarkMilterDelivery measures what rspamd in the path costs: 1 KiB
// messages over 8 connections to the real binary, without a filter and
// with rspamd as its milter.
//
//	go test -run XXX -bench MilterDelivery -benchtime 2000x ./e2e/
func BenchmarkMilterDelivery(b *testing.B) {
	dns := testutil.NewDNSServer(b)
	rs := startRspamd(b, dns.Addr)
	body := strings.Repeat("Just a normal message about the weekend.\r\n", 24)
	for _, tc := range []struct{ name, extra string }{
		{"filter=none", ""},
		{"filter=rspamd", fmt.Sprintf("\n[[smtp.milter]]\nname = \"rspamd\"\naddress = \"tcp:%s\"\ntimeout = \"60s\"\n", rs.addr)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := newServer(b, serverOptions{extra: tc.extra, top: ""})
			s.addUser(b, "alice@"+domain)
			const conns = 8
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			b.ResetTimer()
			start := time.Now()
			for range conns {
				wg.Go(func() {
					c, err := smtp.Dial(s.smtp)
					if err != nil {
						errs <- err
						return
					}
					defer c.Quit()
					if err := c.Hello("bench.example"); err != nil {
						errs <- err
						return
					}
					for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
						if err := c.Mail("friend@elsewhere.test"); err != nil {
							errs <- err
							return
						}
						if err := c.Rcpt("alice@" + domain); err != nil {
							errs <- err
							return
						}
						w, err := c.Data()
						if err != nil {
							errs <- err
							return
						}
						fmt.Fprintf(w, "From: friend@elsewhere.test\r\nSubject: weekend %d\r\n\r\n%s", n, body)
						if err := w.Close(); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}
