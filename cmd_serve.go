package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"
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
	ctx, stop := stopOnSignal()
	defer stop()
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

	d, err := startDaemon(ctx, env.stderr, cfg)
	if err != nil {
		return err
	}
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
				d.log.Error("reload failed; keeping the running config", "err", err)
				continue
			}
			d.reload(next)
		}
	}
	d.stop()
	return nil
}

// stopOnSignal returns a context that ends at the first SIGINT or SIGTERM.
// Before it ends, the signals get their default action back, so that a
// second one ends the process at once, however soon it comes (bbolt's file
// stays consistent: nothing accepted is lost).
func stopOnSignal() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-sig:
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(sig)
		cancel()
	}
}
