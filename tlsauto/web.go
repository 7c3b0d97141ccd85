package tlsauto

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
)

// acmeChallengePrefix is the path of HTTP-01 challenges (RFC 8555 §8.3).
const acmeChallengePrefix = "/.well-known/acme-challenge/"

// newServer makes an HTTP server with the configured limits. HTTP/2 is
// off (a non-nil TLSNextProto): the sites are a few small files, and one
// protocol keeps the connection caps meaningful. A connection that
// negotiated acme-tls/1 has done its job with the handshake (RFC 8737 §3)
// and is closed.
func (m *Manager) newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: m.cfg.HTTPReadTimeout.D(),
		ReadTimeout:       m.cfg.HTTPReadTimeout.D(),
		WriteTimeout:      m.cfg.HTTPWriteTimeout.D(),
		IdleTimeout:       m.cfg.HTTPIdleTimeout.D(),
		MaxHeaderBytes:    int(m.cfg.HTTPMaxHeaderBytes.Bytes()),
		// Handshake failures from scanners are not worth more than Debug.
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			acmeTLS1: func(_ *http.Server, c *tls.Conn, _ http.Handler) { c.Close() },
		},
	}
}

// serveHTTP answers the HTTP listener: ACME HTTP-01 challenges for the
// names we manage, a redirect to HTTPS for the rest of those names'
// pages, and 404 for anything else. Postie runs no website on port 80.
func (m *Manager) serveHTTP(w http.ResponseWriter, r *http.Request) {
	host := requestHost(r)
	if !m.hosts[host] {
		http.NotFound(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, acmeChallengePrefix) {
		if m.acme != nil && m.acme.handleHTTPChallenge(w, r) {
			m.log.Info("answered an ACME HTTP-01 challenge", "name", host, "remote", r.RemoteAddr)
			return
		}
		http.NotFound(w, r)
		return
	}
	if m.httpsAddr == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	target := "https://" + host
	if m.httpsPort != "" {
		target = "https://" + net.JoinHostPort(host, m.httpsPort)
	}
	http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusMovedPermanently)
}

// serveHTTPS answers the HTTPS listener: the MTA-STS policy on
// mta-sts.<domain> (RFC 8461 §3.3), and everything else through Deps.Web
// when main gave one.
func (m *Manager) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	host := requestHost(r)
	if m.policy != nil && strings.HasPrefix(host, "mta-sts.") && m.hosts[host] {
		if r.URL.Path != mtaSTSPath {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// RFC 8461 §3.3: the policy is text/plain, served directly
		// (senders do not follow redirects).
		h := w.Header()
		h.Set("Content-Type", "text/plain")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(m.policy)
		m.log.Debug("served the MTA-STS policy", "host", host, "remote", r.RemoteAddr)
		return
	}
	if m.deps.Web != nil {
		m.deps.Web.ServeHTTP(w, r)
		return
	}
	http.NotFound(w, r)
}

// requestHost returns the request's host name without port, lower case
// and without a trailing dot.
func requestHost(r *http.Request) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return normalName(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
}
