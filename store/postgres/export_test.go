package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// The append of the log before it had a hash chain, kept for
// BenchmarkChainCost's baseline: the counter update, the insert (sequences
// and created_at taken from log_head on the server) and the NOTIFY in one
// pipeline, and for the command side the whole end of the transaction in
// one round trip. The events get the zero chain digest.

const unchainedInsert = `INSERT INTO events (` + eventColumns + `)
	SELECT h.sequence - $1 + u.ord, u.t, u.k, u.i, u.a, u.p, u.d, h.created_at, $8
	FROM log_head h, unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bytea[])
		WITH ORDINALITY AS u(t, k, i, a, p, d, ord)`

func (t *tx) queueUnchained(b *pgx.Batch, events []store.Event) error {
	if err := t.validate(events); err != nil {
		return err
	}
	n := len(events)
	types, kinds, ids, actors := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads, digests := make([][]byte, n), make([][]byte, n)
	for i, e := range events {
		types[i], kinds[i], ids[i], actors[i] = e.Type, e.SubjectKind, e.SubjectID, e.Actor
		payloads[i], digests[i] = e.Payload, events[i].PayloadDigest[:]
	}
	b.Queue(`UPDATE log_head SET sequence = sequence + $1, created_at = greatest(clock_timestamp(), created_at)
		RETURNING sequence, created_at`, n)
	b.Queue(unchainedInsert, n, types, kinds, ids, actors, byteas(payloads), byteas(digests), make([]byte, 32))
	b.Queue(`SELECT pg_notify($1, '')`, t.db.channel)
	t.appended = true
	return nil
}

// AppendUnchained is Append as it was before the chain.
func AppendUnchained(ctx context.Context, stx store.Tx, events []store.Event) error {
	t := stx.(*tx)
	b := &pgx.Batch{}
	if err := t.queueUnchained(b, events); err != nil {
		return err
	}
	return translate(t.tx.SendBatch(ctx, b).Close())
}

// ClaimAllUnlocked is ClaimAll as it was before the chain: it does not
// lock the log's head.
func ClaimAllUnlocked(ctx context.Context, stx store.Tx, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) error {
	_, _, _, _, err := stx.(*tx).claimAll(ctx, false, commandIDs, fingerprints, createIDs, names, versions, finalIDs)
	return err
}

// AppendCommandsUnchained is AppendCommands as it was before the chain:
// one round trip, holding the log_head lock for that round trip only.
func AppendCommandsUnchained(ctx context.Context, stx store.Tx, events []store.Event, commandIDs []string) error {
	t := stx.(*tx)
	b := &pgx.Batch{}
	if err := t.queueUnchained(b, events); err != nil {
		return err
	}
	n := len(events)
	var ids []string
	var offsets []int32
	for i, id := range commandIDs {
		if id != "" {
			ids, offsets = append(ids, id), append(offsets, int32(n-1-i))
		}
	}
	if len(ids) > 0 {
		b.Queue(`INSERT INTO commands (command_id, sequence)
			SELECT u.id, h.sequence - u.off FROM log_head h, unnest($1::text[], $2::int[]) AS u(id, off)
			ON CONFLICT (command_id) DO UPDATE SET sequence = excluded.sequence WHERE commands.sequence IS NULL`, ids, offsets)
	}
	if err := t.tx.commit(ctx, b); err != nil {
		return fmt.Errorf("appending %d events: %w", n, err)
	}
	return nil
}

// BackendPID returns the process id of the server backend running stx.
func BackendPID(ctx context.Context, stx store.Tx) (int, error) {
	var pid int
	err := stx.(*tx).tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	return pid, err
}
