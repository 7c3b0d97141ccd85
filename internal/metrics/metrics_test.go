package metrics

import (
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/spool"
)

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func openStore(t *testing.T) *spool.Store {
	opts := spool.DefaultOptions()
	opts.Path = filepath.Join(t.TempDir(), "spool.db")
	opts.HashParams = spool.HashParams{Time: 1, Memory: 64, Threads: 1}
	opts.Quota = 100
	s, err := spool.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestScrape(t *testing.T) {
	m := New()
	s := openStore(t)
	ctx := context.Background()
	s.AddAccount(ctx, "alice@example.com", "correct horse battery")
	s.Deliver(ctx, spool.Envelope{}, []string{"alice@example.com"}, strings.NewReader("hello there\r\n"))
	if err := m.Register(NewSpoolCollector(s, time.Hour)); err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{NotAfter: time.Unix(1900000000, 0)}
	m.Register(NewCertCollector(func() (*x509.Certificate, bool) { return leaf, true }))
	m.SMTPConnection("accepted")
	m.SMTPAccepted(13)
	m.SMTPRefused("unknown_user")
	m.SMTPRefused("unknown_user")
	m.Verdict("spf", "pass")
	m.POP3Login("failed")
	m.POP3Session(1, 1, 13)
	out := scrape(t, m.Handler(nil))
	for _, want := range []string{
		`postie_smtp_messages_total{reason="",result="accepted"} 1`,
		`postie_smtp_messages_total{reason="unknown_user",result="refused"} 2`,
		`postie_smtp_verdicts_total{check="spf",result="pass"} 1`,
		`postie_smtp_received_bytes_total 13`,
		`postie_pop3_logins_total{result="failed"} 1`,
		`postie_pop3_messages_total{op="deleted"} 1`,
		`postie_pop3_sent_bytes_total 13`,
		`postie_spool_messages 1`,
		`postie_spool_message_bytes 13`,
		`postie_accounts 1`,
		`postie_mailbox_bytes{account="alice@example.com"} 13`,
		`postie_mailbox_quota_bytes{account="alice@example.com"} 100`,
		`postie_mailbox_last_login_timestamp_seconds{account="alice@example.com"} 0`,
		`postie_mailbox_fetch_overdue{account="alice@example.com"} 0`,
		`postie_tls_certificate_expiry_timestamp_seconds 1.9e+09`,
		`postie_stress{service="smtp"} 0`, // before any stress
		`postie_stress_total{service="pop3"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if acc, ref := m.SMTPCounts(); acc != 1 || len(ref) != 1 || ref["unknown_user"] != 2 {
		t.Errorf("SMTPCounts: %d, %v; want 1 accepted, 2 unknown_user", acc, ref)
	}
}

func TestNilMetricsIsSafe(t *testing.T) {
	var m *Metrics
	m.SMTPAccepted(1)
	m.SMTPRefused("x")
	m.Verdict("a", "b")
	m.POP3Login("ok")
	m.POP3Session(1, 2, 3)
	m.SMTPConnection("accepted")
	if acc, ref := m.SMTPCounts(); acc != 0 || ref == nil || len(ref) != 0 {
		t.Errorf("nil SMTPCounts: %d, %v", acc, ref)
	}
	if err := m.Register(nil); err != nil {
		t.Fatal(err)
	}
}

func TestHealthz(t *testing.T) {
	m := New()
	var failing error
	srv := httptest.NewServer(m.Handler(func() error { return failing }))
	defer srv.Close()
	get := func() int {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if get() != 200 {
		t.Fatal("healthy server not 200")
	}
	failing = io.ErrClosedPipe
	if get() != 503 {
		t.Fatal("unhealthy server not 503")
	}
}
