package smtpin

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
)

// ceilingBackend is a go-smtp backend that accepts every sender and
// recipient and reads each message to the end (io.Copy to io.Discard: the
// cost of go-smtp's DATA reader) and stores nothing. It counts the
// messages and bytes it read, so that a ceiling that lost mail cannot pass
// for a fast one.
type ceilingBackend struct {
	msgs, bytes atomic.Int64
}

type ceilingSession struct{ be *ceilingBackend }

func (be *ceilingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return ceilingSession{be}, nil
}

func (ceilingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ceilingSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ceilingSession) Reset()                               {}
func (ceilingSession) Logout() error                        { return nil }

func (s ceilingSession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	s.be.msgs.Add(1)
	s.be.bytes.Add(n)
	return nil
}

// BenchmarkCeiling is the ceiling BenchmarkDelivery is read against:
// go-smtp (the version go.mod names) with the limits Postie gives it
// (newSMTPServer, with DefaultConfig's values), a backend that reads every
// message and throws it away, no checks, no DNS and no spool, driven by
// the same client (runSends), with the same messages, sizes and
// connection counts. BenchmarkDelivery/size=S/conns=C/dns=cached is read
// as a share of BenchmarkCeiling/size=S/conns=C: what Postie keeps of
// what an MX on go-smtp could do on this machine, the rest being the
// checks, the spool (and its fsync) and Postie's own session code.
func BenchmarkCeiling(b *testing.B) {
	for _, size := range benchSizes {
		for _, conns := range benchConns {
			b.Run(fmt.Sprintf("size=%s/conns=%d", sizeName(size), conns), func(b *testing.B) {
				be := &ceilingBackend{}
				addr := startCeiling(b, be)
				msg := benchMessageOf(b, size)
				runSends(b, addr, conns, msg)
				// Every message read whole: the body go-smtp hands Data is
				// msg unstuffed (it has no lines starting with a dot) up
				// to its final CRLF.
				if got, want := be.msgs.Load(), int64(b.N); got != want {
					b.Fatalf("the ceiling read %d messages for %d sent", got, want)
				}
				if got, want := be.bytes.Load(), int64(b.N)*int64(len(msg)); got != want {
					b.Fatalf("the ceiling read %d bytes for %d sent", got, want)
				}
			})
		}
	}
}

// startCeiling runs a go-smtp server on be, set up as newSMTPServer sets
// up Postie's (without TLS: the benchmarks do not use STARTTLS), on
// 127.0.0.1:0, and returns its address. It is closed when b ends.
func startCeiling(b *testing.B, be smtp.Backend) string {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Hostname = testHost // what BenchmarkDelivery's server announces
	srv := smtp.NewServer(be)
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxMessageSize.Bytes()
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = int(cfg.MaxLineLength.Bytes())
	srv.ReadTimeout = cfg.ReadTimeout.D()
	srv.WriteTimeout = cfg.WriteTimeout.D()
	srv.EnableSMTPUTF8 = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	b.Cleanup(func() {
		srv.Close()
		<-done
	})
	return l.Addr().String()
}
