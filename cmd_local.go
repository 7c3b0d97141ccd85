package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/postie/postie/internal/durable"
	"github.com/postie/postie/spool"
)

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
	ctx, stop := stopOnSignal() // a second Ctrl-C stops at once
	defer stop()
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
	if err := durable.MkdirAll(cfg.DataDir, 0o700); err != nil {
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
