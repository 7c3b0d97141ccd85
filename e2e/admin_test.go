package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postie/postie/internal/testutil"
)

// curlPOP3 runs curl against the server's POP3S port and returns stdout.
func (s *server) curlPOP3(t *testing.T, user, pass, path string, extra ...string) string {
	t.Helper()
	args := append([]string{"--silent", "--show-error", "--max-time", "30", "--cacert", s.caFile,
		"--user", user + ":" + pass, fmt.Sprintf("pop3s://127.0.0.1:%s/%s", testutil.Port(s.pop3s), path)}, extra...)
	return run(t, s.dir, nil, nil, "curl", args...)
}

// curlFails reports whether a curl POP3S login fails.
func (s *server) curlFails(user, pass string) bool {
	cmd := exec.Command("curl", "--silent", "--max-time", "30", "--cacert", s.caFile, "--user", user+":"+pass,
		fmt.Sprintf("pop3s://127.0.0.1:%s/", testutil.Port(s.pop3s)))
	return cmd.Run() != nil
}

// sendMail delivers a message through Postie's SMTP port with swaks.
func (s *server) sendMail(t *testing.T, to, subject string) {
	t.Helper()
	out := run(t, s.dir, nil, nil, "swaks", "--server", s.smtp, "--from", "friend@elsewhere.test", "--to", to, "--header", "Subject: "+subject)
	if !strings.Contains(out, "250 2.0.0") {
		t.Fatalf("swaks to %s: %s", to, out)
	}
}

// TestAdminCommandsWhileServing changes accounts through the running
// server and checks that each change takes effect at once, without a
// restart; then backup, export and restore from the command line.
func TestAdminCommandsWhileServing(t *testing.T) {
	testutil.Tool(t, "curl")
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{extra: "[spool]\nretention = \"1h\"\n"})
	alice := "alice@" + domain

	// user add: a login works at once.
	s.addUser(t, alice)
	s.sendMail(t, alice, "first")
	if out := s.curlPOP3(t, alice, password, "1"); !strings.Contains(out, "Subject: first") {
		t.Fatalf("new account cannot fetch: %s", out)
	}
	// Refusals: weak passwords (short, common, the address), a foreign
	// domain, a duplicate.
	for _, c := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"short\n", []string{"user", "add", "bob@" + domain}, "too weak"},
		{"password12\n", []string{"user", "add", "bob@" + domain}, "could be guessed"},
		{"aaaaaaaaaaaa\n", []string{"user", "add", "bob@" + domain}, "could be guessed"},
		{"bob@" + domain + "\n", []string{"user", "add", "bob@" + domain}, "the address itself"},
		{"0000000000\n", []string{"user", "passwd", alice}, "too weak"},
		{password + "\n", []string{"user", "add", "bob@elsewhere.test"}, "not in one of the configured domains"},
		{password + "\n", []string{"user", "add", alice}, "already exists"},
	} {
		cmd := exec.Command(postieBin, append(c.args, "-config", s.config)...)
		cmd.Stdin = strings.NewReader(c.stdin)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("postie %s: %v %s; want an error saying %q", strings.Join(c.args, " "), err, out, c.want)
		}
	}
	// user passwd: the old password stops working at once.
	s.postie(t, "a brand new password\n", "user", "passwd", alice)
	if !s.curlFails(alice, password) {
		t.Fatal("the old password still works after user passwd")
	}
	if out := s.curlPOP3(t, alice, "a brand new password", ""); !strings.HasPrefix(out, "1 ") {
		t.Fatalf("LIST with the new password: %q", out)
	}
	// user list shows the account and its mail.
	if out := s.postie(t, "", "user", "list"); !strings.Contains(out, alice) || !strings.Contains(out, "1 ") {
		t.Fatalf("user list: %s", out)
	}

	// backup while serving: a verified copy that opens as a spool.
	backup := filepath.Join(s.dir, "backup.db")
	if out := s.postie(t, "", "backup", backup); !strings.Contains(out, "verified") {
		t.Fatalf("backup: %s", out)
	}
	if out := run(t, s.dir, nil, nil, postieBin, "verify", "-config", s.config); !strings.Contains(out, "no problems") {
		t.Fatalf("verify while serving: %s", out)
	}

	// export: mbox on standard output.
	mbox := s.postie(t, "", "export", alice)
	if !strings.HasPrefix(mbox, "From friend@elsewhere.test ") || !strings.Contains(mbox, "Subject: first") || strings.Contains(mbox, "\r") {
		t.Fatalf("export: %q", mbox)
	}

	// restore: a deleted message comes back while retention keeps it.
	s.curlPOP3(t, alice, "a brand new password", "1", "--request", "DELE", "--head")
	if out := s.curlPOP3(t, alice, "a brand new password", ""); strings.TrimSpace(out) != "" {
		t.Fatalf("after DELE: %q", out)
	}
	if out := s.postie(t, "", "restore", alice); !strings.Contains(out, "1 message of ") {
		t.Fatalf("restore: %s", out)
	}
	if out := s.curlPOP3(t, alice, "a brand new password", "1"); !strings.Contains(out, "Subject: first") {
		t.Fatalf("restored message not served: %s", out)
	}

	// user del: the login fails at once.
	s.postie(t, "", "user", "del", alice)
	if !s.curlFails(alice, "a brand new password") {
		t.Fatal("a deleted account can still log in")
	}

	// A backup restored in place of the spool serves the old state.
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, s.proc.logs())
	}
	if err := os.Rename(backup, filepath.Join(s.dir, "data", "spool.db")); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	if out := s.curlPOP3(t, alice, "a brand new password", "1"); !strings.Contains(out, "Subject: first") {
		t.Fatalf("after restoring the backup: %s", out)
	}
}

// TestUserCommandsWithoutAServer uses the spool file directly.
func TestUserCommandsWithoutAServer(t *testing.T) {
	s := newServer(t, serverOptions{})
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out := s.postie(t, password+"\n", "user", "add", "carol@"+domain)
	if strings.Contains(out, "running server") {
		t.Fatalf("claims a running server: %s", out)
	}
	if out := s.postie(t, "", "user", "list"); !strings.Contains(out, "carol@"+domain) {
		t.Fatalf("user list: %s", out)
	}
	s.start(t)
	if out := s.curlPOP3(t, "carol@"+domain, password, ""); strings.TrimSpace(out) != "" {
		t.Fatalf("LIST: %q", out)
	}
}

// TestSecondServeFailsAtOnce starts a second server on the same data
// directory: it must fail fast with a clear message, not hang.
func TestSecondServeFailsAtOnce(t *testing.T) {
	s := newServer(t, serverOptions{})
	start := time.Now()
	cmd := exec.Command(postieBin, "serve", "-config", s.config)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("a second serve on the same data directory succeeded")
	}
	if !strings.Contains(string(out), "in use by another process") {
		t.Fatalf("unclear message: %s", out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the second serve took %v to give up", d)
	}
}

// TestSignals: SIGHUP reloads the aliases without a restart and says what
// needs one; SIGTERM stops cleanly.
func TestSignals(t *testing.T) {
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	s.addUser(t, "alice@"+domain)
	// No alias yet: unknown user.
	out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "a@elsewhere.test", "--to", "sales@"+domain).CombinedOutput()
	if !strings.Contains(string(out), "550 5.1.1") {
		t.Fatalf("before the alias: %s", out)
	}
	orig, _ := os.ReadFile(s.config)
	edit := func(maxRcpt int) {
		cfg := append(append([]byte(nil), orig...), []byte("\n[aliases]\n\"sales@example.test\" = [\"alice@example.test\"]\n")...)
		cfg = []byte(strings.Replace(string(cfg), "[smtp]\nlisten = [", fmt.Sprintf("[smtp]\nmax_recipients = %d\nlisten = [\"127.0.0.1:1\", ", maxRcpt), 1))
		os.WriteFile(s.config, cfg, 0o600)
		s.proc.cmd.Process.Signal(syscall.SIGHUP)
	}
	// A bad config is refused and the running one kept.
	edit(50)
	s.proc.waitLog(t, "reload failed; keeping the running config")
	if out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "a@elsewhere.test", "--to", "sales@"+domain).CombinedOutput(); !strings.Contains(string(out), "550 5.1.1") {
		t.Fatalf("a refused reload changed the aliases: %s", out)
	}
	// A good one applies what it can and names what needs a restart.
	edit(150)
	s.proc.waitLog(t, "need a restart")
	s.sendMail(t, "sales@"+domain, "via alias")
	if out := s.curlPOP3(t, "alice@"+domain, password, "1"); !strings.Contains(out, "Subject: via alias") {
		t.Fatalf("alias added by SIGHUP does not deliver: %s", out)
	}
	if !strings.Contains(s.proc.logs(), "smtp.listen") {
		t.Fatalf("the log does not say smtp.listen needs a restart:\n%s", s.proc.logs())
	}
	// One reload, one line: the parts report, main says it once.
	if n := strings.Count(s.proc.logs(), "need a restart"); n != 1 {
		t.Fatalf("the restart warning is logged %d times, want once:\n%s", n, s.proc.logs())
	}
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if !strings.Contains(s.proc.logs(), "stopped") {
		t.Fatalf("no clean stop in the log:\n%s", s.proc.logs())
	}
}

// TestSecondSignalStopsAtOnce: SIGTERM lets a transaction in flight finish
// (up to 30s); a second SIGTERM meanwhile ends the process at once, and
// the spool it leaves behind is whole.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	s := newServer(t, serverOptions{})
	s.addUser(t, "alice@"+domain)
	c, err := net.Dial("tcp", s.smtp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, cmd := range []string{"", "EHLO client.test", "MAIL FROM:<a@elsewhere.test>", "RCPT TO:<alice@" + domain + ">", "DATA"} {
		if cmd != "" {
			fmt.Fprintf(c, "%s\r\n", cmd)
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", cmd, err)
			}
			if len(line) < 4 || line[3] != '-' {
				break
			}
		}
	}
	io.WriteString(c, "Subject: in flight\r\n\r\nhalf a message\r\n")

	s.proc.cmd.Process.Signal(syscall.SIGTERM)
	s.proc.waitLog(t, "shutting down")
	if s.proc.exited() {
		t.Fatal("the first SIGTERM did not wait for the transaction in flight")
	}
	s.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.proc.done:
	case <-time.After(10 * time.Second):
		t.Fatal("a second SIGTERM did not stop the server at once")
	}
	if out, err := exec.Command(postieBin, "verify", "-config", s.config).CombinedOutput(); err != nil {
		t.Fatalf("verify after the second signal: %v\n%s", err, out)
	}
}

// TestServeRefusesADamagedSpool damages the spool behind the server's back
// and checks that serve refuses it with a clear message, and that verify
// names the problem.
func TestServeRefusesADamagedSpool(t *testing.T) {
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	s.addUser(t, "alice@"+domain)
	s.sendMail(t, "alice@"+domain, "soon damaged")
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(s.dir, "data", "spool.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte("chunks")).Cursor()
		k, _ := c.First()
		return tx.Bucket([]byte("chunks")).Delete(append([]byte(nil), k...))
	})
	db.Close()
	cmd := exec.Command(postieBin, "serve", "-config", s.config)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "fails verification") {
		t.Fatalf("serve on a damaged spool: %v\n%s", err, out)
	}
	cmd = exec.Command(postieBin, "verify", "-config", s.config)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "problem: message") {
		t.Fatalf("verify on a damaged spool: %v\n%s", err, out)
	}
}

// TestQuotaFromTheCommandLine sets an account's quota with "postie user
// quota" while the server runs: mail that would go over it gets a
// temporary 452 4.2.2 (the sender keeps it and retries), mail within it
// is delivered.
func TestQuotaFromTheCommandLine(t *testing.T) {
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	if out := s.postie(t, "", "user", "quota", alice, "4KiB"); !strings.Contains(out, "quota set to 4KiB") {
		t.Fatalf("user quota: %s", out)
	}
	s.sendMail(t, alice, "small")
	out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "a@elsewhere.test", "--to", alice,
		"--body", strings.Repeat("0123456789abcdef\n", 400)).CombinedOutput()
	if !strings.Contains(string(out), "452 4.2.2") {
		t.Fatalf("a message over the quota was not refused with 452 4.2.2:\n%s", out)
	}
	if list := s.postie(t, "", "user", "list"); !strings.Contains(list, "4.0 KiB") {
		t.Fatalf("user list does not show the quota:\n%s", list)
	}
	if n := s.stored(t, alice); n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
}

// TestServeChecksFileModes: a data directory others can write makes serve
// refuse to start, naming the chmod that fixes it; one others can read
// only gets a warning, in the log and in postie check.
func TestServeChecksFileModes(t *testing.T) {
	s := newServer(t, serverOptions{})
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(s.dir, "data")
	os.Chmod(data, 0o777)
	out, err := exec.Command(postieBin, "serve", "-config", s.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refusing to start") || !strings.Contains(string(out), "chmod 700 "+data) {
		t.Fatalf("serve with a world-writable data directory: %v\n%s", err, out)
	}
	os.Chmod(data, 0o755)
	s.start(t)
	s.proc.waitLog(t, "file permissions")
	if !strings.Contains(s.proc.logs(), "chmod 700 "+data) {
		t.Errorf("the warning does not say how to fix it:\n%s", s.proc.logs())
	}
	out, _ = exec.Command(postieBin, "check", "-config", s.config).CombinedOutput()
	if !strings.Contains(string(out), "File permissions:") || !strings.Contains(string(out), "chmod 700 "+data) {
		t.Errorf("postie check does not report the data directory:\n%s", out)
	}
}
