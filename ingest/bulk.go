package ingest

import (
	"context"
	"errors"

	"github.com/artifactstore/artifactstore/store"
)

// bulkTx is the set-based form of store.Tx's command-side methods: a batch
// of commands is decided with ClaimAll, then AppendCommands ends it. A
// dialect's Tx may implement it (store/postgres does, in pipelined round
// trips, the last of which commits); for others, bulk adapts the
// single-row methods.
type bulkTx interface {
	// ClaimAll claims command ids, records new packages and finalizes
	// packages, in that order: claimed[i] reports whether commandIDs[i]
	// (distinct) was newly recorded, with fingerprints[i]; created[i] whether (names[i],
	// versions[i]) was free for createIDs[i] (of a pair given twice the
	// first wins); finalized[i] whether finalIDs[i] was open (of an id
	// given twice, the first), exists[i] whether it is known. The creates'
	// packages are known to the finalizes.
	ClaimAll(ctx context.Context, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) (claimed, created, finalized, exists []bool, err error)
	// CommandReplies returns the records (fingerprint and first reply) of
	// the completed commands among ids, the replies rebuilt with replyOf
	// from their events where only the sequence was kept.
	CommandReplies(ctx context.Context, ids []string, replyOf func(store.Event) ([]byte, error)) (map[string]store.CommandRecord, error)
	// AppendCommands forgets the claims of release, appends events, and
	// records that events[i] answered commandIDs[i] (where not ""). It is
	// the transaction's last call and may commit it; an error wrapping
	// store.ErrOutcomeUnknown means it may have committed.
	AppendCommands(ctx context.Context, release []string, events []store.Event, commandIDs []string, replyOf func(store.Event) ([]byte, error)) ([]store.Event, error)
}

// bulk returns tx's own bulkTx, or an adapter over its single-row methods.
func bulk(tx store.Tx) bulkTx {
	if b, ok := tx.(bulkTx); ok {
		return b
	}
	return rowByRow{tx}
}

// rowByRow implements bulkTx with one statement per row; the transaction
// commits when InTx returns.
type rowByRow struct{ tx store.Tx }

func (r rowByRow) ClaimAll(ctx context.Context, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) (claimed, created, finalized, exists []bool, err error) {
	claimed = make([]bool, len(commandIDs))
	for i, id := range commandIDs {
		if claimed[i], err = r.tx.ClaimCommand(ctx, id, fingerprints[i]); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	created = make([]bool, len(createIDs))
	for i := range createIDs {
		if created[i], err = r.tx.ClaimPackage(ctx, createIDs[i], names[i], versions[i]); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	finalized, exists = make([]bool, len(finalIDs)), make([]bool, len(finalIDs))
	for i, id := range finalIDs {
		ok, err := r.tx.FinalizePackage(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, nil, nil, nil, err
		}
		finalized[i], exists[i] = ok, true
	}
	return claimed, created, finalized, exists, nil
}

func (r rowByRow) CommandReplies(ctx context.Context, ids []string, _ func(store.Event) ([]byte, error)) (map[string]store.CommandRecord, error) {
	out := make(map[string]store.CommandRecord, len(ids))
	for _, id := range ids {
		rec, err := r.tx.CommandReply(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		out[id] = rec
	}
	return out, nil
}

func (r rowByRow) AppendCommands(ctx context.Context, release []string, events []store.Event, commandIDs []string, replyOf func(store.Event) ([]byte, error)) ([]store.Event, error) {
	for _, id := range release {
		if err := r.tx.ReleaseCommand(ctx, id); err != nil {
			return nil, err
		}
	}
	if len(events) == 0 {
		return nil, nil
	}
	appended, err := r.tx.Append(ctx, events...)
	if err != nil {
		return nil, err
	}
	for i, id := range commandIDs {
		if id == "" {
			continue
		}
		reply, err := replyOf(appended[i])
		if err != nil {
			return nil, err
		}
		if err := r.tx.CompleteCommand(ctx, id, appended[i].Sequence, reply); err != nil {
			return nil, err
		}
	}
	return appended, nil
}
