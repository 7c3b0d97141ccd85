package tlsauto

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// expiryWarning is how long before the end of a certificate the owner
// manages (files mode) the log starts saying so.
const expiryWarning = 14 * 24 * time.Hour

// filesSource serves a certificate and key the owner manages (certbot, a
// company CA). It checks the files every interval and loads them again
// when their size or modification time changes; a pair that does not
// load (half-written, mismatched, expired) is logged and the previous
// pair stays in service.
type filesSource struct {
	certFile, keyFile string
	hostname          string
	names             []string // every name the certificate should cover
	interval          time.Duration
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate]

	// Only the goroutine running watch touches these.
	seen   [2]fileStamp // the files as last tried
	warned string       // serial of the certificate last warned about
}

// fileStamp is what a change of a file is detected by.
type fileStamp struct {
	size int64
	mod  int64 // modification time, Unix nanoseconds
	err  string
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{err: err.Error()}
	}
	return fileStamp{size: fi.Size(), mod: fi.ModTime().UnixNano()}
}

// newFilesSource loads the pair once; a pair that does not load at start
// is an error for the owner to fix before anything runs.
func newFilesSource(cfg Config, deps Deps, log *slog.Logger) (*filesSource, error) {
	f := &filesSource{
		certFile: cfg.CertFile,
		keyFile:  cfg.KeyFile,
		hostname: normalName(cfg.Hostname),
		names:    cfg.certNames(),
		interval: deps.FileCheckInterval,
		log:      log,
	}
	if f.interval <= 0 {
		f.interval = 5 * time.Second
	}
	f.seen = [2]fileStamp{stamp(f.certFile), stamp(f.keyFile)}
	c, err := loadKeyPair(f.certFile, f.keyFile, time.Now())
	if err != nil {
		return nil, errors.New("tls.cert_file, tls.key_file: " + err.Error())
	}
	f.install(c, time.Now())
	return f, nil
}

// install puts c in service and says what it is.
func (f *filesSource) install(c *tls.Certificate, now time.Time) {
	f.cur.Store(c)
	f.log.Info("certificate loaded", "file", f.certFile, "subject", c.Leaf.Subject.CommonName, "names", c.Leaf.DNSNames,
		"expires", c.Leaf.NotAfter, "serial", c.Leaf.SerialNumber.Text(16))
	for _, n := range f.names {
		if err := c.Leaf.VerifyHostname(n); err != nil {
			f.log.Warn("the certificate does not cover a name it is served for; clients that check it will refuse it", "name", n, "file", f.certFile)
		}
	}
	f.warnExpiry(c, now)
}

// warnExpiry says once per certificate that it nears its end.
func (f *filesSource) warnExpiry(c *tls.Certificate, now time.Time) {
	if serial := c.Leaf.SerialNumber.String(); now.Add(expiryWarning).After(c.Leaf.NotAfter) && f.warned != serial {
		f.warned = serial
		f.log.Warn("the certificate in tls.cert_file expires soon; renew it (the new files are picked up without a restart)",
			"file", f.certFile, "expires", c.Leaf.NotAfter)
	}
}

// watch polls the files until ctx ends.
func (f *filesSource) watch(ctx context.Context) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.check(time.Now())
		}
	}
}

// check loads the files again if they changed since the last try, and
// warns once per certificate when it nears its end.
func (f *filesSource) check(now time.Time) {
	st := [2]fileStamp{stamp(f.certFile), stamp(f.keyFile)}
	if st != f.seen {
		f.seen = st
		c, err := loadKeyPair(f.certFile, f.keyFile, now)
		if err != nil {
			f.log.Error("the certificate files changed but do not load; still serving the previous certificate", "err", err,
				"fix", "write the new certificate chain and its key to tls.cert_file and tls.key_file (PEM); they are checked again when they change")
		} else {
			f.install(c, now)
			return
		}
	}
	f.warnExpiry(f.cur.Load(), now)
}

func (f *filesSource) host() *tls.Certificate {
	if c := f.cur.Load(); usable(c, time.Now()) {
		return c
	}
	return nil
}

func (f *filesSource) webCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := f.host(); c != nil {
		return c, nil
	}
	return nil, errNoCertificate
}
