package tlsauto

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// TestLifecycle: New refuses an invalid config and a missing logger,
// Start refuses a port it cannot bind (naming the key) and a second call,
// Close is idempotent.
func TestLifecycle(t *testing.T) {
	ca := testutil.NewCA(t)
	certFile, keyFile := testutil.WriteFiles(t, t.TempDir(), ca.Issue(t, "mx.example.test"))
	cfg := filesConfig(t, certFile, keyFile)

	if _, err := New(cfg, Deps{}); err == nil {
		t.Error("New without a logger")
	}
	bad := cfg
	bad.Mode = "manual"
	if _, err := New(bad, Deps{Logger: discard()}); err == nil || !strings.Contains(err.Error(), "tls.mode") {
		t.Errorf("New with a bad mode: %v", err)
	}

	taken := listen127(t)
	defer taken.Close()
	busy := cfg
	busy.HTTPListen, busy.HTTPSListen = "127.0.0.1:0", taken.Addr().String()
	// A web handler (autoconfig) makes the listeners needed in files mode.
	web := http.NotFoundHandler()
	m, err := New(busy, Deps{Logger: discard(), Web: web})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "tls.https_listen") {
		t.Errorf("Start on a taken port: %v", err)
	}
	m.Close()

	cfg.HTTPListen, cfg.HTTPSListen = "127.0.0.1:0", "127.0.0.1:0"
	m, err = New(cfg, Deps{Logger: discard(), Web: web})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m.HTTPAddr() == nil || m.HTTPSAddr() == nil {
		t.Error("no listener addresses after Start")
	}
	if err := m.Start(context.Background()); err == nil {
		t.Error("second Start")
	}
	if err := m.Close(); err != nil {
		t.Error(err)
	}
	if err := m.Close(); err != nil {
		t.Error("second Close:", err)
	}
	if err := m.Start(context.Background()); err == nil {
		t.Error("Start after Close")
	}
}
