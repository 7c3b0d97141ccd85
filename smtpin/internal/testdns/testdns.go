// Package testdns starts internal/testutil's DNS server for smtpin's
// tests, retrying when it cannot start.
//
// testutil.NewDNSServer takes a free UDP port and then listens for TCP on
// the same number; while a busy test suite holds many loopback TCP
// connections, one of them sometimes has that number as its local port,
// and the server fails with "address already in use". A new attempt picks
// another port.
package testdns

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// New starts a DNS server on loopback that stops when the test ends.
func New(t testing.TB) *testutil.DNSServer {
	t.Helper()
	var last string
	for range 10 {
		r := &attempt{TB: t}
		var d *testutil.DNSServer
		done := make(chan struct{})
		go func() {
			defer close(done)
			d = testutil.NewDNSServer(r)
		}()
		<-done
		if !r.failed {
			return d
		}
		last = r.msg
	}
	t.Fatalf("testdns: no DNS server after 10 attempts: %s", last)
	return nil
}

// attempt stands in for the test during one attempt: a fatal error ends
// the attempt's goroutine instead of the test.
type attempt struct {
	testing.TB
	failed bool
	msg    string
}

func (a *attempt) Helper() {}

func (a *attempt) Fatal(args ...any) {
	a.failed, a.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (a *attempt) Fatalf(format string, args ...any) {
	a.failed, a.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
