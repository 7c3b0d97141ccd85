package smtpin

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postie/postie/internal/metrics"
)

// TestMetrics delivers one message, refuses one recipient and one relay
// attempt, and scrapes the counters.
func TestMetrics(t *testing.T) {
	m := metrics.New()
	e := newEnv(t, func(_ *Config, d *Deps) { d.Metrics = m })
	c := e.dial()
	c.hello()
	c.deliver("someone@sender.example", "Subject: hi\r\n\r\nhello\r\n", alice)
	c.expect("250 ", "MAIL FROM:<someone@sender.example>")
	c.expect("550 5.1.1", "RCPT TO:<nobody@example.test>")
	c.expect("550 5.7.1", "RCPT TO:<victim@elsewhere.example>")
	srv := httptest.NewServer(m.Handler(nil))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`postie_smtp_connections_total{result="accepted"} 1`,
		`postie_smtp_messages_total{reason="",result="accepted"} 1`,
		`postie_smtp_messages_total{reason="unknown_user",result="refused"} 1`,
		`postie_smtp_messages_total{reason="relay",result="refused"} 1`,
		`postie_smtp_verdicts_total{check="spf",result="pass"} 1`,
		`postie_smtp_verdicts_total{check="dkim",result="none"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
