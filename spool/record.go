package spool

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/bbolt"
)

// Bucket names. Every bucket the spool uses is declared here.
var (
	bucketMeta      = []byte("meta")      // schema version and store-wide counters
	bucketAccounts  = []byte("accounts")  // address -> accountRecord (JSON)
	bucketMailboxes = []byte("mailboxes") // address -> bucket: uid (8 bytes) -> entryRecord; "stats" -> mailboxStats
	bucketMessages  = []byte("messages")  // message id (8 bytes) -> messageRecord (JSON)
	bucketChunks    = []byte("chunks")    // message id (8) + index (4) -> body bytes
	bucketPending   = []byte("pending")   // message id (8) -> start time: deliveries not yet linked
	// message id (8 bytes) -> quarantineRecord (JSON): messages held for
	// the owner instead of delivered. Stores made before it lack it until
	// Open creates it.
	bucketQuarantine = []byte("quarantine")

	keySchemaVersion = []byte("schema_version")
	keyStats         = []byte("stats")
)

// schemaVersion is the layout of the file this code reads and writes.
const schemaVersion = 1

// u64 encodes n as an 8-byte big-endian key, so cursor order is numeric order.
func u64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// chunkKey is the key of chunk idx of message id. Index 0 holds the header
// lines prepended at commit; the body starts at index 1.
func chunkKey(id uint64, idx uint32) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, id)
	binary.BigEndian.PutUint32(b[8:], idx)
	return b
}

// Envelope is what the SMTP session knew about a message: who handed it over
// and for whom.
type Envelope struct {
	// MailFrom is the reverse-path of MAIL FROM, empty for the null sender.
	MailFrom string `json:"from"`
	// RcptTo lists the recipients as the client gave them.
	RcptTo []string `json:"to"`
	// Helo is the name the client gave in HELO or EHLO.
	Helo string `json:"helo,omitempty"`
	// RemoteAddr is the client's IP address.
	RemoteAddr string `json:"remote,omitempty"`
}

// messageRecord describes one stored message. The body lives in the chunks
// bucket; each mailbox that holds the message has an entry pointing here.
type messageRecord struct {
	Envelope Envelope  `json:"env"`
	Arrived  time.Time `json:"arrived"`
	Size     int64     `json:"size"`   // prefix + body, CRLF-normalised
	Chunks   uint32    `json:"chunks"` // body chunks, indexes 1..Chunks
	Prefix   bool      `json:"prefix"` // chunk 0 holds prepended header lines
	Refs     int       `json:"refs"`   // mailbox entries that point here
}

// entryRecord is a message's place in one mailbox.
type entryRecord struct {
	Message uint64    `json:"msg"`
	Size    int64     `json:"size"`
	Arrived time.Time `json:"arrived"`
	// DeletedBy lists the devices that deleted the message from their view.
	DeletedBy []uint32 `json:"deleted_by,omitempty"`
	// FirstDeleted is when the first device deleted it.
	FirstDeleted time.Time `json:"first_deleted,omitzero"`
	// Trashed is when it was removed from every view; it is kept, hidden,
	// until the retention time has passed, and can be restored until then.
	Trashed time.Time `json:"trashed,omitzero"`
}

func (e *entryRecord) deletedBy(dev uint32) bool {
	for _, d := range e.DeletedBy {
		if d == dev {
			return true
		}
	}
	return false
}

// mailboxStats are the running totals of one mailbox, kept beside its entries.
type mailboxStats struct {
	Messages int   `json:"messages"`
	Bytes    int64 `json:"bytes"`
}

// storeStats are the running totals of the whole store, kept in the meta bucket.
type storeStats struct {
	Messages int   `json:"messages"` // distinct stored messages
	Bytes    int64 `json:"bytes"`    // their total size
}

// uidl formats the unique-id listing of a message (RFC 1939 §7: 1 to 70
// characters in the range 0x21 to 0x7E).
func uidl(uid uint64, arrived time.Time) string {
	return strconv.FormatUint(uid, 10) + "." + strconv.FormatInt(arrived.Unix(), 10)
}

// forEachEntry calls fn for every entry of mailbox bucket mb, in UID order,
// skipping the bucket's other keys. The entry is decoded for fn; fn must
// not write to mb (collect, then write).
func forEachEntry(mb *bbolt.Bucket, fn func(uid uint64, e *entryRecord) error) error {
	return mb.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return nil
		}
		var e entryRecord
		if err := decode("entry", v, &e); err != nil {
			return fmt.Errorf("uid %d: %w", binary.BigEndian.Uint64(k), err)
		}
		return fn(binary.BigEndian.Uint64(k), &e)
	})
}

func decode(what string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("spool: corrupt %s record: %w", what, err)
	}
	return nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own record types are encoded; they always marshal.
		panic(fmt.Sprintf("spool: encoding %T: %v", v, err))
	}
	return b
}
