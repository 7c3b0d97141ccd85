package authcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/postie/postie/internal/dnsname"
)

// DKIM is the verdict on one DKIM-Signature field.
type DKIM struct {
	Result Result
	// Domain is the signing domain (d=), normalized: the DKIM identifier
	// DMARC aligns with the author domain.
	Domain string
	// Selector (s=) and the first characters of the signature (b=, RFC
	// 6008), to tell signatures apart in Authentication-Results.
	Selector, B string
	// Err is the cause of a result other than pass, for the log.
	Err error
}

// errVerifierDone ends the pipe when verification stops reading early.
var errVerifierDone = errors.New("authcheck: dkim verification finished")

// DKIMVerifier verifies the signatures of a message written into it, as
// the message streams by: nothing is buffered beyond the header section.
// Write it the whole message (header and body), then call Close for the
// verdicts. Its methods are not safe for concurrent use.
type DKIMVerifier struct {
	pw      *io.PipeWriter
	stopped bool // the verifier stopped reading; further writes are dropped
	done    chan struct{}
	sigs    []string
	results []DKIM
}

// NewDKIMVerifier starts verifying a message whose DKIM-Signature field
// values are sigs, in header order. At most max signatures are verified
// (go-msgauth verifies any number unless told); the others get
// permerror. Key lookups go through r under ctx.
func NewDKIMVerifier(ctx context.Context, r Resolver, sigs []string, max int) *DKIMVerifier {
	pr, pw := io.Pipe()
	v := &DKIMVerifier{pw: pw, done: make(chan struct{}), sigs: sigs}
	go func() {
		defer close(v.done)
		defer recovered("dkim", func(err error) {
			pr.CloseWithError(errVerifierDone)
			v.results = verdicts(v.sigs, nil, err)
		})
		verifs, err := dkim.VerifyWithOptions(pr, &dkim.VerifyOptions{LookupTXT: lookupTXT(ctx, r), MaxVerifications: max})
		// Unblock the writer if the verifier returned before reading all.
		pr.CloseWithError(errVerifierDone)
		v.results = v.convert(verifs, err)
	}()
	return v
}

// Write passes p to the verifier. It never fails: a verifier that has
// stopped reading (a malformed signature needs no body) drops the rest.
func (v *DKIMVerifier) Write(p []byte) (int, error) {
	if v.stopped {
		return len(p), nil
	}
	if _, err := v.pw.Write(p); err != nil {
		v.stopped = true
	}
	return len(p), nil
}

// Close ends the message and returns one verdict per signature, in header
// order. It waits for key lookups still running, which ctx bounds.
func (v *DKIMVerifier) Close() []DKIM {
	v.pw.Close()
	<-v.done
	return v.results
}

// Abort stops the verification without waiting for verdicts.
func (v *DKIMVerifier) Abort() {
	v.pw.CloseWithError(errVerifierDone)
}

func (v *DKIMVerifier) convert(verifs []*dkim.Verification, err error) []DKIM {
	return verdicts(v.sigs, verifs, err)
}

// Unverifiable returns a permerror verdict with cause err for each of sigs,
// for a message whose signatures are not worth verifying (its header is
// malformed in a way that would make the verifier work for nothing).
func Unverifiable(sigs []string, err error) []DKIM {
	return verdicts(sigs, nil, err)
}

func verdicts(sigs []string, verifs []*dkim.Verification, err error) []DKIM {
	out := make([]DKIM, len(sigs))
	for i, sig := range sigs {
		tags := parseTags(sig)
		out[i] = DKIM{Domain: dnsname.Normalize(tags["d"]), Selector: tags["s"], B: tags["b"]}
		if len(out[i].B) > 8 {
			out[i].B = out[i].B[:8]
		}
		switch {
		case i < len(verifs):
			out[i].Result, out[i].Err = dkimResult(verifs[i].Err)
		case err != nil && !errors.Is(err, dkim.ErrTooManySignatures):
			// The message could not be read as a header and a body.
			out[i].Result, out[i].Err = PermError, err
		default:
			out[i].Result, out[i].Err = PermError, dkim.ErrTooManySignatures
		}
	}
	return out
}

func dkimResult(err error) (Result, error) {
	switch {
	case err == nil:
		return Pass, nil
	case dkim.IsTempFail(err):
		return TempError, err
	case dkim.IsPermFail(err):
		return PermError, err
	}
	return Fail, err
}

// parseTags reads the tag=value list of a DKIM-Signature (RFC 6376
// §3.2). Whitespace inside values is removed, as it is folding.
func parseTags(s string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		k, val, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; dup || k == "" {
			continue
		}
		tags[k] = strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, val)
	}
	return tags
}

// recovered, deferred by each check, turns a panic in a library that parses
// what a stranger sent (a header, a DNS record) into a verdict through
// fail: one message gets permerror instead of the process going down with
// every session in it.
func recovered(check string, fail func(error)) {
	if p := recover(); p != nil {
		fail(fmt.Errorf("%s check panicked: %v", check, p))
	}
}
