package pop3out

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkRetrieve logs in and retrieves every message of a maildrop over
// loopback TCP, with pipelined RETRs as mpop and Thunderbird send them, and
// reports MiB/s and messages/s of message octets (the un-stuffed sizes).
// The client's work (reading and un-stuffing) runs on the same two cores.
//
//	go test -run XXX -bench Retrieve -benchmem ./pop3out/
func BenchmarkRetrieve(b *testing.B) {
	for _, load := range []struct {
		name  string
		count int
		size  int
	}{
		{"1000x1KiB", 1000, 1 << 10},
		{"20x10MiB", 20, 10 << 20},
	} {
		e := newEnv(b, envOptions{noFixture: true})
		var total int64
		for i := range load.count {
			m := makeMessage(load.size, uint64(i))
			total += int64(len(m))
			e.deliver(alice, m)
		}
		for _, mode := range []string{"plaintext", "TLS"} {
			b.Run(load.name+"/"+mode, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(total)
				start := time.Now()
				for b.Loop() {
					var c net.Conn
					var err error
					if mode == "TLS" {
						c, err = tls.Dial("tcp", e.tlsAddr, e.ca.ClientConfig(tlsName))
					} else {
						c, err = net.Dial("tcp", e.addr)
					}
					if err != nil {
						b.Fatal(err)
					}
					if got := retrieveAll(b, c, load.count); got != total {
						b.Fatalf("retrieved %d octets, want %d", got, total)
					}
					c.Close()
				}
				elapsed := time.Since(start).Seconds()
				n := float64(b.N)
				b.ReportMetric(float64(total)*n/elapsed/(1<<20), "MiB/s")
				b.ReportMetric(float64(load.count)*n/elapsed, "msgs/s")
			})
		}
	}
}

// retrieveAll logs in, sends every RETR in one write, reads the messages
// un-stuffed, and quits. It returns the message octets received.
func retrieveAll(b *testing.B, c net.Conn, count int) int64 {
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReaderSize(c, 64<<10)
	var cmds strings.Builder
	fmt.Fprintf(&cmds, "USER %s\r\nPASS %s\r\n", alice, password)
	for i := 1; i <= count; i++ {
		fmt.Fprintf(&cmds, "RETR %d\r\n", i)
	}
	cmds.WriteString("QUIT\r\n")
	go c.Write([]byte(cmds.String()))
	status := func() string {
		l, err := r.ReadSlice('\n')
		if err != nil || len(l) < 3 || string(l[:3]) != "+OK" {
			b.Fatalf("status line %q, %v", l, err)
		}
		return string(l)
	}
	status() // greeting
	status() // USER
	status() // PASS
	var total int64
	for range count {
		l := status()
		size, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
		var n int64
		bol := true
		for {
			line, err := r.ReadSlice('\n')
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				b.Fatal(err)
			}
			if bol && len(line) == 3 && line[0] == '.' && line[1] == '\r' {
				break
			}
			if bol && len(line) > 0 && line[0] == '.' {
				n--
			}
			n += int64(len(line))
			bol = err == nil
		}
		if n != size {
			b.Fatalf("message of %d octets, LIST said %d", n, size)
		}
		total += n
	}
	status() // QUIT
	return total
}

// BenchmarkHeapGrowth50MiB reports how far the heap (server and client
// together) grows above its level before RETR while a 50 MiB message is
// retrieved. The test TestLargeMessageRoundTrip asserts the 8 MiB bound.
//
//	go test -run XXX -bench HeapGrowth -benchtime 3x ./pop3out/
func BenchmarkHeapGrowth50MiB(b *testing.B) {
	e := newEnv(b, envOptions{noFixture: true})
	e.deliver(alice, makeMessage(50<<20, 9))
	for _, mode := range []string{"plaintext", "TLS"} {
		b.Run(mode, func(b *testing.B) {
			var worst uint64
			for b.Loop() {
				c := e.dial()
				if mode == "TLS" {
					c = e.dialTLS()
				}
				c.expect("+OK ")
				c.login(alice, password)
				_, size, growth := heapGrowth(c, 1)
				if size != 50<<20 {
					b.Fatalf("got %d octets", size)
				}
				worst = max(worst, growth)
				c.cmd("+OK", "QUIT")
				c.conn.Close()
			}
			b.ReportMetric(float64(worst)/(1<<20), "MiB-heap-growth")
			runtime.GC()
		})
	}
}

// BenchmarkLogin times a login with an unknown user, a wrong password and
// the right one, with the default AuthDuration padding: the two failures
// should take the same time (docs/security.md, no user enumeration); the
// success is not padded. No penalty applies: each failure is forgiven
// before the next attempt.
//
//	go test -run XXX -bench Login ./pop3out/
func BenchmarkLogin(b *testing.B) {
	e := newEnv(b, envOptions{config: func(c *Config) {
		c.AuthDuration = DefaultConfig().AuthDuration
		c.MaxAuthFailures = 1 << 30
	}})
	for _, tc := range []struct{ name, user, pass, want string }{
		{"unknown-user", "nobody@example.org", password, "-ERR [AUTH]"},
		{"wrong-password", bob, "wrong password", "-ERR [AUTH]"},
		{"right-password", bob, password, "+OK"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := e.dial()
			c.expect("+OK ")
			for b.Loop() {
				c.cmd("+OK", "USER %s", tc.user)
				c.cmd(tc.want, "PASS %s", tc.pass)
				b.StopTimer()
				e.srv.penalty.Forgive("net:127.0.0.1/32", "user:"+tc.user)
				if tc.want == "+OK" {
					c.cmd("+OK", "QUIT")
					c = e.dial()
					c.expect("+OK ")
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkGuessRate measures the guesses per minute that reach the
// password check for one account with the default penalties (2 s doubling
// to 15 s, auth_duration), from 1, 10 and 60 parallel connections spread
// over 10 addresses, during GUESS_SECONDS (default 60) each:
// go test -run XXX -bench GuessRate -benchtime 1x ./pop3out/
func BenchmarkGuessRate(b *testing.B) {
	window := 60 * time.Second
	if v, err := strconv.Atoi(os.Getenv("GUESS_SECONDS")); err == nil && v > 0 {
		window = time.Duration(v) * time.Second
	}
	for _, conns := range []int{1, 10, 60} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			for range b.N {
				e := newEnv(b, envOptions{config: func(c *Config) {
					d := DefaultConfig()
					c.FailedLoginDelay, c.FailedLoginDelayMax, c.AuthDuration = d.FailedLoginDelay, d.FailedLoginDelayMax, d.AuthDuration
					c.MaxAuthFailures, c.MaxErrors = 1<<20, 1<<20
				}})
				var guesses atomic.Int64
				stop := make(chan struct{})
				var wg sync.WaitGroup
				for i := range conns {
					wg.Go(func() { guesser(b, e, fmt.Sprintf("127.0.3.%d", 1+i%10), stop, &guesses) })
				}
				time.Sleep(window)
				n := guesses.Load()
				close(stop)
				e.srv.Shutdown(canceled())
				wg.Wait()
				b.ReportMetric(float64(n)/window.Minutes(), "guesses/min")
			}
		})
	}
}

// canceled returns a context that is already done.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
