package smtpin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/smtpin/internal/dkimtest"
)

// benchEnv is a server with the checks on against the loopback DNS server:
// sender.example has SPF, a DKIM key and a DMARC policy of reject, so
// every message costs an SPF lookup, a DKIM key lookup and verification,
// and a DMARC lookup, as mail from a careful sender does. Unless record
// is set, the log goes through slog's text handler at Info, as in
// production, to io.Discard. With dnsCache, the resolver keeps answers as
// "postie serve" does by default ([dns] cache_entries); without it, every
// lookup of every message goes to the DNS server.
func benchEnv(b testing.TB, record, dnsCache bool) (*env, *dkimtest.Key) {
	e := newEnv(b, func(c *Config, d *Deps) {
		c.MaxConnectionsPerIP = 64
		if !record {
			d.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
		if dnsCache {
			d.Resolver = resolver.Cache(d.Resolver.(*net.Resolver), 4096, time.Hour)
		}
	})
	key := benchKey(b)
	e.dns.Add(key.RecordName(), "TXT", key.Record(b))
	e.dns.Add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
	for i := 1; i <= 8; i++ {
		if err := e.store.AddAccount(context.Background(), fmt.Sprintf("bench%d@example.test", i), "correct horse battery"); err != nil {
			b.Fatal(err)
		}
	}
	return e, key
}

var (
	benchKeyOnce sync.Once
	benchKeyVal  *dkimtest.Key
	benchMsgMu   sync.Mutex
	benchMsgs    = map[int]string{}
)

// benchKey is the DKIM key of sender.example (selector bench) that every
// benchmark signs with; benchEnv publishes it. One key for the process,
// so a message is built and signed once per size (20 MiB takes a while)
// and BenchmarkDelivery and BenchmarkCeiling send the very same bytes.
func benchKey(b testing.TB) *dkimtest.Key {
	benchKeyOnce.Do(func() { benchKeyVal = dkimtest.NewRSA(b, "sender.example", "bench") })
	if benchKeyVal == nil {
		b.Fatal("no benchmark DKIM key")
	}
	return benchKeyVal
}

// benchMessageOf is benchMessage signed with benchKey, built once per size
// and kept for the rest of the process.
func benchMessageOf(b testing.TB, size int) string {
	benchMsgMu.Lock()
	defer benchMsgMu.Unlock()
	m, ok := benchMsgs[size]
	if !ok {
		m = benchMessage(b, benchKey(b), size)
		benchMsgs[size] = m
	}
	return m
}

// benchMessage returns a signed message of about size bytes, with lines
// of 76 characters.
func benchMessage(b testing.TB, key *dkimtest.Key, size int) string {
	var body strings.Builder
	line := strings.Repeat("abcdefghij", 7) + "012345\r\n"
	for body.Len() < size-200 {
		body.WriteString(line)
	}
	return key.Sign(b, "From: Bench <bench@sender.example>\r\nTo: bench@example.test\r\nSubject: benchmark\r\n\r\n"+body.String())
}

// benchClient is a pipelining SMTP client for benchmarks: MAIL, RCPT and
// DATA go in one write (RFC 2920), the message in the next.
type benchClient struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func dialBench(addr string) (*benchClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &benchClient{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriterSize(conn, 64<<10)}
	if _, err := c.expect("220"); err != nil {
		return nil, err
	}
	c.w.WriteString("EHLO bench.example\r\n")
	c.w.Flush()
	if _, err := c.expect("250"); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *benchClient) expect(code string) (string, error) {
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return l, err
		}
		if !strings.HasPrefix(l, code) {
			return l, fmt.Errorf("got %q, want %s", l, code)
		}
		if len(l) < 4 || l[3] != '-' {
			return l, nil
		}
	}
}

// send delivers one message; body is dot-stuffed already and ends in
// CRLF, or is written by fill.
func (c *benchClient) send(rcpt string, body string, fill func(io.Writer) error) error {
	fmt.Fprintf(c.w, "MAIL FROM:<bench@sender.example>\r\nRCPT TO:<%s>\r\nDATA\r\n", rcpt)
	if err := c.w.Flush(); err != nil {
		return err
	}
	for _, code := range []string{"250", "250", "354"} {
		if _, err := c.expect(code); err != nil {
			return err
		}
	}
	if fill != nil {
		if err := fill(c.w); err != nil {
			return err
		}
	} else {
		c.w.WriteString(body)
	}
	c.w.WriteString(".\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err := c.expect("250")
	return err
}

func (c *benchClient) close() {
	c.w.WriteString("QUIT\r\n")
	c.w.Flush()
	c.expect("221")
	c.conn.Close()
}

// benchSizes are the message sizes of BenchmarkDelivery and
// BenchmarkCeiling, and benchConns their connection counts.
var (
	benchSizes = []int{1 << 10, 1 << 20, 20 << 20}
	benchConns = []int{1, 8, 32}
)

// BenchmarkDelivery sends b.N messages over loopback through conns
// connections, each message to one of 8 accounts, and reports messages
// and MiB per second. Every message is acknowledged only once durable.
// Its figures are read as a share of BenchmarkCeiling's for the same
// size and conns (same client, same messages, go-smtp alone).
func BenchmarkDelivery(b *testing.B) {
	for _, size := range benchSizes {
		for _, conns := range benchConns {
			for _, dns := range []string{"uncached", "cached"} {
				if size > 1<<20 && dns == "uncached" {
					// At 20 MiB the checks' lookups are lost in the
					// copy; one DNS mode keeps the run short.
					continue
				}
				b.Run(fmt.Sprintf("size=%s/conns=%d/dns=%s", sizeName(size), conns, dns), func(b *testing.B) {
					e, _ := benchEnv(b, false, dns == "cached")
					msg := benchMessageOf(b, size)
					runSends(b, e.addr, conns, msg)
					if st, err := e.store.Stats(); err != nil || st.Messages != b.N {
						b.Fatalf("%d messages stored for %d sent (%v)", st.Messages, b.N, err)
					}
				})
			}
		}
	}
}

// runSends is the driving loop of BenchmarkDelivery and BenchmarkCeiling,
// shared so that the two cannot drift apart. It opens conns connections
// to addr (untimed), sends b.N copies of msg through them, each to one of
// bench1..bench8@example.test, with b's timer running only around the
// sends, closes the connections, and reports msgs/s, MiB/s and
// cpu-µs/msg. It returns the wall time and process CPU of the sends.
func runSends(b *testing.B, addr string, conns int, msg string) (elapsed, cpu time.Duration) {
	b.Helper()
	clients := make([]*benchClient, conns)
	for i := range clients {
		c, err := dialBench(addr)
		if err != nil {
			b.Fatal(err)
		}
		clients[i] = c
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	cpu0 := processCPU()
	start := time.Now()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
				if err := c.send(fmt.Sprintf("bench%d@example.test", (int(n)+i)%8+1), msg, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed = time.Since(start)
	cpu = processCPU() - cpu0
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	for _, c := range clients {
		c.close()
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)*float64(len(msg))/elapsed.Seconds()/(1<<20), "MiB/s")
	// CPU of the whole process (server, clients and, for Delivery, the
	// DNS server) per message: steadier than throughput on a shared
	// machine.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	return elapsed, cpu
}

// processCPU returns the user and system CPU time used by the process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return strconv.Itoa(n>>20) + "MiB"
	}
	return strconv.Itoa(n>>10) + "KiB"
}

// bigBody writes a body of n bytes (at least 2) in lines of up to 78
// bytes with their CRLF, the same every time, without holding it in
// memory.
func bigBody(w io.Writer, n int) error {
	line := []byte(strings.Repeat("0123456789", 7) + "abcdef\r\n")
	for n > 0 {
		k := len(line)
		if n < k || n-k == 1 {
			// The last line: what is left, ending in CRLF (a line of 79
			// would leave a lone byte, so it is split 77 + 2).
			k = min(n, len(line)-1)
			line = append(line[:k-2:k-2], '\r', '\n')
		}
		if _, err := w.Write(line[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// memoryRun sends clients messages of size bytes at once, DKIM-signed (the
// body is signed and sent as a stream, never held whole), and returns the
// peak heap in use and the peak anonymous RSS (the process's memory
// without the spool file's mmap), both sampled every 10ms, and the peak
// RSS of the whole process (VmHWM).
func memoryRun(t testing.TB, clients, size int) (peakHeap, peakAnon, rss uint64) {
	e, key := benchEnv(t, true, false)
	// Sign the body once, streaming it through the signer.
	hdr := "From: Bench <bench@sender.example>\r\nTo: bench@example.test\r\nSubject: big\r\n\r\n"
	signer, err := dkim.NewSigner(&dkim.SignOptions{Domain: key.Domain, Selector: key.Selector, Signer: key.Signer, HeaderKeys: []string{"From", "To", "Subject"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(signer, hdr)
	if err := bigBody(signer, size); err != nil {
		t.Fatal(err)
	}
	if err := signer.Close(); err != nil {
		t.Fatal(err)
	}
	head := signer.Signature() + hdr

	runtime.GC()
	var ms runtime.MemStats
	stop := make(chan struct{})
	sampled := make(chan [2]uint64)
	go func() {
		var peak, anon uint64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			anon = max(anon, procStatus("RssAnon:"))
			select {
			case <-stop:
				sampled <- [2]uint64{peak, anon}
				return
			case <-tick.C:
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialBench(e.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.close()
			errs <- c.send(fmt.Sprintf("bench%d@example.test", i%8+1), "", func(w io.Writer) error {
				io.WriteString(w, head)
				return bigBody(w, size)
			})
		}()
	}
	wg.Wait()
	close(stop)
	peaks := <-sampled
	peakHeap, peakAnon = peaks[0], peaks[1]
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st, err := e.store.Stats()
	if err != nil || st.Messages != clients {
		t.Fatalf("%d messages stored for %d sent (%v)", st.Messages, clients, err)
	}
	// Every message verified: DKIM streamed through, not skipped.
	if got := e.logs.find("message accepted", "dkim=pass:sender.example", "dmarc=pass"); len(got) != clients {
		t.Fatalf("%d of %d messages passed DKIM and DMARC", len(got), clients)
	}
	return peakHeap, peakAnon, procStatus("VmHWM:")
}

// procStatus reads a memory figure of /proc/self/status, in bytes.
func procStatus(key string) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkMemory32x20MiB has 32 clients send a 20 MiB message each at
// once and reports the peak heap in use, the peak anonymous RSS and the
// peak RSS of the test process, which holds the 32 clients and the DNS
// server too, and maps the spool file.
func BenchmarkMemory32x20MiB(b *testing.B) {
	for range b.N {
		heap, anon, rss := memoryRun(b, 32, 20<<20)
		b.ReportMetric(float64(heap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(anon)/(1<<20), "peak-anon-rss-MiB")
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
	}
}

// TestMemoryBounded: clients send big messages at once and stop halfway;
// what the server then holds (live heap after a collection, above what
// it held before) must be a few buffers per session, not the halves of
// the messages. 32 clients of 20 MiB, as the benchmark; with the race
// detector, 4 of 8 MiB. The server may hold 8 MiB plus 1.5 MiB a session
// (measured: about 4 MiB plus 1 MiB a session, mostly the spool's flush
// units); holding half a message would be 10 MiB (4 MiB under race) a
// session.
func TestMemoryBounded(t *testing.T) {
	clients, size := 32, 20<<20
	if raceEnabled {
		clients, size = 4, 8<<20
	}
	e, key := benchEnv(t, true, false)
	hdr := "From: Bench <bench@sender.example>\r\nTo: bench@example.test\r\nSubject: big\r\n\r\n"
	signer, err := dkim.NewSigner(&dkim.SignOptions{Domain: key.Domain, Selector: key.Selector, Signer: key.Signer, HeaderKeys: []string{"From", "To", "Subject"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(signer, hdr)
	half := size / 2
	if err := bigBody(signer, half); err != nil {
		t.Fatal(err)
	}
	if err := bigBody(signer, size-half); err != nil {
		t.Fatal(err)
	}
	if err := signer.Close(); err != nil {
		t.Fatal(err)
	}
	head := signer.Signature() + hdr

	var ms runtime.MemStats
	live := func() uint64 {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := live()
	var halfway, done sync.WaitGroup
	release := make(chan struct{})
	errs := make(chan error, clients)
	for i := range clients {
		halfway.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			c, err := dialBench(e.addr)
			if err != nil {
				halfway.Done()
				errs <- err
				return
			}
			defer c.close()
			errs <- c.send(fmt.Sprintf("bench%d@example.test", i%8+1), "", func(w io.Writer) error {
				io.WriteString(w, head)
				err := bigBody(w, half)
				c.w.Flush()
				halfway.Done()
				<-release
				if err != nil {
					return err
				}
				return bigBody(w, size-half)
			})
		}()
	}
	halfway.Wait()
	// Let the server read what is still in the sockets, then look.
	var held uint64
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		held = max(held, live()-min(base, live()))
	}
	close(release)
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st, err := e.store.Stats(); err != nil || st.Messages != clients {
		t.Fatalf("%d messages stored for %d sent (%v)", st.Messages, clients, err)
	}
	if got := e.logs.find("message accepted", "dkim=pass:sender.example", "dmarc=pass"); len(got) != clients {
		t.Fatalf("%d of %d messages passed DKIM and DMARC", len(got), clients)
	}
	limit := uint64(8<<20 + clients*3<<19) // 8 MiB + 1.5 MiB a session
	t.Logf("%d sessions halfway through %d MiB messages hold %.1f MiB (limit %.1f MiB)", clients, size>>20, float64(held)/(1<<20), float64(limit)/(1<<20))
	if held > limit {
		t.Errorf("the server holds %.1f MiB for %d sessions halfway through their messages; it should stream them", float64(held)/(1<<20), clients)
	}
}

// BenchmarkStressNewSender measures, with the default limits (200
// connections, 20 per address, stress from 75%, stress_timeout 10s), how
// long a new sender from a new address waits to deliver while 300 idle
// connections from 15 addresses try to hold every slot. Run it once:
// go test -run XXX -bench StressNewSender -benchtime 1x ./smtpin/
func BenchmarkStressNewSender(b *testing.B) {
	for range b.N {
		e := newEnv(b, func(c *Config, _ *Deps) {
			d := DefaultConfig()
			c.MaxConnections, c.MaxConnectionsPerIP = d.MaxConnections, d.MaxConnectionsPerIP
			c.StressThreshold, c.StressTimeout = d.StressThreshold, d.StressTimeout
		})
		var held []net.Conn
		for i := range 300 {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.1.%d", 1+i/20))}}
			c, err := d.Dial("tcp", e.addr)
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, c)
		}
		start := time.Now()
		delivered := false
		for !delivered && time.Since(start) < time.Minute {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.2.1")}}
			conn, err := d.Dial("tcp", e.addr)
			if err != nil {
				b.Fatal(err)
			}
			c := &client{t: b, conn: conn, r: bufio.NewReader(conn)}
			if l := c.line(); !strings.HasPrefix(l, "220 ") {
				conn.Close()
				time.Sleep(200 * time.Millisecond)
				continue
			}
			c.expect("250 ", "EHLO new.example")
			if r := c.deliver("b@sender.example", crlf("From: b@sender.example\nSubject: x\n\nhello\n"), alice); strings.HasPrefix(r, "250 ") {
				delivered = true
			}
			conn.Close()
		}
		if !delivered {
			b.Fatal("the new sender could not deliver within a minute")
		}
		b.ReportMetric(time.Since(start).Seconds(), "s-to-deliver")
		for _, c := range held {
			c.Close()
		}
	}
}
