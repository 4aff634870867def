package store

import "context"

// CommandRecord is what the log keeps of a completed command, by its
// command_id: the reply it was answered with and the fingerprint of its
// parameters, so that a retry is answered the same and a command_id
// reused for another command is recognised. Fingerprint is nil for
// commands recorded before fingerprints were (migration 00005).
type CommandRecord struct {
	Reply       []byte
	Fingerprint []byte
}

// CommandBatcher is implemented by transactions that can decide a batch of
// commands set-wise: ClaimAll, then CommandReplies for the ids seen
// before, then AppendCommands, which ends the transaction. It is
// Tx's command-side methods in bulk, with the same answers row by row;
// a group-committing writer (ingest) uses it where a dialect has it
// (PostgreSQL: two pipelined round trips, the second of which commits)
// and adapts the single-row methods elsewhere (SQLite).
type CommandBatcher interface {
	// ClaimAll claims command ids, records new packages and finalizes
	// packages, in that order: claimed[i] reports whether commandIDs[i]
	// (distinct) was newly recorded, with fingerprints[i]; created[i]
	// whether (names[i], versions[i]) was free for createIDs[i] (of a pair
	// given twice the first wins); finalized[i] whether finalIDs[i] was
	// open (of an id given twice, the first), exists[i] whether it is
	// known. The creates' packages are known to the finalizes. It may
	// take the log's commit-order lock (PostgreSQL does when it cannot
	// expect the head AppendCommands will chain to): what follows it until
	// AppendCommands then holds every appender back, so it must be short.
	ClaimAll(ctx context.Context, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) (claimed, created, finalized, exists []bool, err error)
	// CommandReplies returns the records (fingerprint and first reply) of
	// the completed commands among ids, the replies rebuilt with replyOf
	// from their events where only the sequence was kept.
	CommandReplies(ctx context.Context, ids []string, replyOf func(Event) ([]byte, error)) (map[string]CommandRecord, error)
	// AppendCommands forgets the claims of release, appends events, and
	// records that events[i] answered commandIDs[i] (where not ""). It is
	// the transaction's last call and may commit it; an error wrapping
	// ErrOutcomeUnknown means it may have committed.
	AppendCommands(ctx context.Context, release []string, events []Event, commandIDs []string, replyOf func(Event) ([]byte, error)) ([]Event, error)
}

// HeadGuesser is implemented by a DB whose writers chain events to the log
// head they expect instead of reading it first (PostgreSQL, which cannot
// compute the chain itself): how many of its guesses were right and how
// many wrong (each wrong one cost round trips; see store/doc.go).
type HeadGuesser interface {
	HeadGuesses() (right, wrong int64)
}
