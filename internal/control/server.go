package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/postie/postie/spool"
)

// routes lists the operations the server answers, one per admin command:
// the method and path pattern, and the handler. Each has a Client method
// in client.go that sends it.
func routes() []route {
	return []route{
		{"POST /accounts", jsonOp(func(c call, in newAccount) (none, error) {
			if err := checkAddress(in.Address); err != nil {
				return none{}, err
			}
			return none{}, c.admin.AddAccount(c.ctx, in.Address, in.Password)
		})},
		{"GET /accounts", jsonOp(func(c call, _ none) ([]spool.AccountInfo, error) {
			return c.admin.Accounts(c.ctx)
		})},
		{"DELETE /accounts/{addr}", jsonOp(func(c call, _ none) (none, error) {
			return none{}, c.admin.DeleteAccount(c.ctx, c.addr())
		})},
		{"PUT /accounts/{addr}/password", jsonOp(func(c call, in passwordBody) (none, error) {
			return none{}, c.admin.SetPassword(c.ctx, c.addr(), in.Password)
		})},
		{"PUT /accounts/{addr}/quota", jsonOp(func(c call, in quotaBody) (none, error) {
			return none{}, c.admin.SetQuota(c.ctx, c.addr(), in.Bytes)
		})},
		{"POST /accounts/{addr}/devices", jsonOp(func(c call, in newDevice) (passwordBody, error) {
			pw, err := c.admin.AddDevice(c.ctx, c.addr(), in.Name, in.All)
			return passwordBody{pw}, err
		})},
		{"GET /accounts/{addr}/devices", jsonOp(func(c call, _ none) ([]spool.DeviceInfo, error) {
			return c.admin.Devices(c.ctx, c.addr())
		})},
		{"DELETE /accounts/{addr}/devices/{name}", jsonOp(func(c call, _ none) (none, error) {
			return none{}, c.admin.DeleteDevice(c.ctx, c.addr(), c.r.PathValue("name"))
		})},
		{"POST /accounts/{addr}/restore", jsonOp(func(c call, _ none) (restoredBody, error) {
			n, err := c.admin.Restore(c.ctx, c.addr())
			return restoredBody{n}, err
		})},
		{"POST /verify", jsonOp(func(c call, _ none) (problemsBody, error) {
			p, err := c.admin.Verify(c.ctx)
			return problemsBody{p}, err
		})},
		{"GET /status", jsonOp(func(c call, _ none) (Status, error) {
			st, err := c.admin.Status(c.ctx)
			st.Live = c.live.get()
			return st, err
		})},
		{"GET /quarantine", jsonOp(func(c call, _ none) ([]spool.Quarantined, error) {
			return c.admin.QuarantineList(c.ctx, "")
		})},
		{"GET /accounts/{addr}/quarantine", jsonOp(func(c call, _ none) ([]spool.Quarantined, error) {
			return c.admin.QuarantineList(c.ctx, c.addr())
		})},
		{"GET /quarantine/{id}", streamOp(func(c call, w io.Writer) (int64, error) {
			id, err := c.messageID()
			if err != nil {
				return 0, err
			}
			return c.admin.QuarantineShow(c.ctx, id, w)
		})},
		{"POST /quarantine/{id}/release", jsonOp(func(c call, _ none) ([]string, error) {
			id, err := c.messageID()
			if err != nil {
				return nil, err
			}
			return c.admin.QuarantineRelease(c.ctx, id)
		})},
		{"DELETE /quarantine/{id}", jsonOp(func(c call, _ none) (none, error) {
			id, err := c.messageID()
			if err != nil {
				return none{}, err
			}
			return none{}, c.admin.QuarantineDelete(c.ctx, id)
		})},
		{"GET /backup", streamOp(func(c call, w io.Writer) (int64, error) {
			return c.admin.Backup(c.ctx, w)
		})},
		{"GET /accounts/{addr}/export", streamOp(func(c call, w io.Writer) (int64, error) {
			n, err := c.admin.Export(c.ctx, c.addr(), w)
			return int64(n), err
		})},
	}
}

// route is one operation: its method and path pattern (ServeMux syntax)
// and its handler.
type route struct {
	pattern string
	serve   serveFunc
}

// serveFunc answers a request. An error it returns becomes the error
// reply, unless the reply had started (a sentError).
type serveFunc func(s *Server, w http.ResponseWriter, r *http.Request) error

// call is what an operation is carried out with: the request's context,
// the Admin and the request, for its path's wildcards.
type call struct {
	ctx   context.Context
	admin Admin
	r     *http.Request
	live  *liveSource // the running server's own figures
}

// addr is the account address in the request's path.
func (c call) addr() string { return c.r.PathValue("addr") }

// messageID is the quarantined message's id in the request's path.
func (c call) messageID() (spool.MessageID, error) {
	id, err := spool.ParseMessageID(c.r.PathValue("id"))
	if err != nil {
		return 0, &statusError{http.StatusBadRequest, err}
	}
	return id, nil
}

// jsonOp makes a handler of an operation that takes a JSON request body
// (none: an empty body will do) and answers with a JSON reply.
func jsonOp[In, Out any](op func(c call, in In) (Out, error)) serveFunc {
	return func(s *Server, w http.ResponseWriter, r *http.Request) error {
		var in In
		if err := s.readJSON(w, r, &in); err != nil {
			return err
		}
		out, err := op(call{r.Context(), s.admin, r, &s.live}, in)
		if err != nil {
			return err
		}
		b, err := json.Marshal(out)
		if err != nil {
			return fmt.Errorf("control: encode the reply: %w", err)
		}
		w.Header().Set("Content-Type", "application/json")
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.lim.stall))
		if _, err := w.Write(append(b, '\n')); err != nil {
			return &sentError{fmt.Errorf("control: send the reply: %w", err)}
		}
		return nil
	}
}

// streamOp makes a handler of an operation that writes its data to w and
// returns a count: the data is the reply's body, followed by the trailer
// Postie-Complete with the count, or Postie-Error when the operation failed
// after the data had started. A failure before any data was sent gets an
// ordinary error reply.
func streamOp(op func(c call, w io.Writer) (int64, error)) serveFunc {
	return func(s *Server, w http.ResponseWriter, r *http.Request) error {
		untrack, err := s.track(r)
		if err != nil {
			return err
		}
		defer untrack()
		sw := &streamWriter{w: w, rc: http.NewResponseController(w), stall: s.lim.stall}
		bw := bufio.NewWriterSize(sw, 64<<10)
		n, err := op(call{r.Context(), s.admin, r, &s.live}, bw)
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			if !sw.started {
				return err
			}
			_, kind := statusOf(err)
			w.Header().Set(trailerError, err.Error())
			w.Header().Set(headerKind, kind)
			return &sentError{err}
		}
		sw.start()
		w.Header().Set(trailerComplete, strconv.FormatInt(n, 10))
		return nil
	}
}

// streamWriter sends the data of a backup or export as the reply body. The
// reply's head goes out with the first byte, so that an operation that
// fails before writing anything gets an ordinary error reply. Each write
// must complete within the stall time: a read transaction stays open while
// the data is sent, holding old pages of the spool file, and when the file
// must grow every write waits for it.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	stall   time.Duration
	started bool
}

// start sends the reply's head, declaring the trailers.
func (sw *streamWriter) start() {
	if sw.started {
		return
	}
	sw.started = true
	h := sw.w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Trailer", trailerComplete+", "+trailerError+", "+headerKind)
	sw.w.WriteHeader(http.StatusOK)
}

func (sw *streamWriter) Write(p []byte) (int, error) {
	sw.start()
	if err := sw.rc.SetWriteDeadline(time.Now().Add(sw.stall)); err != nil {
		return 0, fmt.Errorf("control: set the write deadline: %w", err)
	}
	n, err := sw.w.Write(p)
	if err != nil {
		return n, fmt.Errorf("control: send (the client took no data for %v, or went away): %w", sw.stall, err)
	}
	return n, nil
}

// sentError is an error that came after the reply had started: it is
// logged, and the client learns of it from the trailers or the cut.
type sentError struct{ err error }

func (e *sentError) Error() string { return e.err.Error() }
func (e *sentError) Unwrap() error { return e.err }

// statusError is an error sent with a given status code.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// statusOf returns the status code an error is sent with, and the name of
// its spool sentinel (otherKind if it has none).
func statusOf(err error) (int, string) {
	var tooLarge *http.MaxBytesError
	var se *statusError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, otherKind
	case errors.As(err, &se):
		return se.status, otherKind
	}
	if st, ok := sentinelOf(err); ok {
		return st.status, st.kind
	}
	return http.StatusInternalServerError, otherKind
}

// checkAddress refuses an address the spool would not take, as bad input.
func checkAddress(addr string) error {
	if _, err := spool.NormalizeAddress(addr); err != nil {
		return &statusError{http.StatusBadRequest, err}
	}
	return nil
}

// Server answers admin commands on the control socket of a running server.
type Server struct {
	admin  Admin
	log    *slog.Logger
	lim    limits
	path   string
	http   *http.Server
	served chan struct{} // closed when http.Serve has returned
	live   liveSource    // SetLive's

	// Connections carrying a backup or export: a read transaction stays
	// open while they last, so Close cuts them rather than wait.
	mu      sync.Mutex
	streams map[net.Conn]struct{}
	closing bool
}

// limits bound what a client can take of the server.
type limits struct {
	stall    time.Duration     // for a reply's write to make progress
	request  int64             // the largest request body
	allowUID func(uint32) bool // the users served
}

const (
	// streamStall is how long a reply, a backup or export above all, may
	// wait for the client to take more data.
	streamStall = time.Minute
	// maxRequest bounds a request's head and its body.
	maxRequest = 64 << 10
	// requestTime is how long a client has to send a request's head, and
	// then its body.
	requestTime = 30 * time.Second
	// maxSocketPath is the longest path a Unix socket can be bound to on
	// Linux.
	maxSocketPath = 107
)

// Listen creates the control socket at path (replacing a stale one: the
// caller holds the spool's lock, so no other server uses it) with mode 0600,
// and serves it until Close.
func Listen(path string, store *spool.Store, log *slog.Logger) (*Server, error) {
	return listen(path, Local(store), log, limits{streamStall, maxRequest, ownUserOrRoot})
}

// listen is Listen with the Admin that carries out the commands and the
// limits given.
func listen(path string, admin Admin, log *slog.Logger, lim limits) (*Server, error) {
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
	s := &Server{admin: admin, log: log, lim: lim, path: path, served: make(chan struct{}), streams: map[net.Conn]struct{}{}}
	mux := http.NewServeMux()
	for _, rt := range routes() {
		mux.Handle(rt.pattern, s.handler(rt))
	}
	s.http = &http.Server{
		Handler:           s.guard(mux),
		ReadHeaderTimeout: requestTime,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxRequest,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p := &peer{conn: c}
			p.uid, p.err = peerUID(c)
			return context.WithValue(ctx, peerKey{}, p)
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.served)
		if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("control: serving the socket stopped", "err", err)
		}
	}()
	return s, nil
}

// Close stops the server, cuts the backups and exports in progress (their
// clients see them incomplete), waits for the other commands in progress
// and removes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for c := range s.streams {
		c.Close()
	}
	s.mu.Unlock()
	err := s.http.Shutdown(context.Background())
	<-s.served
	os.Remove(s.path)
	if err != nil {
		return fmt.Errorf("control: close: %w", err)
	}
	return nil
}

// track registers the connection of a backup or export for Close to cut,
// and returns the function that unregisters it.
func (s *Server) track(r *http.Request) (func(), error) {
	c := peerOf(r).conn
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || c == nil {
		return nil, &statusError{http.StatusServiceUnavailable, errors.New("control: the server is shutting down")}
	}
	s.streams[c] = struct{}{}
	return func() {
		s.mu.Lock()
		delete(s.streams, c)
		s.mu.Unlock()
	}, nil
}

// peer is the other end of a connection to the socket.
type peer struct {
	conn net.Conn
	uid  uint32
	err  error // the uid could not be read
}

// peerKey is the context key of a request's *peer.
type peerKey struct{}

func peerOf(r *http.Request) *peer {
	if p, ok := r.Context().Value(peerKey{}).(*peer); ok {
		return p
	}
	return &peer{err: errors.New("control: the request has no connection")}
}

// guard refuses requests from users other than root and the server's own.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := peerOf(r); p.err != nil || !s.lim.allowUID(p.uid) {
			s.log.Warn("control: refused a request from another user", "uid", p.uid, "err", p.err)
			w.Header().Set("Connection", "close")
			http.Error(w, "control: only root and the server's own user may use the control socket", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handler serves a route: it checks the address in the path, runs the
// route, sends its error if it failed and logs the outcome.
func (s *Server) handler(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var err error
		if addr := r.PathValue("addr"); addr != "" {
			err = checkAddress(addr)
		}
		if err == nil {
			err = rt.serve(s, w, r)
		}
		status := http.StatusOK
		var sent *sentError
		switch {
		case errors.As(err, &sent):
		case err != nil:
			var kind string
			status, kind = statusOf(err)
			w.Header().Set(headerKind, kind)
			http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.lim.stall))
			http.Error(w, err.Error(), status)
		}
		level := slog.LevelInfo
		if status >= 500 || sent != nil {
			level = slog.LevelError
		}
		s.log.Log(r.Context(), level, "control: "+r.Method+" "+r.URL.Path, "status", status, "took", time.Since(start).Round(time.Millisecond), "err", err)
	}
}

// readJSON reads a request body of at most the limit's size into v; an
// empty body leaves v as it is.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(requestTime))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.lim.request))
	// No deadline once the body is in: the server's read that notices a
	// client going away must not time out during a long operation.
	rc.SetReadDeadline(time.Time{})
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return fmt.Errorf("control: the request is over %d bytes: %w", s.lim.request, err)
		}
		return &statusError{http.StatusBadRequest, fmt.Errorf("control: read the request: %w", err)}
	}
	if len(body) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &statusError{http.StatusBadRequest, fmt.Errorf("control: bad request: %w", err)}
	}
	if dec.More() {
		return &statusError{http.StatusBadRequest, errors.New("control: bad request: data after the JSON value")}
	}
	return nil
}
