package spool

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/postie/postie/internal/connlimit"
	"go.etcd.io/bbolt"
)

// accountRecord is an account as stored.
type accountRecord struct {
	Address string    `json:"address"`
	Hash    string    `json:"hash"` // argon2id PHC string of the account password
	Created time.Time `json:"created"`
	Quota   int64     `json:"quota,omitempty"` // bytes; 0: the store's default
	// LastLogin and LastIP record the account password's own logins: it is
	// device 0, the "single device" of an account without device passwords.
	LastLogin  time.Time      `json:"last_login,omitzero"`
	LastIP     string         `json:"last_ip,omitempty"`
	Devices    []deviceRecord `json:"devices,omitempty"`
	NextDevice uint32         `json:"next_device,omitempty"`
	// Networks are the client networks (connlimit.Network: an IPv4
	// address, an IPv6 /64) that logged in to the account, with the last
	// time: at most maxKnownNetworks, none older than knownNetworkAge.
	// Failures from elsewhere do not slow them down (KnownNetwork).
	Networks map[string]time.Time `json:"networks,omitempty"`
}

// The networks an account remembers, and for how long.
const (
	maxKnownNetworks = 32
	knownNetworkAge  = 30 * 24 * time.Hour
)

// rememberNetwork records a successful login from remoteIP's network,
// forgetting networks older than knownNetworkAge and, past
// maxKnownNetworks, the least recent.
func (a *accountRecord) rememberNetwork(remoteIP string, now time.Time) {
	ip, err := netip.ParseAddr(remoteIP)
	if err != nil {
		return
	}
	if a.Networks == nil {
		a.Networks = map[string]time.Time{}
	}
	a.Networks[connlimit.Network(ip).String()] = now
	for n, t := range a.Networks {
		if now.Sub(t) > knownNetworkAge {
			delete(a.Networks, n)
		}
	}
	for len(a.Networks) > maxKnownNetworks {
		oldest := ""
		for n, t := range a.Networks {
			if oldest == "" || t.Before(a.Networks[oldest]) {
				oldest = n
			}
		}
		delete(a.Networks, oldest)
	}
}

// KnownNetwork reports whether a client at ip logged in to the account
// addr successfully within the last 30 days (from ip's network: the
// address itself, or its IPv6 /64). An unknown account has no known
// networks.
func (s *Store) KnownNetwork(addr string, ip netip.Addr) (bool, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return false, nil
	}
	known := false
	err = s.view(func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if errors.Is(err, ErrNoSuchAccount) {
			return nil
		}
		if err != nil {
			return err
		}
		t, ok := a.Networks[connlimit.Network(ip).String()]
		known = ok && s.opts.Now().Sub(t) <= knownNetworkAge
		return nil
	})
	return known, err
}

// deviceRecord is one device password of an account.
type deviceRecord struct {
	ID        uint32    `json:"id"`
	Name      string    `json:"name"`
	TokenHash string    `json:"token_sha256"` // hex SHA-256 of the random password
	Created   time.Time `json:"created"`
	// FirstUID is the first UID of the mailbox the device sees: the next
	// one when it was added, taken in the same transaction, so that what
	// it sees follows the order of commits, not of clock readings.
	// Records from before it (0) compare arrival and creation times.
	FirstUID  uint64    `json:"first_uid,omitempty"`
	All       bool      `json:"all,omitempty"` // sees mail that arrived before it was added
	LastLogin time.Time `json:"last_login,omitzero"`
	LastIP    string    `json:"last_ip,omitempty"`
}

// Login is who authenticated: an account, and the device whose password was
// used (0 and "" for the account password).
type Login struct {
	Account    string
	Device     uint32
	DeviceName string
}

// AccountInfo describes an account for listings.
type AccountInfo struct {
	Address  string
	Created  time.Time
	Quota    int64 // effective limit in bytes; 0: none
	Messages int   // messages in the mailbox, retained ones included
	Bytes    int64 // their total size
	// QuotaUsed is what counts against Quota: Bytes less the retained
	// mail, which the owner deleted. Computed only when there is a quota.
	QuotaUsed int64
	LastLogin time.Time
	LastIP    string
	Devices   int
}

// NormalizeAddress returns the canonical form of an account address: the
// whole address in lower case, with the local part and domain checked for
// shape. It does not check that the domain is one of ours.
func NormalizeAddress(addr string) (string, error) {
	a := strings.ToLower(strings.TrimSpace(addr))
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return "", fmt.Errorf("invalid address %q: want local@domain", addr)
	}
	if len(a) > 254 || at > 64 {
		return "", fmt.Errorf("invalid address %q: too long", addr)
	}
	if !utf8.ValidString(a) {
		return "", fmt.Errorf("invalid address %q: not UTF-8", addr)
	}
	for _, r := range a {
		if r <= ' ' || r == 0x7f || unicode.IsSpace(r) || strings.ContainsRune(`"\<>()[],;:%!`, r) {
			return "", fmt.Errorf("invalid address %q: %q is not allowed in an account address", addr, r)
		}
	}
	if strings.Contains(a[:at], "@") {
		return "", fmt.Errorf("invalid address %q: more than one @", addr)
	}
	return a, nil
}

func (s *Store) hash(pw string) (string, error) {
	s.hashSem <- struct{}{}
	defer func() { <-s.hashSem }()
	return hashPassword(pw, s.opts.HashParams)
}

func (s *Store) check(h, pw string) (bool, error) {
	s.hashSem <- struct{}{}
	defer func() { <-s.hashSem }()
	return checkPassword(h, pw)
}

func getAccount(tx *bbolt.Tx, addr string) (*accountRecord, error) {
	v := tx.Bucket(bucketAccounts).Get([]byte(addr))
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoSuchAccount, addr)
	}
	var a accountRecord
	if err := decode("account", v, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

func putAccount(tx *bbolt.Tx, a *accountRecord) error {
	return tx.Bucket(bucketAccounts).Put([]byte(a.Address), encode(a))
}

// AddAccount creates an account with the given password and an empty
// mailbox.
func (s *Store) AddAccount(ctx context.Context, addr, password string) error {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return err
	}
	if err := CheckPasswordStrength(password); err != nil {
		return err
	}
	h, err := s.hash(password)
	if err != nil {
		return err
	}
	now := s.opts.Now()
	return s.update(ctx, 0, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketAccounts).Get([]byte(addr)) != nil {
			return fmt.Errorf("%w: %s", ErrAccountExists, addr)
		}
		mb := tx.Bucket(bucketMailboxes)
		if mb.Bucket([]byte(addr)) != nil {
			// A mailbox without an account is left from an interrupted
			// deletion; a new account starts empty.
			if err := deleteMailbox(tx, addr); err != nil {
				return err
			}
		}
		if _, err := mb.CreateBucket([]byte(addr)); err != nil {
			return fmt.Errorf("spool: create mailbox %s: %w", addr, err)
		}
		return putAccount(tx, &accountRecord{Address: addr, Hash: h, Created: now})
	})
}

// SetPassword changes an account's password. Device passwords are not
// touched.
func (s *Store) SetPassword(ctx context.Context, addr, password string) error {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return err
	}
	if err := CheckPasswordStrength(password); err != nil {
		return err
	}
	h, err := s.hash(password)
	if err != nil {
		return err
	}
	return s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		a.Hash = h
		return putAccount(tx, a)
	})
}

// SetQuota sets an account's storage limit in bytes; 0 means the store's
// default.
func (s *Store) SetQuota(ctx context.Context, addr string, quota int64) error {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return err
	}
	if quota < 0 {
		return errors.New("spool: negative quota")
	}
	return s.update(ctx, 0, func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		a.Quota = quota
		return putAccount(tx, a)
	})
}

// DeleteAccount removes an account and every message in its mailbox. POP3
// sessions open on it are told to end (Maildrop.Revoked).
func (s *Store) DeleteAccount(ctx context.Context, addr string) error {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return err
	}
	err = s.update(ctx, 0, func(tx *bbolt.Tx) error {
		if _, err := getAccount(tx, addr); err != nil {
			return err
		}
		if err := deleteMailbox(tx, addr); err != nil {
			return err
		}
		return tx.Bucket(bucketAccounts).Delete([]byte(addr))
	})
	if err == nil {
		s.revoke(addr, 0, true)
	}
	return err
}

// deleteMailbox drops every entry of a mailbox and the mailbox itself. It
// runs inside the caller's transaction.
func deleteMailbox(tx *bbolt.Tx, addr string) error {
	mb := tx.Bucket(bucketMailboxes).Bucket([]byte(addr))
	if mb == nil {
		return nil
	}
	var msgs []uint64
	if err := forEachEntry(mb, func(_ uint64, e *entryRecord) error {
		msgs = append(msgs, e.Message)
		return nil
	}); err != nil {
		return err
	}
	for _, id := range msgs {
		if err := unref(tx, id); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMailboxes).DeleteBucket([]byte(addr))
}

// HasAccount reports whether an account exists.
func (s *Store) HasAccount(addr string) (bool, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return false, nil
	}
	var ok bool
	err = s.view(func(tx *bbolt.Tx) error {
		ok = tx.Bucket(bucketAccounts).Get([]byte(addr)) != nil
		return nil
	})
	return ok, err
}

// Accounts lists every account, sorted by address.
func (s *Store) Accounts() ([]AccountInfo, error) {
	var out []AccountInfo
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketAccounts).ForEach(func(k, v []byte) error {
			var a accountRecord
			if err := decode("account", v, &a); err != nil {
				return err
			}
			out = append(out, s.info(tx, &a))
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, err
}

// Account describes one account.
func (s *Store) Account(addr string) (AccountInfo, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return AccountInfo{}, err
	}
	var info AccountInfo
	err = s.view(func(tx *bbolt.Tx) error {
		a, err := getAccount(tx, addr)
		if err != nil {
			return err
		}
		info = s.info(tx, a)
		return nil
	})
	return info, err
}

func (s *Store) info(tx *bbolt.Tx, a *accountRecord) AccountInfo {
	mb := tx.Bucket(bucketMailboxes).Bucket([]byte(a.Address))
	st := getMailboxStats(mb)
	used := st.Bytes
	if s.quota(a) > 0 {
		if u, err := s.quotaUsed(mb); err == nil {
			used = u
		}
	}
	last, ip := a.LastLogin, a.LastIP
	for _, d := range a.Devices {
		if d.LastLogin.After(last) {
			last, ip = d.LastLogin, d.LastIP
		}
	}
	return AccountInfo{
		Address: a.Address, Created: a.Created, Quota: s.quota(a),
		Messages: st.Messages, Bytes: st.Bytes, QuotaUsed: used,
		LastLogin: last, LastIP: ip, Devices: len(a.Devices),
	}
}

func (s *Store) quota(a *accountRecord) int64 {
	if a.Quota > 0 {
		return a.Quota
	}
	return int64(s.opts.Quota)
}

// Authenticate checks an address and a password: the account password or
// one of the account's device passwords. An unknown address costs the same
// time as a wrong password, and both give ErrAuthFailed.
func (s *Store) Authenticate(addr, password string) (Login, error) {
	norm, nerr := NormalizeAddress(addr)
	var a *accountRecord
	if nerr == nil {
		if err := s.view(func(tx *bbolt.Tx) error {
			var err error
			a, err = getAccount(tx, norm)
			if errors.Is(err, ErrNoSuchAccount) {
				return nil
			}
			return err
		}); err != nil {
			return Login{}, err
		}
	}
	if a == nil {
		// Spend the time a real check would.
		s.check(s.dummyHash, password)
		return Login{}, ErrAuthFailed
	}
	if d, ok := matchDevice(a, password); ok {
		return Login{Account: a.Address, Device: d.ID, DeviceName: d.Name}, nil
	}
	if s.auth.hit(a.Address, a.Hash, password) {
		return Login{Account: a.Address}, nil
	}
	ok, err := s.check(a.Hash, password)
	if err != nil {
		return Login{}, fmt.Errorf("spool: account %s: %w", a.Address, err)
	}
	if !ok {
		return Login{}, ErrAuthFailed
	}
	s.auth.remember(a.Address, a.Hash, password)
	return Login{Account: a.Address}, nil
}

// tokenHash is how a device password is stored. Device passwords are random
// with about 100 bits of entropy, so a fast hash is enough.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// matchDevice finds the device whose password is pw, comparing every
// device's hash in constant time.
func matchDevice(a *accountRecord, pw string) (deviceRecord, bool) {
	h := []byte(tokenHash(pw))
	var found deviceRecord
	ok := false
	for _, d := range a.Devices {
		if subtle.ConstantTimeCompare(h, []byte(d.TokenHash)) == 1 {
			found, ok = d, true
		}
	}
	return found, ok
}
