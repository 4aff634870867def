package ingest

import (
	"context"
	"errors"

	"github.com/artifactstore/artifactstore/store"
)

// bulkTx is the set-based form of store.Tx's command-side methods: one
// statement per call whatever the batch size. A dialect's Tx may implement
// it (store/postgres does); for others, bulk adapts the single-row methods.
// Each method decides row by row exactly as its single-row counterpart and
// takes rows in the order given.
type bulkTx interface {
	// ClaimCommands claims distinct ids: claimed[i] reports whether ids[i]
	// was newly recorded.
	ClaimCommands(ctx context.Context, ids []string) (claimed []bool, err error)
	// CommandReplies returns the stored replies of those ids that have one.
	CommandReplies(ctx context.Context, ids []string) (map[string][]byte, error)
	// ClaimPackages records new packages (ids unique): claimed[i] reports
	// whether (names[i], versions[i]) was free; of a pair given twice the
	// first wins.
	ClaimPackages(ctx context.Context, ids, names, versions []string) (claimed []bool, err error)
	// FinalizePackages finalizes packages: finalized[i] reports whether
	// ids[i] was open (of an id given twice, the first), exists[i] whether
	// it is known.
	FinalizePackages(ctx context.Context, ids []string) (finalized, exists []bool, err error)
	// ReleaseCommands forgets claims made in this transaction.
	ReleaseCommands(ctx context.Context, ids []string) error
	// CompleteCommands stores the replies of claimed commands.
	CompleteCommands(ctx context.Context, ids []string, sequences []int64, replies [][]byte) error
}

// bulk returns tx's own bulkTx, or an adapter over its single-row methods.
func bulk(tx store.Tx) bulkTx {
	if b, ok := tx.(bulkTx); ok {
		return b
	}
	return rowByRow{tx}
}

// rowByRow implements bulkTx with one statement per row.
type rowByRow struct{ tx store.Tx }

func (r rowByRow) ClaimCommands(ctx context.Context, ids []string) ([]bool, error) {
	out := make([]bool, len(ids))
	for i, id := range ids {
		ok, err := r.tx.ClaimCommand(ctx, id)
		if err != nil {
			return nil, err
		}
		out[i] = ok
	}
	return out, nil
}

func (r rowByRow) CommandReplies(ctx context.Context, ids []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(ids))
	for _, id := range ids {
		reply, err := r.tx.CommandReply(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		out[id] = reply
	}
	return out, nil
}

func (r rowByRow) ClaimPackages(ctx context.Context, ids, names, versions []string) ([]bool, error) {
	out := make([]bool, len(ids))
	for i := range ids {
		ok, err := r.tx.ClaimPackage(ctx, ids[i], names[i], versions[i])
		if err != nil {
			return nil, err
		}
		out[i] = ok
	}
	return out, nil
}

func (r rowByRow) FinalizePackages(ctx context.Context, ids []string) (finalized, exists []bool, err error) {
	finalized, exists = make([]bool, len(ids)), make([]bool, len(ids))
	for i, id := range ids {
		ok, err := r.tx.FinalizePackage(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, nil, err
		}
		finalized[i], exists[i] = ok, true
	}
	return finalized, exists, nil
}

func (r rowByRow) ReleaseCommands(ctx context.Context, ids []string) error {
	for _, id := range ids {
		if err := r.tx.ReleaseCommand(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func (r rowByRow) CompleteCommands(ctx context.Context, ids []string, sequences []int64, replies [][]byte) error {
	for i, id := range ids {
		if err := r.tx.CompleteCommand(ctx, id, sequences[i], replies[i]); err != nil {
			return err
		}
	}
	return nil
}
