package metrics

import (
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postie/postie/spool"
)

// SpoolCollector reports the spool's totals and, per account, the fetch
// watchdog's figures at each scrape. It only observes: the watchdog that
// logs is the spool's (spool.Watchdog).
type SpoolCollector struct {
	store   *spool.Store
	overdue time.Duration // a mailbox not fetched for this long is overdue (0: off)
	now     func() time.Time

	messages, bytes, fileBytes, accounts *prometheus.Desc
	boxBytes, boxQuota, lastFetch, late  *prometheus.Desc
}

// NewSpoolCollector makes the spool's collector. overdue is the fetch
// watchdog's limit; 0 turns its metric off.
func NewSpoolCollector(store *spool.Store, overdue time.Duration) *SpoolCollector {
	return &SpoolCollector{
		store: store, overdue: overdue, now: time.Now,
		messages:  prometheus.NewDesc("postie_spool_messages", "Messages stored.", nil, nil),
		bytes:     prometheus.NewDesc("postie_spool_message_bytes", "Total size of the stored messages.", nil, nil),
		fileBytes: prometheus.NewDesc("postie_spool_file_bytes", "Size of the spool file (it does not shrink; freed pages are reused).", nil, nil),
		accounts:  prometheus.NewDesc("postie_accounts", "Accounts.", nil, nil),
		boxBytes:  prometheus.NewDesc("postie_mailbox_bytes", "Bytes in a mailbox.", []string{"account"}, nil),
		boxQuota:  prometheus.NewDesc("postie_mailbox_quota_bytes", "A mailbox's storage limit (absent when there is none).", []string{"account"}, nil),
		lastFetch: prometheus.NewDesc("postie_mailbox_last_login_timestamp_seconds", "When a POP3 client last logged in to the mailbox (0: never).", []string{"account"}, nil),
		late:      prometheus.NewDesc("postie_mailbox_fetch_overdue", "1 when the mailbox has not been fetched within the watchdog's limit.", []string{"account"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *SpoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.messages, c.bytes, c.fileBytes, c.accounts, c.boxBytes, c.boxQuota, c.lastFetch, c.late} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *SpoolCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.store.Stats()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.GaugeValue, float64(st.Messages))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(c.fileBytes, prometheus.GaugeValue, float64(st.FileSize))
	ch <- prometheus.MustNewConstMetric(c.accounts, prometheus.GaugeValue, float64(st.Accounts))
	accts, err := c.store.Accounts()
	if err != nil {
		return
	}
	now := c.now()
	for _, a := range accts {
		ch <- prometheus.MustNewConstMetric(c.boxBytes, prometheus.GaugeValue, float64(a.Bytes), a.Address)
		if a.Quota > 0 {
			ch <- prometheus.MustNewConstMetric(c.boxQuota, prometheus.GaugeValue, float64(a.Quota), a.Address)
		}
		var last float64
		if !a.LastLogin.IsZero() {
			last = float64(a.LastLogin.Unix())
		}
		ch <- prometheus.MustNewConstMetric(c.lastFetch, prometheus.GaugeValue, last, a.Address)
		if c.overdue > 0 {
			v := 0.0
			if a.Overdue(now, c.overdue) {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.late, prometheus.GaugeValue, v, a.Address)
		}
	}
}

// CertCollector reports the expiry of the certificate the mail ports serve.
type CertCollector struct {
	cert func() (*x509.Certificate, bool)
	desc *prometheus.Desc
}

// NewCertCollector makes a collector over a function that returns the live
// certificate (tlsauto's Manager.Certificate).
func NewCertCollector(cert func() (*x509.Certificate, bool)) *CertCollector {
	return &CertCollector{cert: cert, desc: prometheus.NewDesc("postie_tls_certificate_expiry_timestamp_seconds",
		"When the certificate served on the mail ports expires (absent while there is none).", nil, nil)}
}

// Describe implements prometheus.Collector.
func (c *CertCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *CertCollector) Collect(ch chan<- prometheus.Metric) {
	if leaf, ok := c.cert(); ok && leaf != nil {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()))
	}
}
