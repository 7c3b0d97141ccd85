// Package metrics counts what Postie does, for Prometheus: messages
// accepted and refused (by reason), SPF/DKIM/DMARC verdicts, POP3 logins
// and failures, bytes in and out, the spool's size, the certificate's
// expiry, and the fetch watchdog's view of each mailbox. It uses its own
// registry (no global state); the optional listener serves /metrics and
// /healthz on loopback.
//
// Every recording method is safe on a nil *Metrics, so the servers call
// them unconditionally and metrics can stay off.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds Postie's collectors.
type Metrics struct {
	reg *prometheus.Registry

	smtpConns    *prometheus.CounterVec
	smtpMessages *prometheus.CounterVec
	smtpVerdicts *prometheus.CounterVec
	smtpBytes    prometheus.Counter
	pop3Logins   *prometheus.CounterVec
	pop3Messages *prometheus.CounterVec
	pop3Bytes    prometheus.Counter
	stress       *prometheus.CounterVec
	stressed     *prometheus.GaugeVec
	milterFails  *prometheus.CounterVec

	// counts are the SMTP counts "postie status" shows, readable without
	// going through the registry.
	countsMu sync.Mutex
	accepted int64
	refused  map[string]int64
}

// New makes the collectors and registers them, with the Go runtime's and
// the process's own, on a fresh registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), refused: map[string]int64{}}
	m.smtpConns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_smtp_connections_total", Help: "SMTP connections, by result (accepted, refused: over a connection limit or on a blocklist).",
	}, []string{"result"})
	m.smtpMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_smtp_messages_total", Help: "SMTP messages (or recipients refused at RCPT), by result and reason.",
	}, []string{"result", "reason"})
	m.smtpVerdicts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_smtp_verdicts_total", Help: "Authentication verdicts of received messages, by check (spf, dkim, dmarc) and result.",
	}, []string{"check", "result"})
	m.smtpBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postie_smtp_received_bytes_total", Help: "Bytes of accepted messages, as stored.",
	})
	m.pop3Logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_pop3_logins_total", Help: "POP3 logins, by result (ok, failed, in_use).",
	}, []string{"result"})
	m.pop3Messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_pop3_messages_total", Help: "Messages retrieved (RETR) and deleted (DELE, applied at QUIT) over POP3.",
	}, []string{"op"})
	m.pop3Bytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postie_pop3_sent_bytes_total", Help: "Message bytes sent by RETR and TOP.",
	})
	m.stress = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_stress_total", Help: "Times a service entered stress mode (connections near the limit: short timeouts before real work), by service (smtp, pop3).",
	}, []string{"service"})
	m.stressed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "postie_stress", Help: "1 while a service is in stress mode, by service.",
	}, []string{"service"})
	m.milterFails = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postie_milter_failures_total", Help: "Times a content filter (milter) could not be asked about a message: unreachable, too slow or broke the protocol, by filter.",
	}, []string{"filter"})
	m.reg.MustRegister(m.smtpConns, m.smtpMessages, m.smtpVerdicts, m.smtpBytes, m.pop3Logins, m.pop3Messages, m.pop3Bytes, m.stress, m.stressed, m.milterFails,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Both services' stress series exist from the start (0), so that a
	// dashboard shows them before the first stress.
	for _, svc := range []string{"smtp", "pop3"} {
		m.stress.WithLabelValues(svc)
		m.stressed.WithLabelValues(svc).Set(0)
	}
	return m
}

// SMTPConnection counts a connection: result is "accepted" or "refused".
func (m *Metrics) SMTPConnection(result string) {
	if m != nil {
		m.smtpConns.WithLabelValues(result).Inc()
	}
}

// SMTPAccepted counts an accepted message of size bytes.
func (m *Metrics) SMTPAccepted(size int64) {
	if m != nil {
		m.smtpMessages.WithLabelValues("accepted", "").Inc()
		m.smtpBytes.Add(float64(size))
		m.countsMu.Lock()
		m.accepted++
		m.countsMu.Unlock()
	}
}

// SMTPQuarantined counts a message held in the quarantine: "filter" (a
// content filter quarantined it; the sender got 250) or "refused" (the
// owner's copy of a refused message).
func (m *Metrics) SMTPQuarantined(kind string) {
	if m != nil {
		m.smtpMessages.WithLabelValues("quarantined", kind).Inc()
	}
}

// SMTPRefused counts a refusal, with a short reason ("unknown_user",
// "relay", "size", "dmarc", "spf", "dns_temperror", "storage", "quota",
// "recipients", "timeout", "protocol", ...).
func (m *Metrics) SMTPRefused(reason string) {
	if m != nil {
		m.smtpMessages.WithLabelValues("refused", reason).Inc()
		m.countsMu.Lock()
		m.refused[reason]++
		m.countsMu.Unlock()
	}
}

// SMTPCounts returns the messages accepted and the refusals by reason
// counted since New (postie_smtp_messages_total's figures). Nil counts
// nothing.
func (m *Metrics) SMTPCounts() (accepted int64, refused map[string]int64) {
	refused = map[string]int64{}
	if m == nil {
		return 0, refused
	}
	m.countsMu.Lock()
	defer m.countsMu.Unlock()
	maps.Copy(refused, m.refused)
	return m.accepted, refused
}

// Verdict counts one check's result ("pass", "fail", "temperror", ...).
func (m *Metrics) Verdict(check, result string) {
	if m != nil {
		m.smtpVerdicts.WithLabelValues(check, result).Inc()
	}
}

// POP3Login counts a login attempt: result is "ok", "failed" or "in_use".
func (m *Metrics) POP3Login(result string) {
	if m != nil {
		m.pop3Logins.WithLabelValues(result).Inc()
	}
}

// POP3Session counts what a session did.
func (m *Metrics) POP3Session(retrieved, deleted int, bytes int64) {
	if m != nil {
		m.pop3Messages.WithLabelValues("retrieved").Add(float64(retrieved))
		m.pop3Messages.WithLabelValues("deleted").Add(float64(deleted))
		m.pop3Bytes.Add(float64(bytes))
	}
}

// MilterFailure counts a content filter that could not be asked.
func (m *Metrics) MilterFailure(filter string) {
	if m != nil {
		m.milterFails.WithLabelValues(filter).Inc()
	}
}

// Stress records that a service ("smtp", "pop3") entered or left stress
// mode.
func (m *Metrics) Stress(service string, on bool) {
	if m == nil {
		return
	}
	if on {
		m.stress.WithLabelValues(service).Inc()
		m.stressed.WithLabelValues(service).Set(1)
	} else {
		m.stressed.WithLabelValues(service).Set(0)
	}
}

// Register adds a collector (the spool's, the certificate's).
func (m *Metrics) Register(c prometheus.Collector) error {
	if m == nil {
		return nil
	}
	return m.reg.Register(c)
}

// Handler serves /metrics and /healthz. healthy, if not nil, is asked by
// /healthz; an error makes it answer 503 with the error's text.
func (m *Metrics) Handler(healthy func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if healthy != nil {
			if err := healthy(); err != nil {
				http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// Serve serves Handler on l until ctx ends.
func (m *Metrics) Serve(ctx context.Context, l net.Listener, healthy func() error, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           m.Handler(healthy),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
