// Package relay is the outbox relay: it publishes every committed event of
// the log to the JetStream stream ARTIFACTSTORE_EVENTS, in sequence order and
// exactly once, and resumes from what the stream already holds.
//
// # Where the relay stands
//
// The stream itself is the relay's cursor. At every (re)synchronisation the
// relay reads the stream's last message: its Artifactstore-Log-Id must be the
// log's id (a stream written from another log is [ErrForeignStream], never
// silently continued) and its Artifactstore-Sequence is the last event the
// stream holds. The relay then fetches the events after it from the log.
// Because the log hands out sequences in commit order (store/doc.go), "the
// events after the last one in the stream" never skips an event whose
// transaction committed late.
//
// # A log that lost commits
//
// The stream's cursor is only as good as the log behind it. When PostgreSQL
// loses recent commits that are already in the stream (a restore from a
// backup, an asynchronous replica promoted) but keeps its log id, new
// commits reuse the lost sequences; relaying "the events after the stream's
// last one" would splice the log's new history after the stream's old one.
// So at every synchronisation the relay compares the stream's last event
// (Artifactstore-Sequence, Nats-Msg-Id and the payload digest, all checked
// by [Decode], plus type, subject, actor, created_at and chain digest) with
// the log's
// event at that sequence, and every later read of the log re-checks the
// last event read. When they differ, or the log has no event there, Run
// returns a [*DivergedError] (wrapping [ErrDivergedHistory]) naming the
// sequence and both payload digests, and publishes nothing; it is not
// retried. (A log that simply ends before the stream's last event is
// [ErrStreamAhead].)
//
// The way out is the operator's, because downstream consumers hold the old
// history: build a new stream from the log — stop the relays, point them at
// a new stream name (--stream / ARTIFACTSTORE_STREAM; the relay creates and
// fills it from event 1), or move the old stream aside and let the relay
// recreate ARTIFACTSTORE_EVENTS — then announce to downstream consumers
// that the history was rewritten from sequence N (the error's Sequence at
// the latest) and that they must re-read from the new stream. Never purge
// or edit the old stream in place to make the relay continue.
//
// # Fencing
//
// Every message carries Nats-Expected-Last-Sequence: the stream sequence the
// relay expects the stream to end at just before the message. Event N+i,
// published after a synchronisation that found event N at stream sequence S,
// expects S+i-1. JetStream rejects the message when anything else was stored
// in between, so a stale relay, a second relay or a retried message can never
// interleave or duplicate: it is refused, and the relay re-reads the stream.
// The check holds however long ago the last message was written, unlike the
// Nats-Msg-Id duplicate window, which the relay sets as well.
//
//	stream:  … [S: event N] [S+1: event N+1] [S+2: event N+2]
//	relay A: sync → (N, S) → publish N+1 expect S ✓, N+2 expect S+1 ✓
//	relay B: sync → (N, S) → publish N+1 expect S ✗ wrong last sequence → re-sync → (N+2, S+2)
//
// By induction every accepted message is the event that follows the one
// before it, whoever published it. The leader lock (store.DB.TryLock) keeps
// one relay active so that standbys do not burn work on rejected publishes;
// it is an optimisation for safety, the fence is the guarantee.
//
// With [Config.PublishBatch] the relay publishes atomic batches instead
// (below); only a batch's first message carries the fence, which JetStream
// checks when the batch commits, and a batch is stored whole or not at all,
// so the induction holds batch by batch.
//
// # Failover
//
// The lock is what makes a standby take over, so it must not outlive a
// relay that can no longer relay. A PostgreSQL session advisory lock did:
// a relay cut off by a partition that neither kernel reports (a proxy or
// middlebox that keeps both TCP connections open) kept its session, and so
// the lock, forever, since the server saw a healthy connection; keepalives,
// tcp_user_timeout and idle_session_timeout cannot help when the server's
// peer is a live middlebox and the session is merely idle. On PostgreSQL
// the lock is therefore a lease row with an expiry in server time
// (store/postgres, Config.LockTTL, 3 s by default): the holder renews it
// every third of the TTL, each renewal bounded so that it ends before the
// lease could expire, and gives up (the lost channel closes, the relay
// stops publishing and stands by) at the first renewal that fails, is late,
// or finds the lease taken. Anyone may take an expired lease, so a standby
// takes over about one TTL after the active relay was cut off (2–3 s in
// TestStandbyTakesOverFromCutOffRelay). SQLite (dev, one host) keeps an
// flock, which the kernel releases with the process.
//
// A lease alone cannot stop a holder that is paused (GC, SIGSTOP, a slow
// host) past its own deadline from publishing. No fencing token is needed
// for that: every publish carries the expected last stream sequence, so a
// stale relay's publish is either refused (the new leader has published)
// or is the very next event of the log, which is correct whoever sends it;
// the new leader is then fenced once and re-reads the stream. Nothing can
// be duplicated or reordered, whoever holds the lease.
//
// Fencing alone does not stop a message published by anything else: it
// fences the relay's next publish, but the pipelined ones behind it expect
// the stream to end after it and are stored, and a foreign message that
// takes an event's message id turns the event's own publish into a
// "duplicate". So every synchronisation first checks the stream's messages
// after the last one the relay knows to be the log's (its last publish
// acknowledged as new) against the log, and a duplicate answer is never
// taken as success; a message that is not the log's next event stops the
// relay with a *ForeignMessageError naming its stream sequence.
//
// # Pipelining
//
// Publishing is asynchronous with a bounded window of unacknowledged messages
// ([Config.MaxInFlight]); a prefetching reader keeps the next batch of events
// ready. Acks are consumed in order. Any error, rejection or ack timeout ends
// the window: the relay waits (bounded) for what is still in flight, re-reads
// the stream and starts again from there. What is still unanswered then is
// abandoned, as the next session starts, with the JetStream context's
// CleanupPublisher: a stream without
// a leader drops publishes without an answer, and futures kept for them
// would fill the context's max pending until every publish failed with
// ErrTooManyStalledMsgs (artifactstore_relay_abandoned_publishes_total
// counts them). cmd also gives the relay's context a publish-async timeout.
//
// # Atomic batches
//
// A server with sync_interval: always (the shipped NATS configuration)
// fsyncs every stored message before acknowledging it, which caps
// per-event publishing at about a thousand events per second on one disk.
// With [Config.PublishBatch] set, the relay publishes JetStream atomic
// batches (nats-server 2.12+): the server stages a batch's messages and
// stores and syncs them together when the last one, carrying
// Nats-Batch-Commit, arrives; only the commit is answered. Messages are
// those of per-event publishing plus Nats-Batch-Id and
// Nats-Batch-Sequence (and Nats-Batch-Commit on the last), which the stream
// keeps; Nats-Expected-Last-Sequence is on the first message of each batch
// only. A batch never spans two reads of the log, and up to
// MaxInFlight/PublishBatch batches (1..4) await their answer. Any failure
// (the batch refused as incomplete, fenced or duplicate, no answer in time,
// the connection lost between two of its messages) ends the session as
// above: the batch was stored whole or not at all, and the relay re-reads
// the stream. A batch the server never saw the end of is dropped by the
// server after 10 s.
//
// The relay creates the stream with allow_atomic when PublishBatch is set.
// It never updates a stream (its NATS user may not), so on an existing
// stream without allow_atomic it publishes event by event, correctly but
// slowly, says so once in a warning (and artifactstore_relay_publish_batch
// is 0) rather than refusing to run: the setting is about speed, and a
// standby with the same configuration must be able to take over.
//
// # Messages
//
// Subject artifactstore.events.<event_type>.<subject_id>, body the payload
// bytes as stored, and the headers listed in DESIGN.md ([Encode], [Decode]).
// Artifactstore-Created-At is RFC 3339 in UTC with exactly nine fractional
// digits. Every header value is the field verbatim: the store refuses
// actors with control characters or surrounding spaces, the only values a
// NATS header could not carry.
//
// # Operating it
//
// Metrics (when Config.Registerer is set), each labelled with the stream:
// artifactstore_relay_position (last event known in the stream),
// artifactstore_relay_log_head, artifactstore_relay_lag (head − position),
// artifactstore_relay_published_total (rate() of it is the publish rate),
// artifactstore_relay_batches_total and artifactstore_relay_publish_batch
// (atomic batches),
// artifactstore_relay_errors_total{kind="database|nats|fenced|timeout|stream|checkpoint"},
// artifactstore_relay_resyncs_total, artifactstore_relay_leader (1 on the
// active relay) and artifactstore_relay_checkpoint_sequence. [ReadStatus]
// and [ReadPosition] read the same position from the stream itself,
// without a running relay.
//
// # Tamper evidence
//
// The relay creates the stream denying message deletes and purges, and
// refuses a stream that allows them unless Config.AllowStreamDeletes.
// Given Config.CheckpointKey, the active relay signs checkpoints of its
// position (log id, sequence, chain digest) into the key-value bucket
// ARTIFACTSTORE_CHECKPOINTS; [ReadCheckpoint] reads the latest, and
// [StreamCheck] compares the stream with the log for artifactstore verify.
package relay
