package smtpin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postie/postie/smtpin/internal/dkimtest"
)

// benchEnv is a server with the checks on against the loopback DNS server:
// sender.example has SPF, a DKIM key and a DMARC policy of reject, so
// every message costs an SPF lookup, a DKIM key lookup and verification,
// and a DMARC lookup, as mail from a careful sender does.
func benchEnv(b testing.TB) (*env, *dkimtest.Key) {
	e := newEnv(b, withConfig(func(c *Config) {
		c.MaxConnectionsPerIP = 64
	}))
	key := dkimtest.NewRSA(b, "sender.example", "bench")
	e.dns.Add(key.RecordName(), "TXT", key.Record(b))
	e.dns.Add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
	for i := 1; i <= 8; i++ {
		if err := e.store.AddAccount(context.Background(), fmt.Sprintf("bench%d@example.test", i), "correct horse battery"); err != nil {
			b.Fatal(err)
		}
	}
	return e, key
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

// BenchmarkDelivery sends b.N messages over loopback through conns
// connections, each message to one of 8 accounts, and reports messages
// and MiB per second. Every message is acknowledged only once durable.
func BenchmarkDelivery(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		for _, conns := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("size=%s/conns=%d", sizeName(size), conns), func(b *testing.B) {
				e, key := benchEnv(b)
				msg := benchMessage(b, key, size)
				clients := make([]*benchClient, conns)
				for i := range clients {
					c, err := dialBench(e.addr)
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
				elapsed := time.Since(start)
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
				if st, err := e.store.Stats(); err != nil || st.Messages != b.N {
					b.Fatalf("%d messages stored for %d sent (%v)", st.Messages, b.N, err)
				}
			})
		}
	}
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
// peak heap in use sampled every 10ms and the process's peak RSS.
func memoryRun(t testing.TB, clients, size int) (peakHeap, rss uint64) {
	e, key := benchEnv(t)
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
	sampled := make(chan uint64)
	go func() {
		var peak uint64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				sampled <- peak
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
	peakHeap = <-sampled
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
	return peakHeap, peakRSS()
}

// peakRSS reads the process's peak resident set (VmHWM), in bytes.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkMemory32x20MiB has 32 clients send a 20 MiB message each at
// once and reports the server's peak heap (sampled) and the test
// process's peak RSS, which includes the 32 clients.
func BenchmarkMemory32x20MiB(b *testing.B) {
	for range b.N {
		heap, rss := memoryRun(b, 32, 20<<20)
		b.ReportMetric(float64(heap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
	}
}

// TestMemoryBounded: 32 clients sending 20 MiB each at once (640 MiB in
// flight) must not make the heap grow with the messages. The bound is
// generous: the design needs a few hundred KiB per session.
func TestMemoryBounded(t *testing.T) {
	heap, _ := memoryRun(t, 32, 20<<20)
	t.Logf("peak heap in use: %.1f MiB", float64(heap)/(1<<20))
	if heap > 160<<20 {
		t.Errorf("peak heap %.1f MiB for 32 streams of 20 MiB; a message is being held in memory", float64(heap)/(1<<20))
	}
}
