package testutil

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/resolver"
)

// DNSServer is a real DNS server on 127.0.0.1 (UDP and TCP on the same
// port) answering from zones a test sets. Names are matched without regard
// to case or a trailing dot.
//
//	d := testutil.NewDNSServer(t)
//	d.Add("example.com.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
//	d.Add("mail.example.com.", "A", "127.0.0.1")
//	d.Fail("broken.example.", dns.RcodeServerFailure)
//	d.Drop("slow.example.")   // never answers: a timeout
type DNSServer struct {
	// Addr is host:port of the server.
	Addr string

	mu      sync.Mutex
	records map[string][]dns.RR // key: lower-case FQDN
	fail    map[string]int      // name -> rcode
	drop    map[string]bool     // name -> never answer
	queries atomic.Int64
	log     []string
	udp     *dns.Server
	tcp     *dns.Server
}

// NewDNSServer starts a server; it stops when the test ends.
func NewDNSServer(t testing.TB) *DNSServer {
	t.Helper()
	// UDP and TCP share one port number: take a free UDP port, then try
	// TCP on it. Another socket of a busy test run may hold that TCP port,
	// so try a few UDP ports.
	var pc net.PacketConn
	var ln net.Listener
	var lastErr error
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc, lastErr = nil, err
	}
	if pc == nil {
		t.Fatalf("testutil: no port free for both UDP and TCP: %v", lastErr)
	}
	s := &DNSServer{
		Addr:    pc.LocalAddr().String(),
		records: map[string][]dns.RR{},
		fail:    map[string]int{},
		drop:    map[string]bool{},
	}
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		s.udp.Shutdown()
		s.tcp.Shutdown()
	})
	return s
}

func fqdn(name string) string { return strings.ToLower(dns.Fqdn(name)) }

// Add adds a record: typ is "A", "AAAA", "MX", "TXT", "PTR", "CNAME", "NS"
// or "SRV", and value is in zone-file syntax for that type ("10
// mail.example.com." for MX, the text itself for TXT; long TXT values are
// split into 255-byte strings).
func (s *DNSServer) Add(name, typ, value string) {
	name = fqdn(name)
	var rr dns.RR
	var err error
	if strings.EqualFold(typ, "TXT") {
		var parts []string
		for len(value) > 255 {
			parts = append(parts, value[:255])
			value = value[255:]
		}
		parts = append(parts, value)
		rr = &dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: parts}
	} else {
		rr, err = dns.NewRR(name + " 60 IN " + strings.ToUpper(typ) + " " + value)
		if err != nil {
			panic("testutil: bad record " + name + " " + typ + " " + value + ": " + err.Error())
		}
	}
	s.mu.Lock()
	s.records[name] = append(s.records[name], rr)
	s.mu.Unlock()
}

// Remove deletes every record of a name.
func (s *DNSServer) Remove(name string) {
	s.mu.Lock()
	delete(s.records, fqdn(name))
	s.mu.Unlock()
}

// Fail makes every query for name answer with rcode (for example
// dns.RcodeServerFailure).
func (s *DNSServer) Fail(name string, rcode int) {
	s.mu.Lock()
	s.fail[fqdn(name)] = rcode
	s.mu.Unlock()
}

// Drop makes queries for name go unanswered, as a dead server would.
func (s *DNSServer) Drop(name string) {
	s.mu.Lock()
	s.drop[fqdn(name)] = true
	s.mu.Unlock()
}

// Heal undoes Fail and Drop for name.
func (s *DNSServer) Heal(name string) {
	s.mu.Lock()
	delete(s.fail, fqdn(name))
	delete(s.drop, fqdn(name))
	s.mu.Unlock()
}

// Queries returns the number of queries answered or dropped so far.
func (s *DNSServer) Queries() int64 { return s.queries.Load() }

// Log returns "TYPE name" for every query so far.
func (s *DNSServer) Log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// ServeDNS implements dns.Handler.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := fqdn(q.Name)
	s.mu.Lock()
	s.log = append(s.log, dns.TypeToString[q.Qtype]+" "+name)
	drop := s.drop[name]
	rcode, failing := s.fail[name]
	rrs := append([]dns.RR(nil), s.records[name]...)
	exists := len(rrs) > 0
	if !exists {
		// A name with records below it exists (NOERROR, no data).
		for k := range s.records {
			if strings.HasSuffix(k, "."+name) {
				exists = true
				break
			}
		}
	}
	s.mu.Unlock()
	if drop {
		return
	}
	if failing {
		m.Rcode = rcode
		w.WriteMsg(m)
		return
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, rr)
		} else if rr.Header().Rrtype == dns.TypeCNAME && q.Qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		m.Truncate(dns.MinMsgSize)
		if size := req.IsEdns0(); size != nil {
			m.Truncate(int(size.UDPSize()))
		}
	}
	w.WriteMsg(m)
}

// Resolver returns a *net.Resolver that asks only this server, built the
// way Postie builds its own ([dns] resolver = this server's address).
func (s *DNSServer) Resolver() *net.Resolver {
	r, err := resolver.New(s.Addr, 2*time.Second)
	if err != nil {
		panic(err)
	}
	return r
}
