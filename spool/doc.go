// Package spool is Postie's store: accounts, mailboxes and messages, bodies
// included, in one bbolt file in the data directory.
//
// # The write path
//
// SMTP hands a message to [Store.Begin], writes the body into the returned
// [Delivery] as it arrives, and calls [Delivery.Commit] with the header
// lines it prepends (Received, Authentication-Results) and the accounts the
// message is for. Commit returns only after the transaction that links the
// message into every mailbox has been fsynced: that return is what lets SMTP
// answer 250. Until then nothing is visible, and a delivery that is
// abandoned (Abort, a crash, kill -9) leaves only chunks marked pending,
// which the next [Open] removes.
//
// Bodies are normalised to CRLF line endings as they are written (a bare LF
// or a bare CR becomes CRLF, and a message that does not end in CRLF gets
// one), so the stored size is exactly what POP3 LIST reports and RETR sends
// before dot-stuffing.
//
// A bbolt write transaction keeps its dirty pages in memory until it
// commits, so a large body goes in as chunks of about 64 KiB, handed to the
// committer [Options.FlushBytes] at a time, and only the last transaction
// links it. A delivery does not wait for its flushes: it goes on reading
// while they commit, and the committer takes whatever queued meanwhile,
// often the delivery's Commit too, into its next transaction. That matters
// twice over: every transaction costs two fsyncs, and bbolt rewrites the
// leaf a delivery's body ends in (two to four chunks, as a leaf holds at
// least two keys) once in every transaction that appends to it. Because
// flushes are not waited for, each later write checks in its transaction
// that the earlier ones landed (a token and a count in the pending mark).
// What flushes hold until committed is bounded per delivery
// ([Options.FlushAhead]) and for all of them together
// ([Options.FlushBudget]); past either, Write waits. So the memory a
// delivery costs is bounded whatever the size of the message, and that of
// many deliveries at once by the budget.
//
// # Group commit
//
// Every write goes through one committer goroutine. It takes whatever work
// is queued, runs it in one bbolt transaction and fsyncs once for all of it,
// so concurrent deliveries share fsyncs without waiting for a timer (bbolt's
// Batch waits up to its MaxBatchDelay even when alone). If one piece of work
// fails, the transaction is rolled back, that piece gets its error, and the
// rest run again in a new transaction, so every function given to the
// committer must depend only on the transaction it is given.
//
// # The read path
//
// POP3 opens a [Maildrop]: an exclusive per-account (per-device) lock and a
// snapshot of the messages taken in one short read transaction. A message is
// read back as a stream, a few chunks per short read transaction, so a slow
// client never holds a transaction open (long read transactions keep bbolt
// from reusing pages and block the remapping a growing file needs).
// [Maildrop.Commit] applies the client's deletions in one transaction.
//
// # UIDs and UIDLs
//
// Each mailbox numbers its messages from its own bbolt sequence, so a UID is
// never reused in a mailbox, also across restarts. The UIDL a client sees is
// "<uid>.<arrival in Unix seconds>": even if the file is restored from an
// older backup and the sequence goes back, a new message gets a UIDL no
// client has seen.
//
// # Durability
//
// bbolt's NoSync and NoGrowSync stay off: a commit writes the pages,
// fdatasyncs, writes the meta page and fdatasyncs again. Open takes bbolt's
// file lock and fails at once with [ErrLocked] when another process holds
// it.
package spool
