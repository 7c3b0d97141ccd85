package tlsauto

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// mtaSTSPath is where senders fetch the policy (RFC 8461 §3.3).
const mtaSTSPath = "/.well-known/mta-sts.txt"

// MTASTSPolicy returns the MTA-STS policy served at
// https://mta-sts.<domain>/.well-known/mta-sts.txt for every domain, or nil
// when MTA-STS is off. The policy is the same for all domains, since they
// share one MX (RFC 8461 §3.2; lines end in CRLF):
//
//	version: STSv1
//	mode: enforce
//	mx: mail.example.com
//	max_age: 604800
func (c *Config) MTASTSPolicy() []byte {
	if !c.mtaSTSOn() {
		return nil
	}
	b := make([]byte, 0, 96)
	b = append(b, "version: STSv1\r\nmode: "...)
	b = append(b, c.MTASTSMode...)
	b = append(b, "\r\nmx: "...)
	b = append(b, normalName(c.Hostname)...)
	b = append(b, "\r\nmax_age: "...)
	b = strconv.AppendInt(b, int64(c.MTASTSMaxAge.D().Seconds()), 10)
	b = append(b, "\r\n"...)
	return b
}

// MTASTSPolicyID returns the id to publish in each domain's TXT record,
// or "" when MTA-STS is off:
//
//	_mta-sts.example.com. IN TXT "v=STSv1; id=<id>"
//
// RFC 8461 §3.1: senders fetch the policy again only when the id changes,
// so it is derived from the policy text (20 hex digits of its SHA-256):
// it changes exactly when the policy does, and needs no state.
func (c *Config) MTASTSPolicyID() string {
	p := c.MTASTSPolicy()
	if p == nil {
		return ""
	}
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:10])
}
