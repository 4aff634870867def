// Package store holds artifactstore's event model and the contracts every
// dialect of the log implements: appending events in commit order, reading
// them back (fetch-since, tail, replay) and maintaining the registry views.
//
// # The log
//
// Every change to the registry is one immutable [Event]. Events are written
// with [Tx.Append] inside the caller's transaction; the database assigns each
// event its sequence and created_at as the last step before commit.
//
// # Commit-order sequences
//
// A reader that follows the log with "sequence > cursor" must never skip an
// event whose transaction commits late. Both dialects therefore serialise
// sequence assignment through a single counter row (log_head): a
// transaction's first Append locks it (PostgreSQL: by updating it, or
// SELECT … FOR UPDATE; SQLite: its BEGIN IMMEDIATE write lock) and keeps
// the lock until the transaction ends. A second writer waits on that lock, so sequences are
// handed out strictly in commit order and without gaps (a rolled-back
// transaction releases its numbers before anybody else takes them).
// Because Append takes the lock, it should be the last statement before
// commit; everything else the transaction does (decisions, view writes)
// runs before it, concurrently with other writers. Writing many events in
// one transaction costs one counter update, which is what makes batching
// cheap.
//
//	writer A: BEGIN … decide … lock log_head (seq 5..7) INSERT … COMMIT
//	writer B: BEGIN … decide …     waits ─────────────▶ lock log_head (seq 8) INSERT … COMMIT
//
// created_at is the database's clock, but never below the previous
// created_at, so it never decreases along the sequence. (On PostgreSQL it
// is read with the head, or, when the head was expected rather than read,
// the writer's estimate of that clock, which the database refuses if it is
// ahead of its clock or behind the previous event's.)
//
// # The hash chain
//
// log_head also carries the chain digest of the last event. Under the same
// lock, the writer chains the new events to it ([ChainDigest]: BLAKE3 over
// the event's fields and the previous digest) and moves it to the last
// one's. The chain thus follows commit order whatever the batching, and
// [VerifyLog] recomputes it to show the log was not rewritten. What the
// writer can hash before the lock (the event's own fields) it hashes then
// ([StartPrepareChain]); under the lock it hashes one block per event.
//
// PostgreSQL has no BLAKE3, so the digests are computed by the writing
// process. Rather than read the head and only then send the rows (holding
// the lock across a turnaround), a PostgreSQL handle chains them to the
// head it expects — the one it last appended or read, or for ingest's
// batches the one the batches it has in flight will leave — and sends them
// with the lock request, in an insert the database refuses unless the head
// is the expected one (sequence, chain digest, created_at between the
// previous event's and the database's clock). A wrong guess costs round
// trips, never a wrong link: the writer then chains to the head it reads.
//
// # Views
//
// The registry views (artifact_packages, retention_state) are written only
// by [Handler]s registered in a [Handlers] registry. The same handlers run
// on every path that applies events (replay, projectors, tests of the direct
// path), so a view built any way is byte-identical to a replay.
package store
