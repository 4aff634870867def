package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

var (
	_ store.BatchReader    = (*tx)(nil)
	_ store.CommandBatcher = (*tx)(nil)
)

type tx struct {
	db       *DB
	tx       *txConn
	appended bool
	// head is the log's head as this transaction left it, locked since
	// it was read (ClaimAll or the first append); nil until then.
	head *logHead
	// ticket marks this transaction in flight, for AppendCommands to
	// guess the head (commands_guess.go); 0 when ClaimAll did not.
	ticket int64
}

// Append implements store.Tx. Sequences come from the log_head row, locked
// until commit (see store/doc.go). A transaction's first append chains its
// events to the head this handle expects and sends them at once, written
// only if the head, once locked, is that one (guess.go); otherwise it
// locks and reads the head (the chain head with the last sequence). The
// chain digests are computed here, and after a read the insert (which
// also moves the head) and the NOTIFY travel with the transaction's next
// round trip (at the latest its COMMIT), as do a later append's. An append
// thus costs the round trips it cost before the chain, and the head row is
// updated once per append.
func (t *tx) Append(ctx context.Context, events ...store.Event) ([]store.Event, error) {
	if len(events) == 0 {
		return nil, nil
	}
	prep := store.StartPrepareChain(events) // beside the validation
	defer prep()
	if err := t.validate(events); err != nil {
		return nil, err
	}
	rows := newEventRows(events, prep)
	if t.head == nil {
		// A transaction that has sent statements may hold locks: it
		// guesses only in a free turn, and otherwise waits for the head
		// in the database, which sees any deadlock (guesser.take).
		release, err := t.db.guess.take(ctx, !t.tx.begun)
		if err != nil {
			return nil, err
		}
		if release != nil {
			defer release()
			if out, err := t.appendGuessed(ctx, rows); out != nil || err != nil {
				if err != nil {
					return nil, fmt.Errorf("appending %d events: %w", len(events), err)
				}
				return out, nil
			}
		}
	}
	out, writes, _, err := t.chain(ctx, &pgx.Batch{}, rows)
	if err != nil {
		return nil, fmt.Errorf("appending %d events: %w", len(events), err)
	}
	for _, q := range writes {
		if err := t.tx.later(q.SQL, q.Arguments...); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ResetViews implements store.Tx.
func (t *tx) ResetViews(ctx context.Context) error {
	_, err := t.tx.Exec(ctx, "DELETE FROM artifact_packages; DELETE FROM retention_state")
	return translate(err)
}

// Checkpoint implements store.Tx.
func (t *tx) Checkpoint(ctx context.Context, projection string, partition int) (int64, error) {
	var seq int64
	err := t.tx.QueryRow(ctx, "SELECT sequence FROM checkpoints WHERE projection = $1 AND partition = $2",
		projection, partition).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return seq, translate(err)
}

// AdvanceCheckpoint implements store.Tx.
func (t *tx) AdvanceCheckpoint(ctx context.Context, projection string, partition int, from, to int64) error {
	_, _, err := t.AdvanceCheckpointAndRead(ctx, projection, partition, from, to, nil)
	return err
}

const (
	advanceFromZero = `INSERT INTO checkpoints (projection, partition, sequence) VALUES ($1, $2, $3)
		ON CONFLICT (projection, partition) DO UPDATE SET sequence = excluded.sequence WHERE checkpoints.sequence = 0`
	advance       = `UPDATE checkpoints SET sequence = $4 WHERE projection = $1 AND partition = $2 AND sequence = $3`
	selectPackage = `SELECT package_id, name, version, status, created_by, created_at,
		coalesce(finalized_by, ''), finalized_at, manifest_digest, created_sequence, last_sequence
		FROM artifact_packages WHERE package_id = $1`
	selectRetention = `SELECT package_id, policy, keep_days, expires_at, last_sequence
		FROM retention_state WHERE package_id = $1`
)

// AdvanceCheckpointAndRead implements store.BatchReader: the checkpoint's
// compare-and-set and one primary-key lookup per row go to the server as
// one pipeline (with BEGIN and any pending writes ahead of them). Lookups
// are separate statements so that no cached plan can turn them into scans.
func (t *tx) AdvanceCheckpointAndRead(ctx context.Context, projection string, partition int, from, to int64, ids []string) (map[string]store.Package, map[string]store.Retention, error) {
	b := &pgx.Batch{}
	if from == 0 {
		b.Queue(advanceFromZero, projection, partition, to)
	} else {
		b.Queue(advance, projection, partition, from, to)
	}
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	for _, id := range ids {
		b.Queue(selectPackage, id)
		b.Queue(selectRetention, id)
	}
	br := t.tx.SendBatch(ctx, b)
	defer br.Close()
	ct, err := br.Exec()
	if err != nil {
		return nil, nil, translate(err)
	}
	if ct.RowsAffected() != 1 {
		return nil, nil, fmt.Errorf("%s/%d expected at %d: %w", projection, partition, from, store.ErrCheckpointMoved)
	}
	ps, rs := make(map[string]store.Package, len(ids)), make(map[string]store.Retention, len(ids))
	for range ids {
		p, err := scanPackage(br.QueryRow())
		switch {
		case err == nil:
			ps[p.ID] = p
		case !errors.Is(err, store.ErrNotFound):
			return nil, nil, err
		}
		r, err := scanRetention(br.QueryRow())
		switch {
		case err == nil:
			rs[r.PackageID] = r
		case !errors.Is(err, store.ErrNotFound):
			return nil, nil, err
		}
	}
	return ps, rs, translate(br.Close())
}

// LockCheckpoints implements store.Tx. Rows are created and locked in
// partition order, the order in which a worker that takes several (at its
// start) takes them, so the two cannot deadlock. A row that a transaction
// it waited for deleted is skipped, and that transaction's new rows are not
// in the statement's snapshot (replay --reset replaces them): it locks
// again until two reads agree, so that it never returns holding fewer rows
// than the projection has.
func (t *tx) LockCheckpoints(ctx context.Context, projection string, partitions int) ([]store.Checkpoint, error) {
	var prev []store.Checkpoint
	for attempt := 0; attempt < 10; attempt++ {
		cps, err := t.lockCheckpoints(ctx, projection, partitions)
		if err != nil {
			return nil, err
		}
		if attempt > 0 && slices.Equal(cps, prev) {
			return cps, nil
		}
		prev = cps
	}
	return nil, fmt.Errorf("%w: the checkpoints of %s kept being replaced while being locked", store.ErrUnavailable, projection)
}

func (t *tx) lockCheckpoints(ctx context.Context, projection string, partitions int) ([]store.Checkpoint, error) {
	if partitions > 0 {
		if err := t.tx.later(`INSERT INTO checkpoints (projection, partition, sequence)
			SELECT $1, g, 0 FROM generate_series(0, $2::integer - 1) AS g ORDER BY g
			ON CONFLICT (projection, partition) DO NOTHING`, projection, partitions); err != nil {
			return nil, err
		}
	}
	rows, err := t.tx.Query(ctx, `SELECT projection, partition, sequence FROM checkpoints
		WHERE projection = $1 ORDER BY partition FOR UPDATE`, projection)
	if err != nil {
		return nil, translate(err)
	}
	cps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Checkpoint, error) {
		var c store.Checkpoint
		err := r.Scan(&c.Projection, &c.Partition, &c.Sequence)
		return c, err
	})
	return cps, translate(err)
}

// DeleteCheckpoints implements store.Tx.
func (t *tx) DeleteCheckpoints(ctx context.Context, projection string) error {
	_, err := t.tx.Exec(ctx, "DELETE FROM checkpoints WHERE projection = $1", projection)
	return translate(err)
}

// ClaimCommand implements store.Tx.
func (t *tx) ClaimCommand(ctx context.Context, id string, fingerprint []byte) (bool, error) {
	ct, err := t.tx.Exec(ctx, "INSERT INTO commands (command_id, fingerprint) VALUES ($1, $2) ON CONFLICT DO NOTHING", id, fingerprint)
	if err != nil {
		return false, translate(err)
	}
	return ct.RowsAffected() == 1, nil
}

// CommandReply implements store.Tx.
func (t *tx) CommandReply(ctx context.Context, id string) (store.CommandRecord, error) {
	var r store.CommandRecord
	err := t.tx.QueryRow(ctx, "SELECT reply, fingerprint FROM commands WHERE command_id = $1 AND reply IS NOT NULL", id).Scan(&r.Reply, &r.Fingerprint)
	return r, translate(err)
}

// CompleteCommand implements store.Tx.
func (t *tx) CompleteCommand(ctx context.Context, id string, sequence int64, reply []byte) error {
	_, err := t.tx.Exec(ctx, "UPDATE commands SET sequence = $2, reply = $3 WHERE command_id = $1", id, sequence, reply)
	return translate(err)
}

// ReleaseCommand implements store.Tx.
func (t *tx) ReleaseCommand(ctx context.Context, id string) error {
	_, err := t.tx.Exec(ctx, "DELETE FROM commands WHERE command_id = $1 AND sequence IS NULL", id)
	return translate(err)
}

// ClaimPackage implements store.Tx.
func (t *tx) ClaimPackage(ctx context.Context, id, name, version string) (bool, error) {
	ct, err := t.tx.Exec(ctx, `INSERT INTO package_index (package_id, name, version, status) VALUES ($1, $2, $3, 'open')
		ON CONFLICT DO NOTHING`, id, name, version)
	if err != nil {
		return false, translate(err)
	}
	return ct.RowsAffected() == 1, nil
}

// FinalizePackage implements store.Tx.
func (t *tx) FinalizePackage(ctx context.Context, id string) (bool, error) {
	ct, err := t.tx.Exec(ctx, "UPDATE package_index SET status = 'finalized' WHERE package_id = $1 AND status = 'open'", id)
	if err != nil {
		return false, translate(err)
	}
	if ct.RowsAffected() == 1 {
		return true, nil
	}
	var status string
	if err := t.tx.QueryRow(ctx, "SELECT status FROM package_index WHERE package_id = $1", id).Scan(&status); err != nil {
		return false, translate(err)
	}
	return false, nil
}

// GetPackage implements store.ViewTx.
func (t *tx) GetPackage(ctx context.Context, id string) (store.Package, error) {
	return scanPackage(t.tx.QueryRow(ctx, selectPackage, id))
}

func scanPackage(row pgx.Row) (store.Package, error) {
	var p store.Package
	var digest []byte
	err := row.Scan(&p.ID, &p.Name, &p.Version, &p.Status,
		&p.CreatedBy, &p.CreatedAt, &p.FinalizedBy, &p.FinalizedAt, &digest, &p.CreatedSequence, &p.LastSequence)
	if err != nil {
		return store.Package{}, translate(err)
	}
	normalisePackage(&p, digest)
	return p, nil
}

// PutPackage implements store.ViewTx (sent with the next round trip).
func (t *tx) PutPackage(ctx context.Context, p store.Package) error {
	var digest []byte
	if p.ManifestDigest != nil {
		digest = p.ManifestDigest[:]
	}
	var finalizedBy *string
	if p.FinalizedBy != "" {
		finalizedBy = &p.FinalizedBy
	}
	err := t.tx.later(`INSERT INTO artifact_packages (package_id, name, version, status, created_by, created_at,
		finalized_by, finalized_at, manifest_digest, created_sequence, last_sequence)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (package_id) DO UPDATE SET name = excluded.name, version = excluded.version, status = excluded.status,
			created_by = excluded.created_by, created_at = excluded.created_at, finalized_by = excluded.finalized_by,
			finalized_at = excluded.finalized_at, manifest_digest = excluded.manifest_digest,
			created_sequence = excluded.created_sequence, last_sequence = excluded.last_sequence`,
		p.ID, p.Name, p.Version, p.Status, p.CreatedBy, p.CreatedAt, finalizedBy, p.FinalizedAt, digest,
		p.CreatedSequence, p.LastSequence)
	return translate(err)
}

// GetRetention implements store.ViewTx.
func (t *tx) GetRetention(ctx context.Context, packageID string) (store.Retention, error) {
	return scanRetention(t.tx.QueryRow(ctx, selectRetention, packageID))
}

func scanRetention(row pgx.Row) (store.Retention, error) {
	var r store.Retention
	err := row.Scan(&r.PackageID, &r.Policy, &r.KeepDays, &r.ExpiresAt, &r.LastSequence)
	if err != nil {
		return store.Retention{}, translate(err)
	}
	r.ExpiresAt = utcPtr(r.ExpiresAt)
	return r, nil
}

// PutRetention implements store.ViewTx (sent with the next round trip).
func (t *tx) PutRetention(ctx context.Context, r store.Retention) error {
	err := t.tx.later(`INSERT INTO retention_state (package_id, policy, keep_days, expires_at, last_sequence)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (package_id) DO UPDATE SET policy = excluded.policy, keep_days = excluded.keep_days,
			expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`,
		r.PackageID, r.Policy, r.KeepDays, r.ExpiresAt, r.LastSequence)
	return translate(err)
}

// PutPackages implements store.Tx with one multi-row upsert per chunk. Like
// every view write it is sent with the transaction's next round trip (at
// the latest with COMMIT), which reports its error.
func (t *tx) PutPackages(ctx context.Context, ps []store.Package) error {
	for chunk := range slices.Chunk(ps, 5000) {
		n := len(chunk)
		ids, names, versions, statuses, createdBy := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		createdAt := make([]time.Time, n)
		finalizedBy := make([]*string, n)
		finalizedAt := make([]*time.Time, n)
		digests := make([][]byte, n)
		createdSeq, lastSeq := make([]int64, n), make([]int64, n)
		for i, p := range chunk {
			ids[i], names[i], versions[i], statuses[i], createdBy[i] = p.ID, p.Name, p.Version, p.Status, p.CreatedBy
			createdAt[i], finalizedAt[i] = p.CreatedAt, p.FinalizedAt
			if p.FinalizedBy != "" {
				finalizedBy[i] = &chunk[i].FinalizedBy
			}
			if p.ManifestDigest != nil {
				digests[i] = p.ManifestDigest[:]
			}
			createdSeq[i], lastSeq[i] = p.CreatedSequence, p.LastSequence
		}
		err := t.tx.later(`INSERT INTO artifact_packages (package_id, name, version, status, created_by, created_at,
			finalized_by, finalized_at, manifest_digest, created_sequence, last_sequence)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
				$7::text[], $8::timestamptz[], $9::bytea[], $10::bigint[], $11::bigint[])
			ON CONFLICT (package_id) DO UPDATE SET name = excluded.name, version = excluded.version, status = excluded.status,
				created_by = excluded.created_by, created_at = excluded.created_at, finalized_by = excluded.finalized_by,
				finalized_at = excluded.finalized_at, manifest_digest = excluded.manifest_digest,
				created_sequence = excluded.created_sequence, last_sequence = excluded.last_sequence`,
			ids, names, versions, statuses, createdBy, createdAt, finalizedBy, finalizedAt, digests, createdSeq, lastSeq)
		if err != nil {
			return translate(err)
		}
	}
	return nil
}

// PutRetentions implements store.Tx with one multi-row upsert per chunk
// (sent with the next round trip).
func (t *tx) PutRetentions(ctx context.Context, rs []store.Retention) error {
	for chunk := range slices.Chunk(rs, 5000) {
		n := len(chunk)
		ids, policies := make([]string, n), make([]string, n)
		keepDays := make([]int32, n)
		expires := make([]*time.Time, n)
		lastSeq := make([]int64, n)
		for i, r := range chunk {
			ids[i], policies[i], keepDays[i], expires[i], lastSeq[i] = r.PackageID, r.Policy, int32(r.KeepDays), r.ExpiresAt, r.LastSequence
		}
		err := t.tx.later(`INSERT INTO retention_state (package_id, policy, keep_days, expires_at, last_sequence)
			SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::timestamptz[], $5::bigint[])
			ON CONFLICT (package_id) DO UPDATE SET policy = excluded.policy, keep_days = excluded.keep_days,
				expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`,
			ids, policies, keepDays, expires, lastSeq)
		if err != nil {
			return translate(err)
		}
	}
	return nil
}

// LoadViews implements store.Tx with COPY.
func (t *tx) LoadViews(ctx context.Context, ps []store.Package, rs []store.Retention) error {
	if len(ps) > 0 {
		_, err := t.tx.CopyFrom(ctx, pgx.Identifier{"artifact_packages"}, []string{"package_id", "name", "version", "status",
			"created_by", "created_at", "finalized_by", "finalized_at", "manifest_digest", "created_sequence", "last_sequence"},
			pgx.CopyFromSlice(len(ps), func(i int) ([]any, error) {
				p := ps[i]
				var digest []byte
				if p.ManifestDigest != nil {
					digest = p.ManifestDigest[:]
				}
				var finalizedBy *string
				if p.FinalizedBy != "" {
					finalizedBy = &p.FinalizedBy
				}
				return []any{p.ID, p.Name, p.Version, p.Status, p.CreatedBy, p.CreatedAt, finalizedBy, p.FinalizedAt,
					digest, p.CreatedSequence, p.LastSequence}, nil
			}))
		if err != nil {
			return translate(err)
		}
	}
	if len(rs) > 0 {
		_, err := t.tx.CopyFrom(ctx, pgx.Identifier{"retention_state"}, []string{"package_id", "policy", "keep_days", "expires_at", "last_sequence"},
			pgx.CopyFromSlice(len(rs), func(i int) ([]any, error) {
				r := rs[i]
				return []any{r.PackageID, r.Policy, int32(r.KeepDays), r.ExpiresAt, r.LastSequence}, nil
			}))
		if err != nil {
			return translate(err)
		}
	}
	return nil
}
