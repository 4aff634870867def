// Package projector runs the workers that consume the events stream and
// apply the registry view handlers (the same store.ViewWriter replay uses),
// partitioned by subject, idempotent by sequence, horizontally scaled, and
// byte-identical to a replay of the log.
//
// # One stream, read per partition
//
// The relay publishes every event once, to
// artifactstore.events.<event_type>.<subject_id>.<p> where p is
// FNV-1a-32(subject id) mod P and P is the log's partition count, recorded
// when the log was first migrated (internal/wire). A worker reads each
// partition it holds straight from ARTIFACTSTORE_EVENTS with an ordered
// consumer filtered to artifactstore.events.*.*.*.*.<p>: no acks, no
// durable consumer, nothing written on the server per message, and no
// second stored copy of the events. The consumer starts at the stream's
// first message of the partition above the checkpoint (a binary search
// over the stream, which holds events in log order).
//
//	ARTIFACTSTORE_EVENTS ──filter …​.0──▶ worker a: partition 0 ─┐
//	                     ──filter …​.1──▶ worker b: partition 1 ─┼─▶ BEGIN; CAS checkpoint; views; COMMIT
//	                     ──filter …​.k──▶ …                      ─┘
//
// # Never past an unapplied event
//
// A checkpoint means "every event of this partition up to here is
// applied". Each message names the log sequence of its partition's
// previous event (Artifactstore-Partition-Previous). When it is above what
// the worker has applied, the stream lacks events of the partition (limits
// removed them, or they were lost): the worker applies them from the log
// (store.DB.Fetch) before the message, never skipping one. An idle
// partition moves its checkpoint only up to just below its first event in
// the log above the checkpoint, and when that event is older than anything
// the stream still holds it is applied from the log. Nothing is kept in
// memory about the log, so no backlog, however large, can make a
// checkpoint pass an event (DESIGN.md, guarantee 7).
//
// # Ownership: leases in PostgreSQL
//
// Workers renew a member row (projector_members) and leases on their share
// of the partitions (projector_leases) every LeaseTTL/4; a lease lasts
// LeaseTTL (2 s) by the database's clock. Partitions are spread round-robin
// over the sorted live members, so every worker computes the same
// assignment: a joining worker is seen within a heartbeat, the others stop
// the partitions it should have (finishing the transaction in flight) and
// give their leases back, and it claims them; a dead worker's leases expire
// and the survivors claim them. Failover and joins take at most LeaseTTL
// plus a heartbeat.
//
// Why PostgreSQL and not a NATS KV bucket: a projector's work is
// transactions on PostgreSQL, so the liveness that matters is being able to
// reach it. A worker cut off from PostgreSQL (even by a partition that
// keeps its connections open and silent) cannot renew; it stops its
// partitions as soon as its leases may have expired (it measures LeaseTTL
// from the start of its last successful renewal, which is before the
// database's), and the others take them. With KV heartbeats such a worker
// kept its partitions for good while the views stood still. Projector
// sessions should set idle_in_transaction_session_timeout (cmd sets it),
// so that a transaction left open by a cut-off worker does not hold the
// checkpoint row's lock for long.
//
// # Correctness lives in the database
//
// Leases only make double work rare; they are never relied on. Each batch
// is one transaction that first compare-and-sets the partition's
// checkpoint from the value the worker last saw to the batch's last
// sequence, then applies the events through store.BufferedViews:
//
//	BEGIN; UPDATE checkpoints SET sequence = last WHERE … AND sequence = cp;  -- 0 rows: ErrCheckpointMoved
//	       handlers(events) ; bulk upserts ; COMMIT
//
// On PostgreSQL that is two round trips (store.BatchReader). Two workers
// that both believe they hold a partition cannot both commit the same
// range: the second fails the compare-and-set, re-reads the checkpoint and
// applies only what is above it. A worker that resumes after a pause
// longer than its lease refuses to commit at all.
//
// # Poison events
//
// A handler error (not a temporary database error) applies the batch's
// events before the failing one, retries the failing one alone up to
// MaxAttempts times, then parks the partition: a row in projector_parked
// (what [Inspect] and status show), an error log and the
// artifactstore_projector_parked gauge. Other partitions go on. The parked
// partition retries after ParkRetry and whenever a worker takes it; the
// transaction that finally applies the event deletes the parked row. A
// message that does not decode, or belongs to another log or partition,
// parks the partition the same way.
//
// # Replay equivalence
//
// View rows hold only event-determined values, and every path applies the
// same handlers in sequence order per subject, so the views equal a replay.
// store.Replay writes every partition's checkpoint, so workers resume right
// after a replay --reset.
//
// # Rebuilds beside the live version
//
// [Rebuild] builds a new version of a projection while workers keep the
// live one current (PostgreSQL, store.Rebuilder): store.Replay loads the
// log into the version's empty tables (its own schema, unlogged and
// without secondary indexes until the load is done), a Worker of its own
// follows the stream on the version (checkpoints "<projection>-v<N>")
// until it is within SwitchLag of the head, and one transaction switches:
// it locks the live checkpoints (so no batch commits), applies the rest
// from the log, swaps the tables under the same names and moves the live
// checkpoints forward. Live workers' compare-and-set then fails once; they
// re-read the checkpoint and go on after it. Queries queue behind the
// switch while it waits for the live tables, so that wait is short
// (TableLockTimeout) and the switch is tried again. A rebuild killed during
// its load is abandoned by the next run, one killed after it is resumed.
//
// # Limits
//
//   - A worker stopped (SIGSTOP) inside a batch transaction keeps the
//     partition's checkpoint row locked until PostgreSQL ends the session
//     (idle_in_transaction_session_timeout); the new owner waits that long.
//   - The partition count is the log's for its life. Changing it means a
//     new stream built from the log and replay --reset.
//   - Rebalancing is round-robin over the sorted member ids: a join or a
//     death moves several partitions.
package projector
