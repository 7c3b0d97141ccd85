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

// TestRefusingServerRestsAMoment: once the DNS server refused (nothing
// listens on its port), lookups fail at once for a second without asking
// it; then it is asked again.
func TestRefusingServerRestsAMoment(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	r, err := New(addr, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.LookupTXT(context.Background(), "example.com"); err == nil {
		t.Fatal("a lookup succeeded with nothing listening")
	}
	// Now something listens; it must not be asked within the second.
	pc, err = net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	defer pc.Close()
	got := make(chan struct{}, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	start := time.Now()
	if _, err := r.LookupTXT(context.Background(), "example.com"); err == nil {
		t.Fatal("a lookup succeeded")
	}
	if time.Since(start) > 200*time.Millisecond {
		t.Errorf("a lookup right after a refusal took %v; it should fail at once", time.Since(start))
	}
	select {
	case <-got:
		t.Fatal("the server was asked again within a second of refusing")
	case <-time.After(100 * time.Millisecond):
	}
	time.Sleep(refusedFor)
	r.LookupTXT(context.Background(), "example.com") // times out: the listener never answers
	select {
	case <-got:
	case <-time.After(2 * time.Second):
		t.Fatal("the server was not asked again after the pause")
	}
}
