// Package projector runs the workers that consume the events stream and
// apply the registry view handlers (the same store.ViewWriter replay uses),
// partitioned by subject, idempotent by sequence, horizontally scaled, and
// byte-identical to a replay of the log.
//
// # Topology
//
// The public stream's subjects never change. Each worker creates (or
// checks) a derived stream that sources the public one through a subject
// transform putting a partition number in front:
//
//	ARTIFACTSTORE_EVENTS                        ARTIFACTSTORE_EVENTS_P<N>
//	artifactstore.events.<t1>.<t2>.<t3>.<id> ──▶ artifactstore.partitioned.{{partition(N,4)}}.<t1>.<t2>.<t3>.<id>
//	                                              │ consumer registry-p0 (filter artifactstore.partitioned.0.>)
//	                                              │ consumer registry-p1  …                      priority group
//	                                              └ consumer registry-p<N-1>                    "projector", pinned
//
// The partition is FNV-1a-32(subject id) mod N, computed by the server; the
// projector computes the same function ([Partition]) to place log events it
// reads from PostgreSQL. Every event of one subject is in one partition, so
// per-subject order is partition order.
//
// Each partition has one durable pull consumer (explicit acks) in a pinned
// priority group: whatever happens to membership, at most one client at a
// time receives a partition's messages, and a client that stops pulling
// loses the pin after PinnedTTL.
//
// # Membership and assignment
//
// Workers heartbeat into a KV bucket (ARTIFACTSTORE_PROJECTORS, TTL =
// MemberTTL) under <projection>.<worker id> every MemberTTL/3 (at most a
// second apart: a moving partition is unowned between the moments its old
// and its new owner see the change) and list the
// live members each time. The bucket has file storage, so a nats-server
// restart keeps it; a heartbeat that fails (the bucket lost anyway, say
// a memory-storage one older workers created, or deleted) creates it
// again and beats once more, so partitions released while the members
// lapsed are taken back as soon as NATS is back. Partitions are spread
// round-robin over the sorted member ids, so every worker computes the
// same assignment: a worker that joins takes its share within one
// heartbeat, a worker that dies (its key expires) has its partitions taken
// over by the survivors. A member counts until two listings in a row miss
// it: a listing can miss a live member whose heartbeat replaced its value
// while the listing ran, and each such flap moved partitions away and back.
//
// A worker that releases a partition (a rebalance, or its own shutdown)
// pulls no more, finishes the fetch it has in flight — applying and acking
// every message delivered to it — and unpins the consumer, so the new
// owner starts right after the last ack. Cutting the fetch short would
// drop messages the server had already sent, which come back only after
// AckWait and hold the partition back that long
// (TestHandOverWithoutAckWait). For the same reason a pull request expires
// on the server (FetchMaxWait), which says so after its last message, not
// on a client deadline that can end the fetch while messages are on their
// way (TestFetchKeepsWhatTheServerSent).
//
// Why not orbit.go pcgroups: its static groups have a fixed member list
// (partitions only fail over between instances of the same member name,
// never to the other members), and its elastic groups change membership
// only by administrative calls; neither rebalances on a worker's death or
// arrival, which the projector must do by itself. The building blocks are
// the same (a partition token added by a subject transform, one pinned
// consumer per partition); the projector adds liveness-driven assignment
// and keeps correctness in PostgreSQL rather than in the consumer's state.
//
// # Correctness lives in the database
//
// Membership and pinning only make double work rare; they are never relied
// on. Each batch is one transaction that first compare-and-sets the
// partition's checkpoint from the value the worker last saw to the batch's
// last sequence, then applies the events through store.BufferedViews and
// flushes them:
//
//	BEGIN; UPDATE checkpoints SET sequence = last WHERE … AND sequence = cp;  -- 0 rows: ErrCheckpointMoved
//	       handlers(events) ; bulk upserts ; COMMIT ; then ack
//
// On PostgreSQL that is two round trips (store.BatchReader): the
// compare-and-set travels with BEGIN and a primary-key lookup of every row
// the batch reads, the handlers run on those rows in memory, and the
// upserts travel with COMMIT.
//
// A stale worker (paused past its pin, or finishing after a rebalance)
// fails the compare-and-set, re-reads the checkpoint and acks what is at
// or below it. An event at or below the checkpoint changes nothing.
// A crash between commit and ack leads to redeliveries that are skipped.
//
// # Gaps
//
// Before applying a batch the worker reads the log's keys (sequence,
// subject id, payload digest; cached per worker) between the checkpoint and
// the batch's last sequence and checks that the partition's events there
// are exactly the ones delivered, with the same payload digests. A
// predecessor that is missing is first looked for in the database (another
// worker may just have applied it), then waited for (it may be out with a
// dead worker until its ack wait expires); a predecessor the stream no
// longer holds (retention) is caught up from PostgreSQL; a predecessor the
// stream should hold but never delivers parks the partition with reason
// "gap". Nothing is skipped.
//
// Redeliveries do not come in sequence order (messages nakked at different
// times, some with a delay), so a group waiting for a predecessor is held,
// neither acked nor nakked, and handled again with the rest of the same
// fetch; only what is still waiting when the fetch ends counts as a gap.
// The gap's clock restarts whenever the predecessor is delivered (a
// database failure after its delivery sent it back), and a parked gap's
// retry gets the full window again.
//
// # Catch-up
//
// When a worker takes a partition whose checkpoint is below the first
// event the derived stream still holds (a fresh projection over a stream
// whose retention is shorter than the log), it applies the partition's
// events from PostgreSQL (store.DB.Fetch) up to that point, in batches,
// then follows the stream.
//
// # Poison events
//
// A handler error (not a temporary database error) applies the batch's
// events before the failing one, retries the failing one alone up to
// MaxAttempts times, then parks the partition: a row in projector_parked
// (what [Inspect] and status show), an error log and the
// artifactstore_projector_parked gauge. Other partitions go on. The parked
// partition retries after ParkRetry and at every (re)start of a worker
// that takes it; the transaction that finally applies the event deletes
// the parked row.
//
// # Replay equivalence
//
// View rows hold only event-determined values, and every path applies the
// same handlers in sequence order per subject, so the views equal a replay.
// store.Replay writes every partition's checkpoint (ReplayOptions.Partitions,
// by default the projection's current partition count), so workers resume
// right after a replay --reset; a projection with only an unpartitioned
// checkpoint (a replay before any worker ran) has it copied to every
// partition when a worker starts. Changing the partition count needs a
// replay --reset (Run refuses with ErrPartitionsChanged).
//
// # Limits
//
//   - A worker stopped (SIGSTOP) inside a batch transaction keeps the
//     partition's checkpoint row locked until it resumes or PostgreSQL
//     ends the session (set idle_in_transaction_session_timeout); a worker
//     stopped between transactions is simply outrun (compare-and-set).
//   - The derived stream is created, never updated: a change of the public
//     stream's limits is not copied to it (delete it to have it recreated).
//   - The server starts sourcing into a new derived stream a few hundred
//     milliseconds after creating it; the first events wait that long.
//   - Rebalancing is round-robin over the sorted member ids: a join or a
//     death moves several partitions, and a partition whose previous owner
//     died (rather than handing it over) resumes after the dead owner's
//     messages' AckWait.
package projector
