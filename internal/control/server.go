package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/postie/postie/spool"
)

// request is one command sent over the socket.
type request struct {
	Op       string `json:"op"`
	Address  string `json:"address,omitempty"`
	Password string `json:"password,omitempty"`
	Name     string `json:"name,omitempty"`
	All      bool   `json:"all,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
}

// reply is the answer line.
type reply struct {
	Error    string              `json:"error,omitempty"`
	Kind     string              `json:"kind,omitempty"`
	Password string              `json:"password,omitempty"`
	Count    int64               `json:"count,omitempty"`
	Accounts []spool.AccountInfo `json:"accounts,omitempty"`
	Devices  []spool.DeviceInfo  `json:"devices,omitempty"`
	Problems []string            `json:"problems,omitempty"`
	Stream   bool                `json:"stream,omitempty"` // raw data follows
}

// Server answers admin commands on the control socket of a running server.
type Server struct {
	store *spool.Store
	log   *slog.Logger
	ln    *net.UnixListener
	path  string
	wg    sync.WaitGroup

	// Connections carrying a backup or export: a read transaction stays
	// open while they last, so Close cuts them rather than wait.
	mu      sync.Mutex
	streams map[*net.UnixConn]struct{}
	closing bool
}

// streamStall is how long a backup or export may wait for the client to
// take more data. Its read transaction holds old pages of the spool file
// meanwhile, and when the file must grow, every write waits for it.
const streamStall = time.Minute

// stallWriter gives each write to a connection streamStall to complete.
type stallWriter struct{ c *net.UnixConn }

func (w stallWriter) Write(p []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(streamStall))
	return w.c.Write(p)
}

// maxRequest bounds a request line.
const maxRequest = 64 << 10

// maxSocketPath is the longest path a Unix socket can be bound to on Linux.
const maxSocketPath = 107

// Listen creates the control socket at path (replacing a stale one: the
// caller holds the spool's lock, so no other server uses it) with mode 0600,
// and serves it until Close.
func Listen(path string, store *spool.Store, log *slog.Logger) (*Server, error) {
	// sockaddr_un holds 108 bytes with the terminating NUL; a longer path
	// fails to bind with a bare "invalid argument".
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control: the socket path %s is %d bytes, longer than the %d a Unix socket allows: use a shorter data_dir", path, len(path), maxSocketPath)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control: remove stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: chmod socket: %w", err)
	}
	s := &Server{store: store, log: log, ln: ln, path: path, streams: map[*net.UnixConn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Close stops the server, waits for commands in progress and removes the
// socket.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closing = true
	for c := range s.streams {
		c.Close() // the client sees the stream cut short
	}
	s.mu.Unlock()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

func (s *Server) handle(c *net.UnixConn) {
	ok, err := peerAllowed(c)
	if err != nil || !ok {
		s.log.Warn("control: refused a connection from another user", "err", err)
		return
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(c, maxRequest), 4096).ReadBytes('\n')
	if err != nil {
		return
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		writeReply(c, reply{Error: "control: bad request"})
		return
	}
	c.SetReadDeadline(time.Time{})
	ctx := context.Background()
	admin := Local(s.store)
	var r reply
	switch req.Op {
	case "backup", "export":
		if req.Op == "export" {
			if _, err := s.store.Account(req.Address); err != nil {
				writeReply(c, reply{Error: err.Error(), Kind: errorKind(err)})
				return
			}
		}
		// The reply line, then the data in chunks, then a trailer that
		// says whether it is all there (stream.go).
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			writeReply(c, reply{Error: "control: the server is shutting down"})
			return
		}
		s.streams[c] = struct{}{}
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.streams, c)
			s.mu.Unlock()
		}()
		writeReply(c, reply{Stream: true})
		bw := bufio.NewWriterSize(stallWriter{c}, 64<<10)
		data := bufio.NewWriterSize(chunkWriter{bw}, 64<<10)
		var n int64
		var err error
		if req.Op == "backup" {
			n, err = admin.Backup(ctx, data)
		} else {
			var msgs int
			msgs, err = admin.Export(ctx, req.Address, data)
			n = int64(msgs)
		}
		if err == nil {
			err = data.Flush()
		}
		trailer := reply{Count: n}
		if err != nil {
			s.log.Error("control: "+req.Op+" failed", "address", req.Address, "err", err)
			trailer = reply{Error: req.Op + " failed: " + err.Error(), Kind: errorKind(err)}
		}
		if err := endStream(bw, trailer); err == nil && bw.Flush() == nil {
			c.CloseWrite()
		}
		if trailer.Error == "" {
			s.log.Info("control: "+req.Op+" done", "address", req.Address)
		}
		return
	case "user.add":
		err = admin.AddAccount(ctx, req.Address, req.Password)
	case "user.passwd":
		err = admin.SetPassword(ctx, req.Address, req.Password)
	case "user.del":
		err = admin.DeleteAccount(ctx, req.Address)
	case "user.quota":
		err = admin.SetQuota(ctx, req.Address, req.Bytes)
	case "user.list":
		r.Accounts, err = admin.Accounts(ctx)
	case "device.add":
		r.Password, err = admin.AddDevice(ctx, req.Address, req.Name, req.All)
	case "device.list":
		r.Devices, err = admin.Devices(ctx, req.Address)
	case "device.del":
		err = admin.DeleteDevice(ctx, req.Address, req.Name)
	case "restore":
		var n int
		n, err = admin.Restore(ctx, req.Address)
		r.Count = int64(n)
	case "verify":
		r.Problems, err = admin.Verify(ctx)
	default:
		err = fmt.Errorf("control: unknown operation %q", req.Op)
	}
	if err != nil {
		r = reply{Error: err.Error(), Kind: errorKind(err)}
	}
	s.log.Info("control: "+req.Op, "address", req.Address, "device", req.Name, "ok", err == nil)
	writeReply(c, r)
}

func writeReply(w io.Writer, r reply) {
	b, _ := json.Marshal(r)
	w.Write(append(b, '\n'))
}
