// Package control lets the admin commands ("postie user add", "postie
// device list", "postie backup", ...) work whether or not "postie serve" is
// running. bbolt holds an exclusive lock on the spool file while the server
// runs, so the server listens on a Unix socket in the data directory (mode
// 0600, in a directory only its owner can enter) and carries out the
// commands itself; when no server runs, the command opens the spool file
// directly. Either way the caller gets the same Admin.
//
// The protocol is one JSON request line per connection, answered by one JSON
// reply line; for backup and export the reply line is followed by the data
// in chunks and a trailer line that says whether it is complete.
package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/postie/postie/spool"
)

// SocketName is the control socket's file name in the data directory.
const SocketName = "control.sock"

// Admin is what the admin commands can do to a spool.
type Admin interface {
	AddAccount(ctx context.Context, addr, password string) error
	SetPassword(ctx context.Context, addr, password string) error
	DeleteAccount(ctx context.Context, addr string) error
	SetQuota(ctx context.Context, addr string, bytes int64) error
	Accounts(ctx context.Context) ([]spool.AccountInfo, error)
	AddDevice(ctx context.Context, addr, name string, all bool) (string, error)
	Devices(ctx context.Context, addr string) ([]spool.DeviceInfo, error)
	DeleteDevice(ctx context.Context, addr, name string) error
	Restore(ctx context.Context, addr string) (int, error)
	Backup(ctx context.Context, w io.Writer) (int64, error)
	Export(ctx context.Context, addr string, w io.Writer) (int, error)
	Verify(ctx context.Context) ([]string, error)
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
func (l local) Close() error                             { return l.s.Close() }
func (l local) Remote() bool                             { return false }

func problemStrings(errs []error) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

// sentinels maps the spool errors callers branch on to names that cross the
// socket, so that errors.Is works on the client side too.
var sentinels = map[string]error{
	"no_such_account": spool.ErrNoSuchAccount,
	"account_exists":  spool.ErrAccountExists,
	"weak_password":   spool.ErrWeakPassword,
	"maildrop_locked": spool.ErrMaildropLocked,
	"no_such_device":  spool.ErrNoSuchDevice,
	"device_exists":   spool.ErrDeviceExists,
	"not_retained":    spool.ErrNotRetained,
	"storage_full":    spool.ErrStorageFull,
}

func errorKind(err error) string {
	for k, s := range sentinels {
		if errors.Is(err, s) {
			return k
		}
	}
	return ""
}

// remoteError is an error reported by the server.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// peerAllowed reports whether the process at the other end of a Unix
// connection runs as root or as the server's own user.
func peerAllowed(c *net.UnixConn) (bool, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return false, err
	}
	if cerr != nil {
		return false, fmt.Errorf("control: peer credentials: %w", cerr)
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Geteuid(), nil
}
