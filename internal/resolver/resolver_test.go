package resolver

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestOfflineFailsAtOnceAndTemporarily(t *testing.T) {
	r := Offline()
	start := time.Now()
	_, err := r.LookupTXT(context.Background(), "example.com")
	var de *net.DNSError
	if !errors.As(err, &de) {
		t.Fatalf("LookupTXT: %v, want a *net.DNSError", err)
	}
	if de.IsNotFound {
		t.Fatalf("offline lookup says not found (would be a permanent verdict): %v", de)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("offline lookup took %v", time.Since(start))
	}
}

func TestBadServer(t *testing.T) {
	if _, err := New("127.0.0.1", time.Second); err == nil {
		t.Fatal("server without a port accepted")
	}
}
