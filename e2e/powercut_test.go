package e2e

// Power cuts, simulated with crashfs: Postie's data directory is on a FUSE
// file system that forgets, at each cut, whatever was not fsynced (file data)
// or made durable by an fsync of its directory (names). kill -9 alone keeps
// the kernel's page cache and so cannot notice a missing fsync; this can.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
	"github.com/postie/postie/internal/testutil/crashfs"
	"go.etcd.io/bbolt"
)

const rcpt = "alice@" + domain

// cutServer is a postie whose data directory is on a crashfs.
type cutServer struct {
	dir, backing, mnt, config string
	smtp, pop3, pop3s         string
	fs                        *crashfs.FS
	proc                      *process
	reorder                   bool // the next mount's crashfs.Options.Reorder
}

// newCutServer writes a config with data_dir on a crashfs over a new backing
// directory and mounts it; tlsMode is "files" or "self-signed".
func newCutServer(t *testing.T, tlsMode string) *cutServer {
	t.Helper()
	dir := t.TempDir()
	s := &cutServer{dir: dir, backing: filepath.Join(dir, "disk"), mnt: filepath.Join(dir, "mnt")}
	os.Mkdir(s.backing, 0o755)
	os.Mkdir(s.mnt, 0o755)
	dns := testutil.NewDNSServer(t)
	s.smtp = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	s.pop3 = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	s.pop3s = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	tlsConf := `mode = "self-signed"`
	if tlsMode == "files" {
		ca := testutil.NewCA(t)
		cert := ca.IssueValid(t, time.Now().Add(90*24*time.Hour), hostname, "127.0.0.1")
		tlsDir := filepath.Join(dir, "tls")
		os.Mkdir(tlsDir, 0o700)
		certFile, keyFile := testutil.WriteFiles(t, tlsDir, cert)
		tlsConf = fmt.Sprintf("mode = \"files\"\ncert_file = %q\nkey_file = %q", certFile, keyFile)
	}
	cfg := fmt.Sprintf(`hostname = %q
domains = [%q]
data_dir = %q

[log]
level = "info"

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
%s
http_listen = ""
https_listen = ""
`, hostname, domain, filepath.Join(s.mnt, "data"), dns.Addr, s.smtp, s.pop3, s.pop3s, tlsConf)
	s.config = filepath.Join(dir, "postie.toml")
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.mount(t)
	t.Cleanup(func() {
		if s.proc != nil && !s.proc.exited() {
			s.proc.cmd.Process.Kill()
			<-s.proc.done
		}
		if s.fs != nil {
			s.fs.Cut()
		}
	})
	return s
}

func (s *cutServer) mount(t *testing.T) {
	t.Helper()
	// POSTIE_POWERCUT_IGNORE_FSYNC=1 shows the test fails when file fsyncs
	// make nothing durable (a lying disk, or a spool without fsync).
	f, err := crashfs.Mount(s.backing, s.mnt, crashfs.Options{Reorder: s.reorder, Seed: uint64(time.Now().UnixNano()),
		IgnoreFileSyncs: os.Getenv("POSTIE_POWERCUT_IGNORE_FSYNC") == "1"})
	if err != nil {
		t.Fatalf("crashfs (FUSE, needs root and /dev/fuse): %v", err)
	}
	s.fs = f
}

// start runs postie serve and waits for its ports.
func (s *cutServer) start(t *testing.T) {
	t.Helper()
	s.proc = start(t, s.dir, "serve", "-config", s.config)
	for _, a := range []string{s.smtp, s.pop3, s.pop3s} {
		waitPort(t, a, s.proc)
	}
}

// powerCut kills postie and cuts the power, then mounts a fresh crashfs over
// what the disk kept.
func (s *cutServer) powerCut(t *testing.T) crashfs.Stats {
	t.Helper()
	if s.proc != nil && !s.proc.exited() {
		s.proc.cmd.Process.Signal(syscall.SIGKILL)
		<-s.proc.done
	}
	st, err := s.fs.Cut()
	s.fs = nil
	if err != nil {
		t.Fatalf("cut: %v", err)
	}
	s.mount(t)
	return st
}

func (s *cutServer) postie(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	return run(t, s.dir, nil, strings.NewReader(stdin), postieBin, append(args, "-config", s.config)...)
}

// message is one message the test sent.
type message struct {
	token string
	data  []byte // as sent, CRLF line ends
}

func makeMessage(rnd *rand.Rand, token string) message {
	size := 200 + rnd.IntN(20<<10)
	if rnd.IntN(8) == 0 {
		size = 64<<10 + rnd.IntN(1<<20-64<<10)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: friend@elsewhere.test\r\nTo: %s\r\nSubject: power cut %s\r\nMessage-ID: <%s@elsewhere.test>\r\nX-Token: %s\r\n\r\n", rcpt, token, token, token)
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789 .,"
	line := make([]byte, 0, 80)
	for b.Len() < size {
		line = line[:0]
		for i := rnd.IntN(78); i >= 0; i-- {
			line = append(line, letters[rnd.IntN(len(letters))])
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return message{token: token, data: b.Bytes()}
}

// ledger is what the test was promised.
type ledger struct {
	mu        sync.Mutex
	sent      map[string]message // every message whose DATA started
	acked     map[string]bool    // got 250
	delTried  map[string]bool    // DELE in a session whose QUIT was sent
	delAcked  map[string]bool    // and got +OK
	nextToken int
	delErr    error // why the deleter stopped last
}

func newLedger() *ledger {
	return &ledger{sent: map[string]message{}, acked: map[string]bool{}, delTried: map[string]bool{}, delAcked: map[string]bool{}}
}

// sender delivers messages over one SMTP connection until stop is closed or
// the connection fails.
func (l *ledger) sender(addr string, seed uint64, stop <-chan struct{}) {
	rnd := rand.New(rand.NewPCG(seed, 1))
	c, err := smtp.Dial(addr)
	if err != nil {
		return
	}
	defer c.Close()
	if c.Hello("client.elsewhere.test") != nil {
		return
	}
	for {
		select {
		case <-stop:
			c.Quit()
			return
		default:
		}
		l.mu.Lock()
		l.nextToken++
		token := fmt.Sprintf("t%d-%d", seed, l.nextToken)
		l.mu.Unlock()
		m := makeMessage(rnd, token)
		if c.Mail("friend@elsewhere.test") != nil || c.Rcpt(rcpt) != nil {
			return
		}
		w, err := c.Data()
		if err != nil {
			return
		}
		l.mu.Lock()
		l.sent[token] = m
		l.mu.Unlock()
		if _, err := w.Write(m.data); err != nil {
			return
		}
		if err := w.Close(); err != nil { // the reply to the final dot
			return
		}
		l.mu.Lock()
		l.acked[token] = true
		l.mu.Unlock()
	}
}

// pop3Session is a plain POP3 session (loopback may log in without TLS).
type pop3Session struct {
	r *bufio.Reader
	w net.Conn
}

func dialPlainPOP3(addr string) (*pop3Session, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	p := &pop3Session{r: bufio.NewReader(c), w: c}
	if _, err := p.reply(); err != nil {
		c.Close()
		return nil, err
	}
	return p, nil
}

func (p *pop3Session) reply() (string, error) {
	l, err := p.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	l = strings.TrimRight(l, "\r\n")
	if !strings.HasPrefix(l, "+OK") {
		return l, fmt.Errorf("POP3: %s", l)
	}
	return l, nil
}

func (p *pop3Session) cmd(format string, args ...any) (string, error) {
	if _, err := fmt.Fprintf(p.w, format+"\r\n", args...); err != nil {
		return "", err
	}
	return p.reply()
}

// multi reads a multi-line body, dot-unstuffed, CRLFs kept.
func (p *pop3Session) multi() ([]byte, error) {
	var b bytes.Buffer
	for {
		l, err := p.r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return nil, err
		}
		if bytes.Equal(l, []byte(".\r\n")) {
			return b.Bytes(), nil
		}
		if l[0] == '.' {
			l = l[1:]
		}
		b.Write(l)
		for err == bufio.ErrBufferFull {
			l, err = p.r.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return nil, err
			}
			b.Write(l)
		}
	}
}

func (p *pop3Session) login() error {
	if _, err := p.cmd("USER %s", rcpt); err != nil {
		return err
	}
	_, err := p.cmd("PASS %s", password)
	return err
}

// list returns the message numbers in the mailbox.
func (p *pop3Session) list() ([]int, error) {
	if _, err := p.cmd("LIST"); err != nil {
		return nil, err
	}
	list, err := p.multi()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\r\n") {
		if l != "" {
			n, _ := strconv.Atoi(strings.Fields(l)[0])
			out = append(out, n)
		}
	}
	return out, nil
}

// token returns the X-Token of message n.
func (p *pop3Session) token(n int) (string, error) {
	if _, err := p.cmd("TOP %d 0", n); err != nil {
		return "", err
	}
	h, err := p.multi()
	if err != nil {
		return "", err
	}
	if i := bytes.Index(h, []byte("\r\nX-Token: ")); i >= 0 {
		return strings.Fields(string(h[i+len("\r\nX-Token: "):]))[0], nil
	}
	return "?", nil
}

// tokens lists the mailbox: message number -> X-Token.
func (p *pop3Session) tokens() (map[int]string, error) {
	nums, err := p.list()
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, n := range nums {
		if out[n], err = p.token(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// deleter deletes a few messages per session and QUITs, until stop.
func (l *ledger) deleter(addr string, seed uint64, stop <-chan struct{}) {
	err := l.deleteLoop(addr, seed, stop)
	l.mu.Lock()
	l.delErr = err
	l.mu.Unlock()
}

func (l *ledger) deleteLoop(addr string, seed uint64, stop <-chan struct{}) error {
	rnd := rand.New(rand.NewPCG(seed, 2))
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(time.Duration(rnd.IntN(150)) * time.Millisecond):
		}
		p, err := dialPlainPOP3(addr)
		if err != nil {
			return err
		}
		if err := p.login(); err != nil {
			p.w.Close()
			return err
		}
		nums, err := p.list()
		if err != nil {
			p.w.Close()
			return err
		}
		// A few messages, more as the mailbox grows, so it stays small.
		rnd.Shuffle(len(nums), func(i, j int) { nums[i], nums[j] = nums[j], nums[i] })
		nums = nums[:min(len(nums), 3+len(nums)/3, 30)]
		var dele []string
		for _, n := range nums {
			tok, err := p.token(n)
			if err == nil {
				_, err = p.cmd("DELE %d", n)
			}
			if err != nil {
				p.w.Close()
				return err
			}
			dele = append(dele, tok)
		}
		l.mu.Lock()
		for _, tok := range dele {
			l.delTried[tok] = true
		}
		l.mu.Unlock()
		_, err = p.cmd("QUIT")
		p.w.Close()
		if err != nil {
			return err
		}
		l.mu.Lock()
		for _, tok := range dele {
			l.delAcked[tok] = true
		}
		l.mu.Unlock()
	}
}

// check compares the mailbox with the promises: every acknowledged message
// not deleted by an acknowledged QUIT is there byte for byte, no
// acknowledged deletion is undone, nothing unknown or twice. It returns the
// number of messages found.
func (l *ledger) check(t *testing.T, addr string) (present, lost int) {
	t.Helper()
	p, err := dialPlainPOP3(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.w.Close()
	if err := p.login(); err != nil {
		t.Fatal(err)
	}
	toks, err := p.tokens()
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]bool{}
	for n, tok := range toks {
		m, ok := l.sent[tok]
		switch {
		case !ok:
			t.Errorf("message %d (token %s) was never sent", n, tok)
			continue
		case seen[tok]:
			t.Errorf("message %s is there twice", tok)
		case l.delAcked[tok]:
			t.Errorf("message %s is back although a QUIT that deleted it got +OK", tok)
		}
		seen[tok] = true
		if _, err := p.cmd("RETR %d", n); err != nil {
			t.Fatal(err)
		}
		got, err := p.multi()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(got, m.data) {
			t.Errorf("message %s (%d bytes sent) comes back different (%d bytes)", tok, len(m.data), len(got))
		}
	}
	for tok := range l.acked {
		if !seen[tok] && !l.delTried[tok] {
			t.Errorf("message %s got 250 and is gone", tok)
			lost++
		}
	}
	p.cmd("QUIT")
	// What is gone for good needs no more checking.
	for tok := range l.sent {
		if !seen[tok] {
			delete(l.sent, tok)
			delete(l.acked, tok)
		}
	}
	return len(toks), lost
}

// TestPowerCut delivers over SMTP and deletes over POP3 at once, cuts the
// power at random moments and checks every promise after each cut.
// POSTIE_POWERCUTS sets the number of cuts (20 by default).
func TestPowerCut(t *testing.T) {
	cuts := 20
	if v := os.Getenv("POSTIE_POWERCUTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("POSTIE_POWERCUTS=%q", v)
		}
		cuts = n
	}
	begin := time.Now()
	s := newCutServer(t, "files")
	// The account and the spool, made before the first cut and synced: the
	// first start on its own is TestPowerCutFirstStart.
	s.postie(t, password+"\n", "user", "add", rcpt)
	if err := s.fs.Sync(); err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	l := newLedger()
	var totalAcked, totalDelAcked, totalLost, pages int
	s.start(t)
	for i := 0; i < cuts; i++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		ackedBefore, delBefore := len(l.acked), len(l.delAcked)
		for j := 0; j < 3; j++ {
			wg.Add(1)
			go func(seed uint64) { defer wg.Done(); l.sender(s.smtp, seed, stop) }(rnd.Uint64())
		}
		wg.Add(1)
		go func(seed uint64) { defer wg.Done(); l.deleter(s.pop3, seed, stop) }(rnd.Uint64())
		time.Sleep(time.Duration(300+rnd.IntN(1200)) * time.Millisecond)
		// The crashfs mounted after this cut, and so the next cut, keeps a
		// random part of the unsynced pages every other time.
		s.reorder = i%2 == 0
		st := s.powerCut(t)
		close(stop)
		wg.Wait()
		pages += st.PagesDropped + st.PagesKept
		l.mu.Lock()
		totalAcked += len(l.acked) - ackedBefore
		totalDelAcked += len(l.delAcked) - delBefore
		l.mu.Unlock()

		out := s.postie(t, "", "verify")
		if !strings.Contains(out, "no problems found") {
			t.Fatalf("cut %d: postie verify: %s", i+1, out)
		}
		s.start(t)
		present, lost := l.check(t, s.pop3)
		totalLost += lost
		if t.Failed() {
			t.Fatalf("cut %d of %d failed (seed %d)", i+1, cuts, seed)
		}
		t.Logf("cut %d: %d in the mailbox, %d messages and %d deletions acknowledged so far, unsynced pages at the cut %d (%d of them kept); the deleter stopped on: %v",
			i+1, present, totalAcked, totalDelAcked, st.PagesDropped+st.PagesKept, st.PagesKept, l.delErr)
	}
	t.Logf("%d power cuts in %v: %d messages acknowledged (250), %d deletions acknowledged (QUIT +OK), %d lost; %d unsynced pages at the cuts",
		cuts, time.Since(begin).Round(time.Second), totalAcked, totalDelAcked, totalLost, pages)
	if totalAcked == 0 {
		t.Fatal("no message was acknowledged: the test tested nothing")
	}
}

// TestPowerCutFirstStart: the first start creates the data directory and
// the spool; a cut after it must leave a Postie that starts, with the mail it
// acknowledged.
func TestPowerCutFirstStart(t *testing.T) {
	s := newCutServer(t, "files")
	s.start(t)
	s.postie(t, password+"\n", "user", "add", rcpt)
	l := newLedger()
	stop := make(chan struct{})
	go func() { time.Sleep(300 * time.Millisecond); close(stop) }()
	l.sender(s.smtp, 1, stop)
	if len(l.acked) == 0 {
		t.Fatal("nothing delivered")
	}
	s.powerCut(t)
	if out := s.postie(t, "", "verify"); !strings.Contains(out, "no problems found") {
		t.Fatalf("postie verify after the cut: %s", out)
	}
	s.start(t) // the promise the issue asks for: Postie starts again
	// The stronger one: the account and the acknowledged message are there.
	if _, err := os.Stat(filepath.Join(s.backing, "data", "spool.db")); err != nil {
		t.Errorf("the first start's spool did not survive the cut (%v): the data directory and spool.db must be durable by name (their directories fsynced)", err)
		return
	}
	p, err := dialPlainPOP3(s.pop3)
	if err != nil {
		t.Fatal(err)
	}
	defer p.w.Close()
	if err := p.login(); err != nil {
		t.Errorf("the account added after the first start is gone after the cut: %v", err)
		return
	}
	p.w.Close()
	if _, lost := l.check(t, s.pop3); lost > 0 {
		t.Errorf("a message acknowledged after the first start is gone after the cut")
	}
}

// TestPowerCutSelfSigned: a self-signed certificate made at start, then a
// cut: Postie starts again and serves TLS.
func TestPowerCutSelfSigned(t *testing.T) {
	s := newCutServer(t, "self-signed")
	s.postie(t, password+"\n", "user", "add", rcpt) // the data directory, before the cut
	if err := s.fs.Sync(); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	s.proc.waitLog(t, "made a self-signed certificate")
	fp1 := tlsFingerprint(t, s.pop3s)
	s.powerCut(t)
	s.start(t)
	fp2 := tlsFingerprint(t, s.pop3s) // serves TLS
	_, dirErr := os.Stat(filepath.Join(s.backing, "data", "self-signed"))
	if fp1 != fp2 && dirErr != nil {
		t.Errorf("the self-signed certificate was made again after the cut (clients told to trust it no longer do): DATA_DIR/self-signed must be durable by name")
	} else if fp1 != fp2 {
		t.Errorf("the self-signed certificate was made again after the cut, its directory being there")
	}
	key := filepath.Join(s.backing, "data", "self-signed", "key.pem")
	if st, err := os.Stat(key); err == nil && st.Mode().Perm() != 0o600 {
		t.Errorf("the key survived with mode %v", st.Mode().Perm())
	}
}

func tlsFingerprint(t *testing.T, addr string) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: hostname})
	if err != nil {
		t.Fatalf("TLS on %s after the cut: %v", addr, err)
	}
	defer c.Close()
	return fmt.Sprintf("%x", c.ConnectionState().PeerCertificates[0].Signature)
}

// TestPowerCutBackup: a backup postie backup reported as written is there
// after a cut.
func TestPowerCutBackup(t *testing.T) {
	s := newCutServer(t, "files")
	s.postie(t, password+"\n", "user", "add", rcpt)
	os.Mkdir(filepath.Join(s.mnt, "backups"), 0o700)
	if err := s.fs.Sync(); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	l := newLedger()
	stop := make(chan struct{})
	go func() { time.Sleep(500 * time.Millisecond); close(stop) }()
	l.sender(s.smtp, 1, stop)
	if len(l.acked) == 0 {
		t.Fatal("nothing delivered")
	}
	out := s.postie(t, "", "backup", filepath.Join(s.mnt, "backups", "spool.db"))
	if !strings.Contains(out, "verified") {
		t.Fatalf("postie backup: %s", out)
	}
	s.powerCut(t)
	backup := filepath.Join(s.backing, "backups", "spool.db")
	if _, err := os.Stat(backup); err != nil {
		t.Errorf("postie backup said %q, and after the cut the backup is gone (%v): the rename into place must be made durable (its directory fsynced) before the backup is reported written", strings.TrimSpace(out), err)
		return
	}
	db, err := bbolt.Open(backup, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("the backup does not open after the cut: %v", err)
	}
	defer db.Close()
	db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("backup after the cut: %v", err)
		}
		return nil
	})
}
