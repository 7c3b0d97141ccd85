package authcheck

import (
	"context"
	"net"
	"strings"
	"testing"
)

// panicky is a resolver that panics, standing in for a library that panics
// on what a stranger sent: the check must end in permerror, not take the
// process down.
type panicky struct{}

func (panicky) LookupTXT(context.Context, string) ([]string, error) { panic("boom") }
func (panicky) LookupMX(context.Context, string) ([]*net.MX, error) { panic("boom") }
func (panicky) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) {
	panic("boom")
}
func (panicky) LookupAddr(context.Context, string) ([]string, error) { panic("boom") }

func TestPanicBecomesPermError(t *testing.T) {
	ctx := context.Background()
	spf := CheckSPF(ctx, panicky{}, net.ParseIP("192.0.2.1"), "helo.example", "a@sender.example")
	if spf.Result != PermError || spf.Err == nil || !strings.Contains(spf.Err.Error(), "spf check panicked") {
		t.Errorf("spf: %+v", spf)
	}
	rec := LookupDMARC(ctx, panicky{}, "sender.example")
	if rec.Result != PermError || rec.Domain != "sender.example" || rec.Err == nil {
		t.Errorf("dmarc: %+v", rec)
	}
	sig := "v=1; a=ed25519-sha256; d=sender.example; s=k1; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA"
	v := NewDKIMVerifier(ctx, panicky{}, []string{sig}, 5)
	v.Write([]byte("DKIM-Signature: " + sig + "\r\nFrom: a@sender.example\r\n\r\nbody\r\n"))
	got := v.Close()
	if len(got) != 1 || got[0].Result != PermError || got[0].Err == nil || !strings.Contains(got[0].Err.Error(), "dkim check panicked") {
		t.Errorf("dkim: %+v", got)
	}
}
