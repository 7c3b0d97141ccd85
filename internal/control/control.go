// Package control lets the admin commands ("postie user add", "postie
// device list", "postie backup", ...) work whether or not "postie serve" is
// running. bbolt holds an exclusive lock on the spool file while the server
// runs, so the server listens on a Unix socket in the data directory (mode
// 0600, in a directory only its owner can enter; only root and the server's
// own user are served) and carries out the commands itself; when no server
// runs, the command opens the spool file directly. Either way the caller
// gets the same Admin.
//
// Over the socket the protocol is HTTP/1.1, one route per operation (see
// routes in server.go and the matching Client methods): JSON request and
// reply bodies, and the spool's errors as status codes (400 bad input, 404
// no such account or device, 409 exists or in use, 413 request too large,
// 500 otherwise) with the error text in the body and the sentinel's name in
// the Postie-Error-Kind header, so that errors.Is works on the client side
// too. Backup and export stream their data as the body and end it with the
// trailer Postie-Complete (the byte or message count), or Postie-Error when
// the server failed after the data had started: a body without
// Postie-Complete is incomplete, and the client reports it as an error.
package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/postie/postie/spool"
)

// SocketName is the control socket's file name in the data directory.
const SocketName = "control.sock"

// Admin is what the admin commands can do to a spool.
type Admin interface {
	// AddAccount creates an account with a password.
	AddAccount(ctx context.Context, addr, password string) error
	// SetPassword changes an account's password.
	SetPassword(ctx context.Context, addr, password string) error
	// DeleteAccount removes an account and its mail.
	DeleteAccount(ctx context.Context, addr string) error
	// SetQuota sets an account's mailbox limit in bytes (0: the default).
	SetQuota(ctx context.Context, addr string, bytes int64) error
	// Accounts lists the accounts.
	Accounts(ctx context.Context) ([]spool.AccountInfo, error)
	// AddDevice gives an account a device password and returns it.
	AddDevice(ctx context.Context, addr, name string, all bool) (string, error)
	// Devices lists an account's ways of logging in.
	Devices(ctx context.Context, addr string) ([]spool.DeviceInfo, error)
	// DeleteDevice removes a device password.
	DeleteDevice(ctx context.Context, addr, name string) error
	// Restore brings back an account's retained deletions and returns
	// their number.
	Restore(ctx context.Context, addr string) (int, error)
	// Backup writes a consistent copy of the spool file to w and returns
	// its size.
	Backup(ctx context.Context, w io.Writer) (int64, error)
	// Export writes an account's mailbox to w as mboxrd and returns the
	// number of messages.
	Export(ctx context.Context, addr string, w io.Writer) (int, error)
	// Verify checks the spool file and returns the problems found.
	Verify(ctx context.Context) ([]string, error)
	// Status reports every account with its devices and, from a running
	// server, what it has seen since it started ("postie status").
	Status(ctx context.Context) (Status, error)
	// QuarantineList lists the quarantined messages, all or an account's.
	QuarantineList(ctx context.Context, addr string) ([]spool.Quarantined, error)
	// QuarantineShow writes a quarantined message, whole, to w.
	QuarantineShow(ctx context.Context, id spool.MessageID, w io.Writer) (int64, error)
	// QuarantineRelease delivers a quarantined message to its accounts
	// and returns them.
	QuarantineRelease(ctx context.Context, id spool.MessageID) ([]string, error)
	// QuarantineDelete removes a quarantined message.
	QuarantineDelete(ctx context.Context, id spool.MessageID) error
	// Close releases what the Admin holds (the spool file, when opened
	// directly).
	Close() error
	// Remote reports whether a running server carries out the commands.
	Remote() bool
}

// Connect returns an Admin for the data directory: the running server's, if
// its socket answers, or otherwise one over the spool file, opened with
// open. If the file turns out to be locked (a server is starting), it tries
// the socket again for a few seconds.
func Connect(dataDir string, open func() (*spool.Store, error)) (Admin, error) {
	sock := dataDir + string(os.PathSeparator) + SocketName
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := Dial(sock); err == nil {
			return c, nil
		}
		s, err := open()
		if err == nil {
			return Local(s), nil
		}
		if !errors.Is(err, spool.ErrLocked) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// local carries out the commands on a spool opened in this process.
type local struct{ s *spool.Store }

// Local returns an Admin over an open store; Close closes the store.
func Local(s *spool.Store) Admin { return local{s} }

func (l local) AddAccount(ctx context.Context, addr, pw string) error {
	return l.s.AddAccount(ctx, addr, pw)
}
func (l local) SetPassword(ctx context.Context, addr, pw string) error {
	return l.s.SetPassword(ctx, addr, pw)
}
func (l local) DeleteAccount(ctx context.Context, addr string) error {
	return l.s.DeleteAccount(ctx, addr)
}
func (l local) SetQuota(ctx context.Context, addr string, n int64) error {
	return l.s.SetQuota(ctx, addr, n)
}
func (l local) Accounts(context.Context) ([]spool.AccountInfo, error) { return l.s.Accounts() }
func (l local) AddDevice(ctx context.Context, addr, name string, all bool) (string, error) {
	return l.s.AddDevice(ctx, addr, name, all)
}
func (l local) Devices(_ context.Context, addr string) ([]spool.DeviceInfo, error) {
	return l.s.Devices(addr)
}
func (l local) DeleteDevice(ctx context.Context, addr, name string) error {
	return l.s.DeleteDevice(ctx, addr, name)
}
func (l local) Restore(ctx context.Context, addr string) (int, error) { return l.s.Restore(ctx, addr) }
func (l local) Backup(_ context.Context, w io.Writer) (int64, error)  { return l.s.Backup(w) }
func (l local) Export(ctx context.Context, addr string, w io.Writer) (int, error) {
	return l.s.Export(ctx, addr, w)
}
func (l local) Verify(context.Context) ([]string, error) { return problemStrings(l.s.Verify()), nil }
func (l local) QuarantineList(_ context.Context, addr string) ([]spool.Quarantined, error) {
	return l.s.QuarantineList(addr)
}
func (l local) QuarantineShow(_ context.Context, id spool.MessageID, w io.Writer) (int64, error) {
	r, _, err := l.s.QuarantineMessage(id)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return io.Copy(w, r)
}
func (l local) QuarantineRelease(ctx context.Context, id spool.MessageID) ([]string, error) {
	return l.s.QuarantineRelease(ctx, id)
}
func (l local) QuarantineDelete(ctx context.Context, id spool.MessageID) error {
	return l.s.QuarantineDelete(ctx, id)
}
func (l local) Close() error { return l.s.Close() }
func (l local) Remote() bool { return false }

func problemStrings(errs []error) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

// The request and reply bodies of the JSON routes.
type (
	// none is the body of a request or reply that carries nothing.
	none       struct{}
	newAccount struct {
		Address  string `json:"address"`
		Password string `json:"password"`
	}
	passwordBody struct {
		Password string `json:"password"`
	}
	quotaBody struct {
		Bytes int64 `json:"bytes"`
	}
	newDevice struct {
		Name string `json:"name"`
		All  bool   `json:"all"`
	}
	restoredBody struct {
		Messages int `json:"messages"`
	}
	problemsBody struct {
		Problems []string `json:"problems"`
	}
)

// The headers and trailers of the protocol.
const (
	// headerKind is on every error reply of an operation: it names the
	// spool sentinel behind the error (otherKind for none). As a trailer,
	// it names the one behind the error that cut a stream short.
	headerKind = "Postie-Error-Kind"
	// otherKind is the headerKind of an error that is no sentinel.
	otherKind = "other"
	// trailerComplete ends a complete stream; its value is the count.
	trailerComplete = "Postie-Complete"
	// trailerError carries the error that cut a stream short.
	trailerError = "Postie-Error"
)

// sentinel is a spool error that callers branch on, with its name on the
// wire and the status code it is sent with.
type sentinel struct {
	kind   string
	err    error
	status int
}

// sentinels lists the spool errors that cross the socket, so that errors.Is
// works on the client side too.
func sentinels() []sentinel {
	return []sentinel{
		{"no_such_account", spool.ErrNoSuchAccount, http.StatusNotFound},
		{"no_such_device", spool.ErrNoSuchDevice, http.StatusNotFound},
		{"account_exists", spool.ErrAccountExists, http.StatusConflict},
		{"device_exists", spool.ErrDeviceExists, http.StatusConflict},
		{"maildrop_locked", spool.ErrMaildropLocked, http.StatusConflict},
		{"not_retained", spool.ErrNotRetained, http.StatusConflict},
		{"weak_password", spool.ErrWeakPassword, http.StatusBadRequest},
		{"storage_full", spool.ErrStorageFull, http.StatusInsufficientStorage},
		{"no_such_message", spool.ErrNoSuchMessage, http.StatusNotFound},
		{"quarantine_off", spool.ErrQuarantineOff, http.StatusConflict},
	}
}

// sentinelOf returns the sentinel that err is, if any.
func sentinelOf(err error) (sentinel, bool) {
	for _, s := range sentinels() {
		if errors.Is(err, s.err) {
			return s, true
		}
	}
	return sentinel{}, false
}

// sentinelNamed returns the spool error of a wire name, or nil.
func sentinelNamed(kind string) error {
	for _, s := range sentinels() {
		if s.kind == kind {
			return s.err
		}
	}
	return nil
}

// remoteError is an error reported by the server.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// peerUID returns the user id of the process at the other end of a Unix
// connection.
func peerUID(c net.Conn) (uint32, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("control: peer credentials: a %T has no descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("control: peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("control: peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("control: peer credentials: %w", cerr)
	}
	return cred.Uid, nil
}

// ownUserOrRoot reports whether uid is root or the user this process runs
// as: the only users the control socket serves.
func ownUserOrRoot(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }
