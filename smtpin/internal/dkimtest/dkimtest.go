// Package dkimtest makes DKIM keys and signatures for smtpin's tests:
// freshly generated keys, their DNS records, and messages signed with
// go-msgauth's dkim. Nothing outside tests imports it.
package dkimtest

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// Key is a signing key for one domain and selector.
type Key struct {
	Domain, Selector string
	Signer           crypto.Signer
}

// NewRSA makes a fresh 2048-bit RSA key.
func NewRSA(t testing.TB, domain, selector string) *Key {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{Domain: domain, Selector: selector, Signer: k}
}

// NewEd25519 makes a fresh Ed25519 key (RFC 8463).
func NewEd25519(t testing.TB, domain, selector string) *Key {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{Domain: domain, Selector: selector, Signer: k}
}

// RecordName is where the key's record lives: <selector>._domainkey.<domain>.
func (k *Key) RecordName() string { return k.Selector + "._domainkey." + k.Domain }

// Record is the key's DNS TXT record (RFC 6376 §3.6.1).
func (k *Key) Record(t testing.TB) string {
	t.Helper()
	switch pub := k.Signer.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	}
	t.Fatalf("dkimtest: unknown key type %T", k.Signer)
	return ""
}

// Sign returns msg (CRLF line endings) with a DKIM-Signature field added
// at the top, signing From, To and Subject with relaxed/relaxed
// canonicalization.
func (k *Key) Sign(t testing.TB, msg string) string {
	t.Helper()
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.Signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             []string{"From", "To", "Subject"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}
