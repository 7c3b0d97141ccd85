package authcheck

import (
	"context"
	"net"
)

// Resolver is the DNS interface the checks need. *net.Resolver satisfies
// it, and so does anything that satisfies blitiri.com.ar/go/spf's
// DNSResolver.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// lookupTXT adapts r to the context-free lookup functions of go-msgauth.
// The error is passed through unwrapped: go-msgauth tells temporary
// failures from permanent ones by asserting net.Error on it.
func lookupTXT(ctx context.Context, r Resolver) func(string) ([]string, error) {
	return func(name string) ([]string, error) { return r.LookupTXT(ctx, name) }
}
