package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postie/postie/internal/autoconfig"
	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/control"
	"github.com/postie/postie/internal/durable"
	"github.com/postie/postie/internal/metrics"
	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/pop3out"
	"github.com/postie/postie/smtpin"
	"github.com/postie/postie/spool"
	"github.com/postie/postie/tlsauto"

	"github.com/postie/postie/internal/plural"
)

// daemon is a running "postie serve": the parts the config enables, wired
// together. startDaemon brings it up, reload applies a new config to what
// can change at run time, and stop takes it down in order.
type daemon struct {
	log   *slog.Logger
	level *slog.LevelVar
	cfg   Config // the config in force

	store *spool.Store
	ctl   *control.Server
	dns   *net.Resolver
	tls   *tlsauto.Manager
	mon   *metrics.Metrics // counts always; served only with [metrics] listen
	smtp  *smtpin.Server
	pop   *pop3out.Server

	bindings []binding
	metricsL net.Listener

	serving sync.WaitGroup // listeners and housekeeping
	cancel  context.CancelFunc
	closers []func() // what start opened, closed in reverse by stop
}

// binding is one listening address and what serves it.
type binding struct {
	l     net.Listener
	serve func(net.Listener) error
	what  string
}

// startDaemon opens the spool, starts every part and binds every address
// before serving any, so that a port in use is reported at once and
// nothing half-starts: on error, what was opened is closed again.
func startDaemon(ctx context.Context, logOut io.Writer, cfg Config) (_ *daemon, err error) {
	d := &daemon{level: new(slog.LevelVar), cfg: cfg}
	d.log = newLogger(cfg.Log, d.level, logOut)
	d.log.Info("postie starting", "version", version, "hostname", cfg.Hostname, "domains", cfg.Domains, "data_dir", cfg.DataDir)
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	for _, f := range checkFileModes(cfg) {
		if f.fatal {
			return nil, fmt.Errorf("refusing to start: %s", f)
		}
		d.log.Warn("file permissions", "path", f.path, "problem", f.problem, "fix", f.fix)
	}
	for _, step := range []func(context.Context) error{d.openSpool, d.startTLS, d.newServers, d.bind} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	d.serve(ctx)
	return d, nil
}

// openSpool opens and verifies the spool, and the control socket and the
// metrics that read it.
func (d *daemon) openSpool(context.Context) error {
	if err := durable.MkdirAll(d.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	opts := d.cfg.Spool
	opts.Logger = d.log.With("part", "spool")
	store, err := spool.Open(opts)
	if err != nil {
		return err
	}
	d.store = store
	d.closers = append(d.closers, func() { store.Close() })
	if problems := store.Verify(); len(problems) > 0 {
		for _, p := range problems {
			d.log.Error("spool verification failed", "problem", p)
		}
		return fmt.Errorf("the spool %s fails verification (%s, first: %v); refusing to serve it. Restore a backup, or see README.md (Recovery)", opts.Path, plural.Count(len(problems), "problem"), problems[0])
	}
	// The counters are kept whether or not they are served: "postie
	// status" shows the SMTP counts. The collectors only run at a scrape.
	d.mon = metrics.New()
	d.mon.Register(metrics.NewSpoolCollector(store, d.cfg.Watchdog.FetchOverdue.D()))
	ctl, err := control.Listen(filepath.Join(d.cfg.DataDir, control.SocketName), store, d.log.With("part", "control"))
	if err != nil {
		return err
	}
	d.ctl = ctl
	d.closers = append(d.closers, func() { ctl.Close() })
	return nil
}

// startTLS makes the one DNS resolver ("postie local" has no network) and
// starts the certificate manager, with autoconfig on its HTTPS port.
func (d *daemon) startTLS(ctx context.Context) error {
	cfg := d.cfg
	d.dns = resolver.Offline()
	if !cfg.local {
		dns, err := resolver.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
		if err != nil {
			return err
		}
		d.dns = resolver.Cache(dns, cfg.DNS.CacheEntries, cfg.DNS.CacheMaxTTL.D())
	}
	var web http.Handler
	tlsCfg := cfg.TLS // d.cfg stays as read, for comparing at reload
	if cfg.Autoconfig.Enabled {
		ac := autoconfig.New(cfg.Hostname, cfg.pop3sPort(), cfg.Domains)
		tlsCfg.ExtraNames = slices.Concat(cfg.TLS.ExtraNames, ac.Names())
		web = ac
	}
	tlsm, err := tlsauto.New(tlsCfg, tlsauto.Deps{Logger: d.log.With("part", "tls"), Web: web, Resolver: d.dns})
	if err != nil {
		return err
	}
	if err := tlsm.Start(ctx); err != nil {
		return err
	}
	d.tls = tlsm
	d.closers = append(d.closers, func() { tlsm.Close() })
	d.mon.Register(metrics.NewCertCollector(tlsm.Certificate))
	return nil
}

// newServers makes the SMTP and POP3 servers.
func (d *daemon) newServers(context.Context) error {
	cfg := d.cfg
	smtp, err := smtpin.New(cfg.SMTP, smtpin.Deps{Store: d.store, Resolver: d.dns, TLS: d.tls.TLSConfig(), TLSReady: d.tls.Ready, Logger: d.log.With("part", "smtp"), Metrics: d.mon, NoDNS: d.cfg.local})
	if err != nil {
		return err
	}
	// RFC 5321 §4.5.1: postmaster mail must be accepted; say where it goes.
	if pm, err := smtp.Postmaster(); err != nil {
		d.log.Warn("postmaster mail cannot be delivered yet; it gets 451 until this is fixed", "err", err)
	} else if cfg.Postmaster != "" {
		d.log.Info("postmaster mail goes to the postmaster account", "account", pm)
	} else {
		d.log.Info("postmaster mail goes to the first account in address order (set postmaster to choose)", "account", pm)
	}
	pop, err := pop3out.New(cfg.POP3, pop3out.Deps{Store: d.store, TLS: d.tls.TLSConfig(), TLSReady: d.tls.Ready, Logger: d.log.With("part", "pop3"), Metrics: d.mon})
	if err != nil {
		return err
	}
	d.smtp, d.pop = smtp, pop
	// What "postie status" shows of the running server beyond the spool.
	started := time.Now()
	d.ctl.SetLive(func() control.Live {
		l := control.Live{Started: started}
		l.Received, l.Refused = d.mon.SMTPCounts()
		if leaf, ok := d.tls.Certificate(); ok && leaf != nil {
			l.CertExpiry, l.CertNames = leaf.NotAfter, leaf.DNSNames
		}
		return l
	})
	return nil
}

// bind listens on every address of every service.
func (d *daemon) bind(context.Context) error {
	cfg := d.cfg
	listen := func(addrs []string, what string, fn func(net.Listener) error) error {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			d.bindings = append(d.bindings, binding{l, fn, what})
			d.closers = append(d.closers, func() { l.Close() })
		}
		return nil
	}
	err := errors.Join(
		listen(cfg.SMTP.Listen, "smtp", d.smtp.Serve),
		listen(cfg.POP3.Listen, "pop3", d.pop.Serve),
		listen(cfg.POP3.ListenTLS, "pop3s", d.pop.ServeTLS),
	)
	if err == nil && cfg.Metrics.Listen != "" {
		if d.metricsL, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		l := d.metricsL
		d.closers = append(d.closers, func() { l.Close() })
	}
	return err
}

// serve starts serving every binding, the metrics and the housekeeping.
func (d *daemon) serve(ctx context.Context) {
	ctx, d.cancel = context.WithCancel(ctx)
	for _, b := range d.bindings {
		d.log.Info("listening", "service", b.what, "addr", b.l.Addr().String())
		d.serving.Go(func() {
			if err := b.serve(b.l); err != nil {
				d.log.Error("listener stopped", "service", b.what, "err", err)
			}
		})
	}
	if d.metricsL != nil {
		d.log.Info("listening", "service", "metrics", "addr", d.metricsL.Addr().String())
		d.serving.Go(func() {
			healthy := func() error { _, err := d.store.Stats(); return err }
			if err := d.mon.Serve(ctx, d.metricsL, healthy, d.log); err != nil {
				d.log.Error("metrics listener stopped", "err", err)
			}
		})
	}
	// Time-based removal (device idleness, retention) and the fetch
	// watchdog run whether or not metrics are served.
	d.serving.Go(func() {
		d.store.Housekeeping(ctx, spool.HousekeepingOptions{
			FetchOverdue: d.cfg.Watchdog.FetchOverdue.D(),
			QuotaWarning: d.cfg.Watchdog.QuotaWarning,
			Greylist:     d.smtp.GreylistOptions,
			Logger:       d.log.With("part", "watchdog"),
		})
	})
}

// reload applies next to the running parts where that is safe and records
// the config now in force: the parts that reloaded take theirs from
// next, the rest (and a part whose reload failed) keep running's. Each part
// reports which of its keys changed and which need a restart; the keys of
// the tables main wires at start (data_dir, hostname, [dns], [spool],
// [tls], [metrics], [watchdog], [autoconfig], log.format) always need one.
// One log line says what took effect and what waits for a restart.
func (d *daemon) reload(next Config) {
	log, running, smtp, pop := d.log, d.cfg, d.smtp, d.pop
	inForce := running
	var reports []confkit.Report
	if rep, err := smtp.Reload(next.SMTP); err != nil {
		log.Error("smtp reload failed; keeping its running config", "err", err)
	} else {
		reports = append(reports, rep)
		inForce.SMTP = next.SMTP
		// Copied into [smtp] by spread: they took effect with it.
		inForce.Domains, inForce.Aliases, inForce.PlusSeparator, inForce.Postmaster = next.Domains, next.Aliases, next.PlusSeparator, next.Postmaster
	}
	if rep, err := pop.Reload(next.POP3); err != nil {
		log.Error("pop3 reload failed; keeping its running config", "err", err)
	} else {
		reports = append(reports, rep)
		inForce.POP3 = next.POP3
	}
	if l, err := parseLevel(next.Log.Level); err == nil {
		d.level.Set(l)
		inForce.Log.Level = next.Log.Level
	}
	// The keys no part reported: those applied above, or fixed at start.
	var own []string
	for _, k := range confkit.Changed("", running, next) {
		if !strings.HasPrefix(k, "smtp.") && !strings.HasPrefix(k, "pop3.") {
			own = append(own, k)
		}
	}
	reports = append(reports, confkit.NewReport(own, "data_dir", "hostname", "dns", "spool", "tls", "metrics", "watchdog", "autoconfig", "log.format"))
	rep := confkit.Merge(reports...)
	switch {
	case len(rep.Restart) > 0:
		log.Warn("config reloaded; some changes need a restart to take effect", "applied", rep.Applied(), "restart", rep.Restart)
	case len(rep.Changed) > 0:
		log.Info("config reloaded", "applied", rep.Applied())
	default:
		log.Info("config reloaded; nothing changed")
	}
	d.cfg = inForce
}

// stop shuts down in order: both servers stop accepting and give the
// sessions in flight 30 seconds, then housekeeping and metrics end, and
// the spool is closed last.
func (d *daemon) stop() {
	d.log.Info("shutting down: no new connections; sessions in flight have 30s to finish (a second signal stops at once)")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { d.smtp.Shutdown(ctx) })
	wg.Go(func() { d.pop.Shutdown(ctx) })
	wg.Wait()
	d.cancel()
	d.serving.Wait()
	d.close()
	d.log.Info("stopped")
}

// close closes what start opened, last first.
func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// newLogger makes the process's logger, at a level that reload can change.
func newLogger(c LogConfig, level *slog.LevelVar, w io.Writer) *slog.Logger {
	l, _ := parseLevel(c.Level)
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
