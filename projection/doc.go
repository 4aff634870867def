// Package projection runs a downstream team's projection: a read model in
// the team's own PostgreSQL, built from the artifactstore events stream
// alone (no access to the log's database), with the guarantees of the
// registry's projector (package projector): partitioned by subject,
// idempotent by sequence, never past an unapplied event, horizontally
// scaled, equal to a replay of the same events.
//
// # Using it
//
// A projection is a name, handlers by event type, the SQL migrations of
// its tables and the list of those tables:
//
//	p := projection.Projection{
//		Name:       "finalized_per_day",
//		Migrations: []string{`CREATE TABLE finalized_per_day (actor text, day date, count bigint NOT NULL, last_sequence bigint NOT NULL, PRIMARY KEY (actor, day))`},
//		Tables:     []string{"finalized_per_day"},
//		Handlers: map[string]projection.Handler{
//			"v1.package.finalized": func(ctx context.Context, tx pgx.Tx, e projection.Event) error {
//				_, err := tx.Exec(ctx, `INSERT INTO finalized_per_day VALUES ($1, $2, 1, $3)
//					ON CONFLICT (actor, day) DO UPDATE SET count = finalized_per_day.count + 1,
//						last_sequence = greatest(finalized_per_day.last_sequence, excluded.last_sequence)`,
//					e.Actor, e.CreatedAt.UTC().Format(time.DateOnly), e.Sequence)
//				return err
//			},
//		},
//		Serialize: true, // rows shared by many subjects (see Projection.Serialize)
//	}
//	r, err := projection.New(pool, js, p, projection.Config{Logger: log, Registerer: prometheus.DefaultRegisterer})
//	err = r.Run(ctx) // until ctx ends
//
// pool's search_path names the schema of the tables; the runtime keeps its
// own tables next to them. Run as many instances (processes) as you like
// against one database: they share the partitions. examples/finalized-per-day
// is a complete program.
//
// Handlers run inside the transaction that moves the event's partition
// checkpoint, and must write only what the event determines (never
// now()), so that Replay of the same events builds the same rows. Events
// of one subject arrive in sequence order; events of different partitions
// in any interleaving. So a row that many subjects write (an aggregate)
// must come out the same in any order: counts and sums, greatest() of
// sequences, never "the last event written wins".
//
// # One stream, read per partition
//
// The relay publishes each event once to
// artifactstore.events.<type>.<subject_id>.<p>, p = FNV-1a-32(subject id)
// mod P. An instance reads each partition it holds with an ordered
// consumer filtered to artifactstore.events.*.*.*.*.<p>, started at the
// partition's first message above its checkpoint (a binary search over the
// stream, which holds events in log order). Nothing is stored on the
// server per message; no durable consumer.
//
//	ARTIFACTSTORE_EVENTS ──filter …​.0──▶ instance a: partition 0 ─┐
//	                     ──filter …​.1──▶ instance b: partition 1 ─┼─▶ BEGIN; CAS checkpoint; handlers; COMMIT
//	                     ──filter …​.k──▶ …                        ─┘     (the team's PostgreSQL)
//
// # Correctness lives in the database
//
// Each batch is one transaction that first compare-and-sets the
// partition's checkpoint (projection_checkpoints) from the value the
// instance last saw to the batch's last sequence, then runs the handlers:
//
//	BEGIN; UPDATE projection_checkpoints SET sequence = last WHERE … AND sequence = cp; -- 0 rows: moved
//	       handlers(events); COMMIT
//
// Two instances that both believe they hold a partition cannot both commit
// a range: the second waits on the first's row lock, finds the checkpoint
// moved, re-reads it and applies only what is above it. A message at or
// below the checkpoint is skipped (guarantee 4 of DESIGN.md). Unknown event
// types are skipped with the checkpoint advanced (guarantee 6). A batch
// that deadlocks or fails to serialize is retried at once.
//
// # Never past an unapplied event
//
// A checkpoint means "every event of this partition up to here is
// applied". Each message names its partition's previous event
// (Artifactstore-Partition-Previous). When that is above the checkpoint,
// the stream lacks events of the partition (its limits removed them, or
// they were lost), and with no access to the log nothing can supply them:
// the partition parks with reason gap on that message, its checkpoint
// below the missing events, and says so in projection_parked, its metric
// and an error log. When Config.Log is set (the projection lives in the
// log's database, e.g. an internal team) the missing events are applied
// from the log instead, as the projector does. A checkpoint never moves
// past an event it did not apply (guarantee 7).
//
// # Parked partitions
//
// A partition parks (a projection_parked row, the
// artifactstore_projection_parked gauge, an error log) with reason
//   - poison: a handler failed on the event MaxAttempts times in a row
//     (the events before it are applied);
//   - gap: the stream lacks its predecessors (above);
//   - invalid: the message is not an event of the projection's log and
//     partition (headers missing or malformed, a digest that does not match
//     the body, another log id, a partition that is not its subject's).
//
// Other partitions go on. A parked partition retries after ParkRetry and
// whenever an instance takes it over; the transaction that finally
// applies past the event deletes the row, and a partition whose message
// has left the stream (an operator removed it: nats stream rmm) resumes
// too. Fix a handler and redeploy; a gap needs the events: rebuild the
// projection from a stream that holds them, or run with a log source.
//
// # Identity: one log, one partition count
//
// The first start records the log id and the partition count P in
// projection_meta: the configured ones (Config.LogID, Config.Partitions),
// else the ones the stream's events tell (a sample of up to 32 messages:
// P is the only count under which each sampled event is in its subject's
// partition; too few distinct subjects return ErrPartitionsUnknown). Every
// later start checks them against the configuration, a majority of the
// sampled events and the log source, and refuses another log
// (ErrForeignLog) or count (ErrPartitionsChanged): a stream rebuilt from
// another log or with another P needs the projection built anew. Every
// message is checked as it is applied.
//
// # Ownership: leases in the team's database
//
// Instances renew a member row (projection_members) and leases on their
// share of the partitions (projection_leases) every LeaseTTL/4 on a
// connection of their own; a lease lasts LeaseTTL (2 s) by the database's
// clock. Partitions are spread round-robin over the sorted live members,
// so every instance computes the same assignment: a joining instance takes
// its share within a heartbeat, a dead one's partitions move when its
// leases expire. The same scheme as the projector's: the team's database
// is what the work needs, so being able to reach it is the liveness that
// matters. Leases only make double work rare; the checkpoint's
// compare-and-set is the fence.
//
// # Migrations
//
// Run (or Migrate) creates the runtime's tables and applies the
// projection's migration statements not yet applied, in one transaction
// under an advisory lock keyed by the schema, recording each statement's
// BLAKE3 digest in projection_migrations. Statements are append-only: an
// applied one that changed is refused (ErrMigrationChanged).
//
// # Replay equivalence
//
// Replay builds the projection from a sequence of events (StreamEvents:
// what the stream holds; LogEvents: the log) in one transaction, into a
// schema of its own; Dump renders tables canonically. Tables built by any
// number of instances, crashed and restarted, equal a replay of the same
// events: handlers run in sequence order per subject, each event once.
//
// # Limits
//
//   - Without a log source, events the stream no longer holds cannot be
//     applied: a partition whose last events were lost, with no successor
//     to tell, does not know it.
//   - Aggregates over subjects (rows written by events of many partitions)
//     need Projection.Serialize, which commits one batch at a time.
//   - An instance stopped (SIGSTOP) inside a batch keeps its checkpoint row
//     locked until PostgreSQL ends the session; set
//     idle_in_transaction_session_timeout on the team's role.
package projection
