package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postie/postie/internal/autoconfig"
	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/control"
	"github.com/postie/postie/internal/metrics"
	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/pop3out"
	"github.com/postie/postie/smtpin"
	"github.com/postie/postie/spool"
	"github.com/postie/postie/tlsauto"
)

func cmdServe(env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config := fs.String("config", defaultConfigPath, "config file")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) > 0 {
		return errUsage
	}
	cfg, err := LoadConfig(*config)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal a second one ends the process at once
	// (bbolt's file stays consistent: nothing accepted is lost).
	context.AfterFunc(ctx, stop)
	return serve(ctx, env, cfg, func() (Config, error) { return LoadConfig(*config) }, nil)
}

// serve runs every part the config enables until ctx ends, then shuts down:
// listeners first, sessions in flight get a bounded time to finish, and the
// spool is closed last. SIGHUP reloads what can be reloaded. ready, if not
// nil, runs once every listener is up.
func serve(ctx context.Context, env *cliEnv, cfg Config, reload func() (Config, error), ready func()) error {
	// Catch SIGHUP from the start: its default action ends the process, and
	// a reload sent while a large spool is being verified must wait, not
	// stop the server (systemd does not restart a process that SIGHUP
	// ended, as that counts as a clean exit).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, level, env.stderr)
	log.Info("postie starting", "version", version, "hostname", cfg.Hostname, "domains", cfg.Domains, "data_dir", cfg.DataDir)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	opts := cfg.Spool
	opts.Logger = log.With("part", "spool")
	store, err := spool.Open(opts)
	if err != nil {
		return err
	}
	defer store.Close()
	if problems := store.Verify(); len(problems) > 0 {
		for _, p := range problems {
			log.Error("spool verification failed", "problem", p)
		}
		return fmt.Errorf("the spool %s fails verification (%d problems, first: %v); refusing to serve it. Restore a backup, or see README.md (Recovery)", opts.Path, len(problems), problems[0])
	}

	// Metrics are collected only when they are served.
	var mon *metrics.Metrics
	if cfg.Metrics.Listen != "" {
		mon = metrics.New()
		mon.Register(metrics.NewSpoolCollector(store, cfg.Watchdog.FetchOverdue.D()))
	}

	ctl, err := control.Listen(filepath.Join(cfg.DataDir, control.SocketName), store, log.With("part", "control"))
	if err != nil {
		return err
	}
	defer ctl.Close()

	// One resolver for every lookup; "postie local" has no network.
	dns := resolver.Offline()
	if !cfg.local {
		if dns, err = resolver.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D()); err != nil {
			return err
		}
		dns = resolver.Cache(dns, cfg.DNS.CacheEntries, cfg.DNS.CacheMaxTTL.D())
	}

	var web http.Handler
	tlsCfg := cfg.TLS // cfg itself stays as read, for comparing at reload
	if cfg.Autoconfig.Enabled {
		ac := autoconfig.New(cfg.Hostname, pop3sPort(cfg), cfg.Domains)
		tlsCfg.ExtraNames = slices.Concat(cfg.TLS.ExtraNames, ac.Names())
		web = ac
	}
	tlsm, err := tlsauto.New(tlsCfg, tlsauto.Deps{Logger: log.With("part", "tls"), Web: web, Resolver: dns})
	if err != nil {
		return err
	}
	if err := tlsm.Start(ctx); err != nil {
		return err
	}
	defer tlsm.Close()
	mon.Register(metrics.NewCertCollector(tlsm.Certificate))

	smtp, err := smtpin.New(cfg.SMTP, smtpin.Deps{Store: store, Resolver: dns, TLS: tlsm.TLSConfig(), TLSReady: tlsm.Ready, Logger: log.With("part", "smtp"), Metrics: mon})
	if err != nil {
		return err
	}
	// RFC 5321 §4.5.1: postmaster mail must be accepted; say where it goes.
	if pm, err := smtp.Postmaster(); err != nil {
		log.Warn("postmaster mail cannot be delivered yet; it gets 451 until this is fixed", "err", err)
	} else if cfg.Postmaster != "" {
		log.Info("postmaster mail goes to the postmaster account", "account", pm)
	} else {
		log.Info("postmaster mail goes to the first account in address order (set postmaster to choose)", "account", pm)
	}
	pop, err := pop3out.New(cfg.POP3, pop3out.Deps{Store: store, TLS: tlsm.TLSConfig(), TLSReady: tlsm.Ready, Logger: log.With("part", "pop3"), Metrics: mon})
	if err != nil {
		return err
	}

	// Listen on everything before serving anything, so a port in use is
	// reported at once and nothing half-starts.
	type binding struct {
		l     net.Listener
		serve func(net.Listener) error
		what  string
	}
	var bindings []binding
	listen := func(addrs []string, what string, fn func(net.Listener) error) error {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			bindings = append(bindings, binding{l, fn, what})
		}
		return nil
	}
	err = errors.Join(
		listen(cfg.SMTP.Listen, "smtp", smtp.Serve),
		listen(cfg.POP3.Listen, "pop3", pop.Serve),
		listen(cfg.POP3.ListenTLS, "pop3s", pop.ServeTLS),
	)
	var ml net.Listener
	if err == nil && mon != nil {
		if ml, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
			err = fmt.Errorf("metrics: %w", err)
		}
	}
	if err != nil {
		for _, b := range bindings {
			b.l.Close()
		}
		return err
	}
	var wg sync.WaitGroup
	for _, b := range bindings {
		log.Info("listening", "service", b.what, "addr", b.l.Addr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.serve(b.l); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("listener stopped", "service", b.what, "err", err)
			}
		}()
	}

	if ml != nil {
		log.Info("listening", "service", "metrics", "addr", ml.Addr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			healthy := func() error { _, err := store.Stats(); return err }
			if err := mon.Serve(ctx, ml, healthy, log); err != nil {
				log.Error("metrics listener stopped", "err", err)
			}
		}()
	}

	// Housekeeping: time-based removal (device idleness, retention) and the
	// fetch watchdog.
	watchdog := metrics.NewWatchdog(store, cfg.Watchdog.FetchOverdue.D(), cfg.Watchdog.QuotaWarning, log.With("part", "watchdog"))
	janitorDone := make(chan struct{})
	go func() {
		defer close(janitorDone)
		t := time.NewTicker(10 * time.Minute)
		defer t.Stop()
		for {
			if _, err := watchdog.Check(time.Now()); err != nil && ctx.Err() == nil {
				log.Error("watchdog failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := store.Sweep(ctx); err != nil && ctx.Err() == nil {
					log.Error("sweep failed", "err", err)
				}
			}
		}
	}()

	if ready != nil {
		ready()
	}
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-hup:
			if reload == nil {
				continue
			}
			next, err := reload()
			if err != nil {
				log.Error("reload failed; keeping the running config", "err", err)
				continue
			}
			cfg = applyReload(log, level, cfg, next, smtp, pop)
		}
	}

	log.Info("shutting down: no new connections; sessions in flight have 30s to finish (a second signal stops at once)")
	shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var swg sync.WaitGroup
	swg.Add(2)
	go func() { defer swg.Done(); smtp.Shutdown(shutdown) }()
	go func() { defer swg.Done(); pop.Shutdown(shutdown) }()
	swg.Wait()
	wg.Wait()
	<-janitorDone
	log.Info("stopped")
	return nil
}

// pop3sPort is the port of the first implicit-TLS POP3 address (995).
func pop3sPort(cfg Config) int {
	port := 995
	if len(cfg.POP3.ListenTLS) > 0 {
		if _, p, err := net.SplitHostPort(cfg.POP3.ListenTLS[0]); err == nil {
			fmt.Sscan(p, &port)
		}
	}
	return port
}

// applyReload applies next to the running parts where that is safe and
// returns the config now in force: the parts that reloaded take theirs from
// next, the rest (and a part whose reload failed) keep running's. Each part
// reports which of its keys changed and which need a restart; the keys of
// the tables main wires at start (data_dir, hostname, [dns], [spool],
// [tls], [metrics], [watchdog], [autoconfig], log.format) always need one.
// One log line says what took effect and what waits for a restart.
func applyReload(log *slog.Logger, level *slog.LevelVar, running, next Config, smtp *smtpin.Server, pop *pop3out.Server) Config {
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
		level.Set(l)
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
	return inForce
}

func newLogger(c LogConfig, level *slog.LevelVar, w io.Writer) *slog.Logger {
	l, _ := parseLevel(c.Level)
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// localDefaultDir is where "postie local" keeps its data.
const localDefaultDir = "postie-local"

// localAccount is the test account of "postie local".
const localAccount = "you@localhost"

// localConfig is the configuration of "postie local": loopback ports above
// 1024, a self-signed certificate, no DNS, domain localhost.
func localConfig(dir string) (Config, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Config{}, err
	}
	c := DefaultConfig()
	c.local = true
	c.Hostname, c.Domains, c.DataDir = "localhost", []string{"localhost"}, abs
	c.SMTP.Listen = []string{"127.0.0.1:2525"}
	c.POP3.Listen = []string{"127.0.0.1:1110"}
	c.POP3.ListenTLS = []string{"127.0.0.1:1995"}
	c.TLS.Mode = "self-signed"
	c.TLS.HTTPListen, c.TLS.HTTPSListen = "", ""
	c.spread()
	return c, c.Validate()
}

func cmdLocal(env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("local", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", localDefaultDir, "data directory")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) > 0 {
		return errUsage
	}
	cfg, err := localConfig(*dir)
	if err != nil {
		return err
	}
	pw, err := ensureLocalAccount(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C stops at once
	return serve(ctx, env, cfg, nil, func() {
		fmt.Fprintf(env.stdout, `
Postie is running on this machine (data in %s). Press Ctrl-C to stop.

  SMTP   127.0.0.1:2525  STARTTLS, self-signed certificate
  POP3   127.0.0.1:1110  STLS; plaintext login allowed on loopback
  POP3S  127.0.0.1:1995  TLS, self-signed certificate

  Account:   %s
  Password:  %s

Send it a message (swaks is a Debian package):
  swaks --server 127.0.0.1:2525 --tls --from friend@example.org --to %s --header "Subject: hello"

Fetch it (curl -k accepts the self-signed certificate):
  curl -k --user '%s:%s' pop3s://127.0.0.1:1995/1

`, cfg.DataDir, localAccount, pw, localAccount, localAccount, pw)
	})
}

// ensureLocalAccount creates the test account on the first run and keeps its
// password in the data directory (mode 0600), so every run can print it.
func ensureLocalAccount(cfg Config) (string, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", err
	}
	pwFile := filepath.Join(cfg.DataDir, "local-account-password")
	if b, err := os.ReadFile(pwFile); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	pw := strings.ToLower(rand.Text()[:16])
	s, err := spool.Open(cfg.Spool)
	if err != nil {
		return "", err
	}
	defer s.Close()
	err = s.AddAccount(context.Background(), localAccount, pw)
	if errors.Is(err, spool.ErrAccountExists) {
		err = s.SetPassword(context.Background(), localAccount, pw)
	}
	if err != nil {
		return "", err
	}
	return pw, os.WriteFile(pwFile, []byte(pw+"\n"), 0o600)
}
