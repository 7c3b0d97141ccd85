// Package passpolicy decides whether a password an owner chooses for an
// account is strong enough: long enough, not the address or its local
// part, and not guessable in fewer than 10^8 tries by zxcvbn's estimate
// (github.com/trustelem/zxcvbn, a port of Dropbox's zxcvbn with its lists
// of common passwords, names, words and keyboard patterns). Guessing over
// POP3 is throttled to a few tries a minute per account, so 10^8 tries is
// decades; the estimate also keeps a stolen spool file's hashes from
// giving way to a dictionary.
//
// Device passwords are random (spool.AddDevice) and are not checked here.
package passpolicy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/trustelem/zxcvbn"

	"github.com/postie/postie/spool"
)

// minScore is the lowest zxcvbn score accepted: 3 means at least 10^8
// guesses.
const minScore = 3

// ErrWeak wraps every refusal, so callers can tell it from other errors.
var ErrWeak = errors.New("password too weak")

// Check returns nil if password is acceptable for the account addr, or an
// error wrapping ErrWeak that says what is wrong and what to do.
func Check(password, addr string) error {
	pw := strings.TrimSpace(password)
	if err := spool.CheckPasswordStrength(pw); err != nil {
		return fmt.Errorf("%w: use at least %d characters", ErrWeak, spool.MinPasswordLength)
	}
	local, domain, _ := strings.Cut(strings.ToLower(addr), "@")
	switch strings.ToLower(pw) {
	case strings.ToLower(addr), local:
		return fmt.Errorf("%w: it is the address itself", ErrWeak)
	}
	r := zxcvbn.PasswordStrength(pw, []string{addr, local, domain, "postie", "mail", "pop3"})
	if r.Score < minScore {
		return fmt.Errorf("%w: it could be guessed in about %.0e tries (common words, names, dates, repeats and keyboard patterns are tried first); use a longer passphrase of unrelated words, or let a password manager make one", ErrWeak, r.Guesses)
	}
	return nil
}
