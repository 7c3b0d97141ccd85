package spool

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/crypto/argon2"
)

// HashParams are argon2id parameters (RFC 9106).
type HashParams struct {
	Time    uint32 // passes
	Memory  uint32 // KiB
	Threads uint8
}

// DefaultHashParams returns the parameters for new password hashes: the
// OWASP-recommended argon2id setting of 19 MiB and 2 passes, which takes
// tens of milliseconds on a small VPS.
func DefaultHashParams() HashParams { return HashParams{Time: 2, Memory: 19 * 1024, Threads: 1} }

// MinPasswordLength is the shortest password an account may have.
const MinPasswordLength = 10

// ErrWeakPassword means a password is empty or too short.
var ErrWeakPassword = fmt.Errorf("spool: password too weak: use at least %d characters", MinPasswordLength)

// CheckPasswordStrength refuses empty and short passwords.
func CheckPasswordStrength(pw string) error {
	if len([]rune(strings.TrimSpace(pw))) < MinPasswordLength {
		return ErrWeakPassword
	}
	return nil
}

func hashConcurrency() int { return runtime.GOMAXPROCS(0) }

// hashPassword returns the PHC string of an argon2id hash of pw:
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
func hashPassword(pw string, p HashParams) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("spool: read random salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

var errBadHash = errors.New("spool: unrecognised password hash")

// checkPassword reports whether pw matches the PHC string h, comparing in
// constant time.
func checkPassword(h, pw string) (bool, error) {
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var p HashParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return false, errBadHash
	}
	if p.Memory == 0 || p.Memory > 1<<20 || p.Time == 0 || p.Time > 64 || p.Threads == 0 {
		return false, errBadHash
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 128 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
