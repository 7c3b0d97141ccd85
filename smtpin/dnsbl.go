package smtpin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/dnsname"
	"github.com/postie/postie/internal/netserve"
)

// DNS blocklists (RFC 5782): a client at 192.0.2.7 is listed on zone z when
// 7.2.0.192.z has an A record in 127.0.0.0/8. IPv6 addresses are looked up
// by their 32 reversed nibbles.

// blocklisted returns the first zone that lists the client, or "" when none
// does (or no answer came within the timeout: the lists are advisory).
func (s *Server) blocklisted(ip netip.Addr, zones []string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	type answer struct {
		zone   string
		listed bool
	}
	answers := make(chan answer, len(zones))
	for _, z := range zones {
		go func() {
			answers <- answer{z, s.listedOn(ctx, ip, z)}
		}()
	}
	listed := ""
	for range zones {
		a := <-answers
		if a.listed && listed == "" {
			listed = a.zone
		}
	}
	return listed
}

// listedOn asks one zone about ip.
func (s *Server) listedOn(ctx context.Context, ip netip.Addr, zone string) bool {
	name := reverseName(ip) + "." + strings.TrimSuffix(zone, ".")
	addrs, err := s.resolver.LookupIPAddr(ctx, name)
	if err != nil {
		var de *net.DNSError
		if !(errors.As(err, &de) && de.IsNotFound) {
			s.log.Warn("dnsbl lookup failed; letting the client in", "zone", zone, "remote", ip.String(), "err", err)
		}
		return false
	}
	for _, a := range addrs {
		v4 := a.IP.To4()
		if v4 == nil || v4[0] != 127 {
			continue
		}
		if v4[1] == 255 && v4[2] == 255 {
			// 127.255.255.x: the list refuses to answer this resolver
			// (Spamhaus does so for public resolvers); not a listing.
			s.log.Warn("dnsbl refused the query: use a resolver of your own", "zone", zone, "answer", v4.String())
			continue
		}
		return true
	}
	return false
}

// reverseName is the address part of a blocklist query name.
func reverseName(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		return fmt.Sprintf("%d.%d.%d.%d", b[3], b[2], b[1], b[0])
	}
	b := ip.As16()
	parts := make([]string, 0, 32)
	for i := 15; i >= 0; i-- {
		parts = append(parts, fmt.Sprintf("%x", b[i]&0xf), fmt.Sprintf("%x", b[i]>>4))
	}
	return strings.Join(parts, ".")
}

// validZone reports whether z looks like a DNS zone name.
func validZone(z string) bool {
	n := dnsname.Normalize(z)
	return n != "" && strings.Contains(n, ".")
}

// blocked is the greeting a listed client gets (RFC 5321 §3.1: 554 instead
// of 220), naming the list so a wrongly listed sender knows where to go.
func blocked(ip netip.Addr, zone string) *smtp.SMTPError {
	return reply(554, 5, 7, 1, fmt.Sprintf("Service unavailable: client host [%s] blocked using %s", ip, zone))
}

// screen checks a new connection against the blocklists, then hands it on
// or refuses it. It runs in its own goroutine, so a slow list never holds
// up other clients.
func (s *Server) screen(c net.Conn, zones []string, timeout time.Duration, hostname string) {
	ip := netserve.RemoteIP(c)
	if !ip.IsValid() {
		s.handoff(c)
		return
	}
	zone := s.blocklisted(ip, zones, timeout)
	if zone == "" {
		s.handoff(c)
		return
	}
	// Logged before the close, so the line exists once the client sees
	// the end (fail2ban and the tests read it).
	s.log.Info("connection refused: client on a blocklist", "remote", ip.String(), "zone", zone)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, closing(hostname, blocked(ip, zone)))
	c.Close()
	s.metrics.SMTPConnection("refused")
	s.metrics.SMTPRefused("dnsbl")
}
