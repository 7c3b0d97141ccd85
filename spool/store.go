package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/durable"
	"github.com/postie/postie/internal/units"
)

// Errors callers branch on.
var (
	// ErrLocked means another process has the spool file open.
	ErrLocked = errors.New("spool: the data directory is in use by another process (is postie serve running?)")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("spool: store is closed")
	// ErrStorageFull means the disk, or the configured maximum size of the
	// spool, is full. Nothing was stored; the sender may retry later.
	ErrStorageFull = errors.New("spool: storage full")
	// ErrTooLarge means a message is over Options.MaxMessageSize.
	ErrTooLarge = errors.New("spool: message too large")
	// ErrQuotaExceeded means an account's storage limit would be exceeded.
	ErrQuotaExceeded = errors.New("spool: mailbox over quota")
	// ErrNoSuchAccount means the account does not exist.
	ErrNoSuchAccount = errors.New("spool: no such account")
	// ErrAccountExists means an account with that address already exists.
	ErrAccountExists = errors.New("spool: account already exists")
	// ErrAuthFailed means the address or the password is wrong. It does not
	// say which.
	ErrAuthFailed = errors.New("spool: authentication failed")
	// ErrMaildropLocked means a POP3 session already holds the maildrop.
	ErrMaildropLocked = errors.New("spool: maildrop is in use by another session")
	// ErrNoSuchMessage means a message is no longer in the store.
	ErrNoSuchMessage = errors.New("spool: no such message")
	// ErrNoSuchDevice means the account has no device of that name.
	ErrNoSuchDevice = errors.New("spool: no such device")
	// ErrDeviceExists means the account already has a device of that name.
	ErrDeviceExists = errors.New("spool: device already exists")
)

// Options configure a Store. The zero value of every field but Path means
// its default. The fields with TOML tags are the owner's [spool] settings.
type Options struct {
	// Path is the bbolt file.
	Path string `toml:"-"`

	// MaxMessageSize bounds the stored size of one message; a delivery
	// over it fails with ErrTooLarge. SMTP enforces its own, lower limit
	// first; this is the last line of defence. Default 1 GiB.
	MaxMessageSize units.Size `toml:"-"`
	// MaxSize bounds the size of the spool file; deliveries that would grow
	// it past this fail with ErrStorageFull, as on a full disk. 0: no limit
	// but the disk's.
	MaxSize units.Size `toml:"max_size"`
	// Quota is the default storage limit of one mailbox; 0 means none. An
	// account's own quota, when set, takes precedence.
	Quota units.Size `toml:"quota"`
	// Retention keeps messages that clients deleted, hidden, for this long,
	// so the owner can bring them back with "postie restore". 0 removes
	// them at once.
	Retention units.Duration `toml:"retention"`
	// DeviceIdle is how long a device may go without logging in and still
	// count as active: a message is removed only when every active device
	// has deleted it. Default 30 days.
	DeviceIdle units.Duration `toml:"device_idle"`
	// DeviceDeleteGrace removes a message this long after the first device
	// deleted it, even if other devices have not. Default 90 days.
	DeviceDeleteGrace units.Duration `toml:"device_delete_grace"`
	// QuarantineRetention is how long a message held in the quarantine is
	// kept (a refused message's copy, or one a content filter
	// quarantined) before it is removed. 0 turns the quarantine off: a
	// refused message is not kept, and one a filter quarantines is
	// delivered, marked. Default 7 days.
	QuarantineRetention units.Duration `toml:"quarantine_retention"`
	// QuarantineMaxSize bounds the quarantine's total size; the oldest
	// messages go first when it is full. Default 256 MiB.
	QuarantineMaxSize units.Size `toml:"quarantine_max_size"`
	// AuthCacheTTL is how long a successful check of an account password
	// is remembered, so that a client polling every few minutes does not
	// cost an argon2 hash each time (Dovecot's auth cache). Changing the
	// password forgets it at once. 0 turns the cache off.
	AuthCacheTTL units.Duration `toml:"auth_cache_ttl"`

	// ChunkSize is the size of one stored body chunk. Default 64 KiB less
	// 44 bytes, see defaultChunkSize.
	ChunkSize int `toml:"-"`
	// FlushBytes is how much body a delivery buffers before writing it in
	// its own transaction. Default 256 KiB.
	FlushBytes int `toml:"-"`
	// MaxBatchBytes bounds the body bytes one group commit carries.
	// Default 8 MiB.
	MaxBatchBytes int `toml:"-"`
	// FlushBudget bounds the body bytes that all deliveries together have
	// flushed and not yet seen committed. A delivery goes on writing while
	// its flushes commit, so that one transaction carries what arrived
	// during the last; past the budget, Write waits. Default MaxBatchBytes:
	// twice that let 32 deliveries at once hold 16 MiB more and made two
	// at once no faster.
	FlushBudget int `toml:"-"`
	// FlushAhead bounds the part of FlushBudget one delivery may take.
	// Default 2 MiB. Measured for 20 MiB deliveries two at a time, and
	// the heap growth of one 50 MiB delivery: 1 MiB, ~430 MiB/s and 1.52
	// cpu-ms/MiB, heap +4 MiB; 2 MiB, ~580 MiB/s and 1.29 cpu-ms/MiB
	// (fewer, larger transactions), heap +7 MiB; 8 MiB, heap +25 MiB.
	// The heap holds what is in flight about twice: bbolt copies every
	// value into page buffers of its own to write it.
	FlushAhead int `toml:"-"`
	// OpenTimeout is how long Open waits for the file lock. Default 250ms.
	OpenTimeout time.Duration `toml:"-"`
	// HashParams are the argon2id parameters of new password hashes.
	// The zero value means the defaults (see DefaultHashParams).
	HashParams HashParams `toml:"-"`
	// Logger receives the store's log lines. Default: discard.
	Logger *slog.Logger `toml:"-"`
	// Now returns the current time. Default time.Now; tests set a clock.
	Now func() time.Time `toml:"-"`
}

// defaultChunkSize is 64 KiB less a page header (16 bytes), a leaf element
// (16) and a chunk key (12): a chunk alone on its leaf then fills 16 pages
// of 4 KiB exactly, and two to four of them a whole number of pages with
// nothing left over. A chunk of 64 KiB took 17 pages, 6% of the file and
// of every write wasted (measured: 1.21 bytes written per byte stored for
// 20 MiB deliveries, 1.18 with this size, and ~8% less CPU).
const defaultChunkSize = 64<<10 - 44

// DefaultOptions returns the owner-facing defaults.
func DefaultOptions() Options {
	return Options{
		DeviceIdle:          units.DurationOf(30 * 24 * time.Hour),
		DeviceDeleteGrace:   units.DurationOf(90 * 24 * time.Hour),
		AuthCacheTTL:        units.DurationOf(time.Hour),
		QuarantineRetention: units.DurationOf(7 * 24 * time.Hour),
		QuarantineMaxSize:   256 << 20,
	}
}

// Validate checks the owner-facing settings.
func (o Options) Validate() error {
	p := confkit.Check("spool")
	if o.Retention.D() > 0 && o.Retention.D() < time.Minute {
		p.Addf("retention", "%s is too short to be useful; use 0 to turn retention off or at least 1m", o.Retention)
	}
	// Too short a device_idle lets one device's deletion remove mail that a
	// device used every day has not fetched yet; too short a grace does the
	// same for a device that was offline for a weekend.
	if o.DeviceIdle.D() < time.Hour {
		p.Addf("device_idle", "%s is too short: at least 1h (the default is 720h, 30 days)", o.DeviceIdle)
	}
	if o.DeviceDeleteGrace.D() < time.Hour {
		p.Addf("device_delete_grace", "%s is too short: at least 1h (the default is 2160h, 90 days)", o.DeviceDeleteGrace)
	}
	if o.QuarantineRetention.D() < 0 || o.QuarantineRetention.D() > 0 && o.QuarantineRetention.D() < time.Hour {
		p.Addf("quarantine_retention", "%s: use 0 to turn the quarantine off or at least 1h (the default is 168h, 7 days)", o.QuarantineRetention)
	}
	if o.QuarantineMaxSize < 0 {
		p.Addf("quarantine_max_size", "%s must not be negative", o.QuarantineMaxSize)
	}
	if o.MaxSize != 0 && o.MaxSize < 1<<20 {
		p.Addf("max_size", "%s is too small; use 0 for no limit or at least 1MiB", o.MaxSize)
	}
	return p.Err()
}

func (o *Options) setDefaults() {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 1 << 30
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = defaultChunkSize
	}
	if o.FlushBytes < o.ChunkSize {
		o.FlushBytes = 4 * o.ChunkSize
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = 8 << 20
	}
	if o.FlushBudget <= 0 {
		o.FlushBudget = o.MaxBatchBytes
	}
	if o.FlushAhead <= 0 {
		o.FlushAhead = min(2<<20, o.FlushBudget)
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 250 * time.Millisecond
	}
	if o.DeviceIdle.D() <= 0 {
		o.DeviceIdle = units.DurationOf(30 * 24 * time.Hour)
	}
	if o.DeviceDeleteGrace.D() <= 0 {
		o.DeviceDeleteGrace = units.DurationOf(90 * 24 * time.Hour)
	}
	if o.HashParams == (HashParams{}) {
		o.HashParams = DefaultHashParams()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Store is an open spool file. Its methods are safe for concurrent use.
type Store struct {
	db   *bbolt.DB
	opts Options
	log  *slog.Logger

	// Writes: every write transaction runs in the committer goroutine.
	ops       chan *op
	closeMu   sync.RWMutex // held for reading while submitting, for writing by Close
	closed    bool
	committer sync.WaitGroup

	// Maildrop locks held by POP3 sessions in this process.
	locksMu sync.Mutex
	locks   map[lockKey]*lock

	// hashSem bounds concurrent password hashing (argon2id costs memory).
	hashSem chan struct{}
	// dummyHash is checked against for unknown accounts, so that an
	// unknown address costs the same time as a wrong password.
	dummyHash string
	// auth remembers recent successful password checks.
	auth *authCache

	deliveries  atomic.Uint64 // numbers deliveries, for the tokens of their pending marks
	chunkPool   sync.Pool
	flushBudget *budget   // shared by the deliveries' flushes in flight
	readPool    sync.Pool // *[]byte of readBatch+ChunkSize capacity, for messageReader
}

// Open opens or creates the spool file at opts.Path. It fails at once with
// ErrLocked when another process has the file open. Deliveries that a crash
// left unfinished are removed before Open returns.
func Open(opts Options) (*Store, error) {
	opts.setDefaults()
	if opts.Path == "" {
		return nil, errors.New("spool: no path given")
	}
	if err := durable.MkdirAll(filepath.Dir(opts.Path), 0o700); err != nil {
		return nil, fmt.Errorf("spool: create data directory: %w", err)
	}
	_, statErr := os.Stat(opts.Path)
	creating := errors.Is(statErr, os.ErrNotExist)
	bo := &bbolt.Options{
		Timeout:      opts.OpenTimeout,
		FreelistType: bbolt.FreelistMapType,
		// Reserve address space so a growing file is remapped rarely;
		// this costs no memory.
		InitialMmapSize: 256 << 20,
		MaxSize:         int(opts.MaxSize),
		// bbolt otherwise writes the whole freelist in every commit:
		// after a client deleted 400 MiB, 800 KB for each transaction,
		// which halved the rate of small deliveries (1 KiB x32: 8k
		// msgs/s, 17k without). Unsynced, Open rebuilds it by walking
		// the tree instead (measured: 2.5 ms -> ~130 ms for an 850 MiB
		// file, page cache warm). Safe: the freelist is derived data,
		// and an older postie rebuilds it the same way.
		NoFreelistSync: true,
	}
	db, err := bbolt.Open(opts.Path, 0o600, bo)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, opts.Path)
		}
		return nil, fmt.Errorf("spool: open %s: %w", opts.Path, err)
	}
	if creating {
		// A new spool file's name is durable only once its directory
		// is synced: without it, a power cut after the first accepted
		// message could leave no spool at all.
		if err := durable.Created(opts.Path); err != nil {
			db.Close()
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if db.NoSync || db.NoGrowSync {
		db.Close()
		return nil, errors.New("spool: refusing to run with bbolt's unsafe NoSync/NoGrowSync")
	}
	s := &Store{
		db:      db,
		opts:    opts,
		log:     opts.Logger,
		ops:     make(chan *op, 4096),
		locks:   make(map[lockKey]*lock),
		hashSem: make(chan struct{}, max(2, hashConcurrency())),

		flushBudget: newBudget(opts.FlushBudget),
	}
	s.chunkPool.New = func() any { b := make([]byte, 0, opts.ChunkSize); return &b }
	s.readPool.New = func() any { b := make([]byte, 0, readBatch+opts.ChunkSize); return &b }
	if err := s.initialize(); err != nil {
		db.Close()
		return nil, err
	}
	s.auth = newAuthCache(opts.AuthCacheTTL.D(), opts.Now)
	s.dummyHash, err = hashPassword("postie dummy password for unknown users", opts.HashParams)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.committer.Add(1)
	go s.runCommitter()
	return s, nil
}

// initialize creates the buckets, checks the schema version and removes
// deliveries a crash left unfinished.
func (s *Store) initialize() error {
	var abandoned []uint64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketAccounts, bucketMailboxes, bucketMessages, bucketChunks, bucketPending, bucketQuarantine} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("spool: create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchemaVersion); {
		case v == nil:
			if err := meta.Put(keySchemaVersion, u64(schemaVersion)); err != nil {
				return err
			}
		case len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion:
			return fmt.Errorf("spool: %s has schema version %x; this postie reads version %d", s.opts.Path, v, schemaVersion)
		}
		return tx.Bucket(bucketPending).ForEach(func(k, _ []byte) error {
			abandoned = append(abandoned, binary.BigEndian.Uint64(k))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, id := range abandoned {
		if err := s.db.Update(func(tx *bbolt.Tx) error { return dropPending(tx, id) }); err != nil {
			return fmt.Errorf("spool: remove unfinished delivery %d: %w", id, err)
		}
		s.log.Info("removed unfinished delivery left by an earlier run", "message", id)
	}
	return nil
}

// Close waits for queued writes, stops the committer and closes the file.
// Maildrops and deliveries still open fail with ErrClosed afterwards.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.ops)
	s.closeMu.Unlock()
	s.committer.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("spool: close: %w", err)
	}
	return nil
}

// Path returns the spool file's path.
func (s *Store) Path() string { return s.opts.Path }

// op is one piece of write work for the committer.
type op struct {
	fn   func(tx *bbolt.Tx) error
	cost int // body bytes it writes, for the batch budget
	// after, if set, runs in the committer once the outcome is known and
	// before it is sent: a body flush gives back its buffers and budget
	// there, so a delivery whose client went quiet holds neither.
	after func(err error)
	done  chan error // receives the outcome once
}

// finish reports the outcome of o.
func (o *op) finish(err error) {
	if o.after != nil {
		o.after(err)
	}
	o.done <- err
}

// update runs fn in a write transaction shared with other concurrent work
// and returns once that transaction is durable, or with fn's error (and
// nothing of fn's written). fn may run more than once and must depend only
// on tx.
func (s *Store) update(ctx context.Context, cost int, fn func(tx *bbolt.Tx) error) error {
	o := &op{fn: fn, cost: cost, done: make(chan error, 1)}
	if err := s.submit(ctx, o); err != nil {
		return err
	}
	// Once queued, the work is done whatever the caller's context says:
	// waiting for the outcome keeps the caller's view true.
	return <-o.done
}

// submit queues o for the committer without waiting for its outcome,
// which o.done receives. Ops submitted one after another by one goroutine
// run in that order, in one transaction or in successive ones. When submit
// fails, o has not run and o.after is not called.
func (s *Store) submit(ctx context.Context, o *op) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.ops <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runCommitter is the committer goroutine: it gathers queued work into one
// transaction at a time.
func (s *Store) runCommitter() {
	defer s.committer.Done()
	batch := make([]*op, 0, 256)
	for first := range s.ops {
		batch = append(batch[:0], first)
		cost := first.cost
	gather:
		for len(batch) < 1000 && cost < s.opts.MaxBatchBytes {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break gather
				}
				batch = append(batch, o)
				cost += o.cost
			default:
				break gather
			}
		}
		s.commit(batch)
	}
}

// errRolledBack marks a transaction the committer rolled back because one
// op failed.
var errRolledBack = errors.New("rolled back")

// commit runs a batch in one transaction. An op that fails is taken out
// with its error and the others run again.
func (s *Store) commit(batch []*op) {
	for len(batch) > 0 {
		failed, ferr := -1, error(nil)
		err := s.db.Update(func(tx *bbolt.Tx) error {
			for i, o := range batch {
				if err := o.fn(tx); err != nil {
					failed, ferr = i, err
					return errRolledBack
				}
			}
			return nil
		})
		if err == nil {
			for _, o := range batch {
				o.finish(nil)
			}
			return
		}
		if failed >= 0 && errors.Is(err, errRolledBack) {
			batch[failed].finish(ferr)
			batch = append(batch[:failed], batch[failed+1:]...)
			continue
		}
		err = storageError(err)
		if len(batch) > 1 {
			// The commit itself failed: often one large delivery that
			// filled the disk or max_size. The others, typically small
			// (a QUIT's deletions, which free space), get a transaction
			// each; every op is safe to run again.
			s.log.Warn("spool commit failed; retrying its writes one at a time", "err", err, "ops", len(batch))
			for _, o := range batch {
				s.commit([]*op{o})
			}
			return
		}
		s.log.Error("spool commit failed", "err", err)
		batch[0].finish(err)
		return
	}
}

// storageError maps a failed commit to ErrStorageFull where the disk or the
// configured size is full.
func storageError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, bolterrors.ErrMaxSizeReached) {
		return fmt.Errorf("%w: %v", ErrStorageFull, err)
	}
	return fmt.Errorf("spool: commit: %w", err)
}

// view runs fn in a read transaction.
func (s *Store) view(fn func(tx *bbolt.Tx) error) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return s.db.View(fn)
}

// dropPending deletes an unfinished delivery's chunks and its pending mark.
// It runs inside the caller's transaction.
func dropPending(tx *bbolt.Tx, id uint64) error {
	if err := deleteChunks(tx, id); err != nil {
		return err
	}
	return tx.Bucket(bucketPending).Delete(u64(id))
}

// deleteChunks deletes every chunk of message id. It runs inside the
// caller's transaction and collects the keys first, since deleting under a
// live cursor can skip keys.
func deleteChunks(tx *bbolt.Tx, id uint64) error {
	b := tx.Bucket(bucketChunks)
	prefix := u64(id)
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); len(k) == 12 && binary.BigEndian.Uint64(k) == id; k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
