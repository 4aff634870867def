package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

type tx struct {
	db       *DB
	tx       *sql.Tx
	appended bool
	head     *logHead // nil until the transaction's first append
}

// Append implements store.Tx. The transaction already holds SQLite's write
// lock (BEGIN IMMEDIATE): the log_head row, read once per transaction,
// gives the sequences, a created_at that never decreases and the chain
// digest the new events are chained to; one update moves it past them.
func (t *tx) Append(ctx context.Context, events ...store.Event) ([]store.Event, error) {
	if len(events) == 0 {
		return nil, nil
	}
	prep := store.StartPrepareChain(events) // beside the validation
	defer prep()
	for i := range events {
		if err := events[i].Validate(t.db.cfg.MaxPayload); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
	}
	n := len(events)
	if t.head == nil {
		h := &logHead{}
		var chain []byte
		err := t.tx.QueryRowContext(ctx, "SELECT sequence, created_at, chain_digest FROM log_head").Scan(&h.sequence, &h.at, &chain)
		if err != nil {
			return nil, fmt.Errorf("appending %d events: %w", n, translate(err))
		}
		copy(h.chain[:], chain)
		t.head = h
	}
	at := max(micros(time.Now()), t.head.at)
	out := make([]store.Event, n)
	for i, e := range events {
		e.Sequence = t.head.sequence + int64(i) + 1
		e.CreatedAt = fromMicros(at)
		out[i] = e
	}
	last := prep().Chain(t.head.chain, out)
	stmt, err := t.tx.PrepareContext(ctx, "INSERT INTO events ("+eventColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		return nil, translate(err)
	}
	defer stmt.Close()
	for i, e := range out {
		if _, err := stmt.ExecContext(ctx, e.Sequence, e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload,
			e.PayloadDigest[:], at, e.ChainDigest[:]); err != nil {
			return nil, fmt.Errorf("appending event %d: %w", i, translate(err))
		}
	}
	next := &logHead{sequence: out[n-1].Sequence, at: at, chain: last}
	if _, err := t.tx.ExecContext(ctx, "UPDATE log_head SET sequence = ?, created_at = ?, chain_digest = ?",
		next.sequence, next.at, next.chain[:]); err != nil {
		return nil, fmt.Errorf("appending %d events: %w", n, translate(err))
	}
	t.head, t.appended = next, true
	return out, nil
}

// logHead is the log_head row as this transaction left it.
type logHead struct {
	sequence, at int64 // at: created_at in Unix microseconds
	chain        store.Digest
}

// ResetViews implements store.Tx.
func (t *tx) ResetViews(ctx context.Context) error {
	if _, err := t.tx.ExecContext(ctx, "DELETE FROM artifact_packages"); err != nil {
		return translate(err)
	}
	_, err := t.tx.ExecContext(ctx, "DELETE FROM retention_state")
	return translate(err)
}

// Checkpoint implements store.Tx.
func (t *tx) Checkpoint(ctx context.Context, projection string, partition int) (int64, error) {
	var seq int64
	err := t.tx.QueryRowContext(ctx, "SELECT sequence FROM checkpoints WHERE projection = ? AND partition = ?",
		projection, partition).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, translate(err)
}

// AdvanceCheckpoint implements store.Tx.
func (t *tx) AdvanceCheckpoint(ctx context.Context, projection string, partition int, from, to int64) error {
	var res sql.Result
	var err error
	if from == 0 {
		res, err = t.tx.ExecContext(ctx, `INSERT INTO checkpoints (projection, partition, sequence) VALUES (?, ?, ?)
			ON CONFLICT (projection, partition) DO UPDATE SET sequence = excluded.sequence WHERE checkpoints.sequence = 0`,
			projection, partition, to)
	} else {
		res, err = t.tx.ExecContext(ctx, `UPDATE checkpoints SET sequence = ?
			WHERE projection = ? AND partition = ? AND sequence = ?`, to, projection, partition, from)
	}
	if err != nil {
		return translate(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("%s/%d expected at %d: %w", projection, partition, from, store.ErrCheckpointMoved)
	}
	return nil
}

// LockCheckpoints implements store.Tx. The transaction holds SQLite's
// write lock since BEGIN IMMEDIATE, which already excludes every other
// writer: this only creates the missing rows and reads them.
func (t *tx) LockCheckpoints(ctx context.Context, projection string, partitions int) ([]store.Checkpoint, error) {
	for p := range partitions {
		if _, err := t.tx.ExecContext(ctx, `INSERT INTO checkpoints (projection, partition, sequence) VALUES (?, ?, 0)
			ON CONFLICT (projection, partition) DO NOTHING`, projection, p); err != nil {
			return nil, translate(err)
		}
	}
	rows, err := t.tx.QueryContext(ctx, `SELECT projection, partition, sequence FROM checkpoints
		WHERE projection = ? ORDER BY partition`, projection)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var cps []store.Checkpoint
	for rows.Next() {
		var c store.Checkpoint
		if err := rows.Scan(&c.Projection, &c.Partition, &c.Sequence); err != nil {
			return nil, translate(err)
		}
		cps = append(cps, c)
	}
	return cps, translate(rows.Err())
}

// DeleteCheckpoints implements store.Tx.
func (t *tx) DeleteCheckpoints(ctx context.Context, projection string) error {
	_, err := t.tx.ExecContext(ctx, "DELETE FROM checkpoints WHERE projection = ?", projection)
	return translate(err)
}

// ClaimCommand implements store.Tx.
func (t *tx) ClaimCommand(ctx context.Context, id string, fingerprint []byte) (bool, error) {
	res, err := t.tx.ExecContext(ctx, "INSERT INTO commands (command_id, fingerprint) VALUES (?, ?) ON CONFLICT DO NOTHING", id, fingerprint)
	if err != nil {
		return false, translate(err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// CommandReply implements store.Tx.
func (t *tx) CommandReply(ctx context.Context, id string) (store.CommandRecord, error) {
	var r store.CommandRecord
	err := t.tx.QueryRowContext(ctx, "SELECT reply, fingerprint FROM commands WHERE command_id = ? AND reply IS NOT NULL", id).Scan(&r.Reply, &r.Fingerprint)
	return r, translate(err)
}

// CompleteCommand implements store.Tx.
func (t *tx) CompleteCommand(ctx context.Context, id string, sequence int64, reply []byte) error {
	_, err := t.tx.ExecContext(ctx, "UPDATE commands SET sequence = ?, reply = ? WHERE command_id = ?", sequence, reply, id)
	return translate(err)
}

// ReleaseCommand implements store.Tx.
func (t *tx) ReleaseCommand(ctx context.Context, id string) error {
	_, err := t.tx.ExecContext(ctx, "DELETE FROM commands WHERE command_id = ? AND sequence IS NULL", id)
	return translate(err)
}

// ClaimPackage implements store.Tx.
func (t *tx) ClaimPackage(ctx context.Context, id, name, version string) (bool, error) {
	res, err := t.tx.ExecContext(ctx, `INSERT INTO package_index (package_id, name, version, status) VALUES (?, ?, ?, 'open')
		ON CONFLICT DO NOTHING`, id, name, version)
	if err != nil {
		return false, translate(err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// FinalizePackage implements store.Tx.
func (t *tx) FinalizePackage(ctx context.Context, id string) (bool, error) {
	res, err := t.tx.ExecContext(ctx, "UPDATE package_index SET status = 'finalized' WHERE package_id = ? AND status = 'open'", id)
	if err != nil {
		return false, translate(err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return true, nil
	}
	var status string
	if err := t.tx.QueryRowContext(ctx, "SELECT status FROM package_index WHERE package_id = ?", id).Scan(&status); err != nil {
		return false, translate(err)
	}
	return false, nil
}

// GetPackage implements store.ViewTx.
func (t *tx) GetPackage(ctx context.Context, id string) (store.Package, error) {
	var p store.Package
	var digest []byte
	var created int64
	var finalized sql.NullInt64
	err := t.tx.QueryRowContext(ctx, `SELECT package_id, name, version, status, created_by, created_at,
		coalesce(finalized_by, ''), finalized_at, manifest_digest, created_sequence, last_sequence
		FROM artifact_packages WHERE package_id = ?`, id).Scan(&p.ID, &p.Name, &p.Version, &p.Status,
		&p.CreatedBy, &created, &p.FinalizedBy, &finalized, &digest, &p.CreatedSequence, &p.LastSequence)
	if err != nil {
		return store.Package{}, translate(err)
	}
	fillPackage(&p, created, finalized, digest)
	return p, nil
}

// PutPackage implements store.ViewTx.
func (t *tx) PutPackage(ctx context.Context, p store.Package) error {
	return t.PutPackages(ctx, []store.Package{p})
}

const upsertPackage = `INSERT INTO artifact_packages (package_id, name, version, status, created_by, created_at,
	finalized_by, finalized_at, manifest_digest, created_sequence, last_sequence)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (package_id) DO UPDATE SET name = excluded.name, version = excluded.version, status = excluded.status,
		created_by = excluded.created_by, created_at = excluded.created_at, finalized_by = excluded.finalized_by,
		finalized_at = excluded.finalized_at, manifest_digest = excluded.manifest_digest,
		created_sequence = excluded.created_sequence, last_sequence = excluded.last_sequence`

// GetRetention implements store.ViewTx.
func (t *tx) GetRetention(ctx context.Context, packageID string) (store.Retention, error) {
	var r store.Retention
	var expires sql.NullInt64
	err := t.tx.QueryRowContext(ctx, `SELECT package_id, policy, keep_days, expires_at, last_sequence
		FROM retention_state WHERE package_id = ?`, packageID).Scan(&r.PackageID, &r.Policy, &r.KeepDays, &expires, &r.LastSequence)
	if err != nil {
		return store.Retention{}, translate(err)
	}
	r.ExpiresAt = nullTime(expires)
	return r, nil
}

// PutRetention implements store.ViewTx.
func (t *tx) PutRetention(ctx context.Context, r store.Retention) error {
	return t.PutRetentions(ctx, []store.Retention{r})
}

const upsertRetention = `INSERT INTO retention_state (package_id, policy, keep_days, expires_at, last_sequence)
	VALUES (?, ?, ?, ?, ?)
	ON CONFLICT (package_id) DO UPDATE SET policy = excluded.policy, keep_days = excluded.keep_days,
		expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`

// PutPackages implements store.Tx with one prepared statement; SQLite
// runs in-process, so a row per execution costs no round trip.
func (t *tx) PutPackages(ctx context.Context, ps []store.Package) error {
	if len(ps) == 0 {
		return nil
	}
	stmt, err := t.tx.PrepareContext(ctx, upsertPackage)
	if err != nil {
		return translate(err)
	}
	defer stmt.Close()
	for _, p := range ps {
		var digest []byte
		if p.ManifestDigest != nil {
			digest = p.ManifestDigest[:]
		}
		finalizedBy := sql.NullString{String: p.FinalizedBy, Valid: p.FinalizedBy != ""}
		if _, err := stmt.ExecContext(ctx, p.ID, p.Name, p.Version, p.Status, p.CreatedBy, micros(p.CreatedAt), finalizedBy,
			nullMicros(p.FinalizedAt), digest, p.CreatedSequence, p.LastSequence); err != nil {
			return translate(err)
		}
	}
	return nil
}

// PutRetentions implements store.Tx.
func (t *tx) PutRetentions(ctx context.Context, rs []store.Retention) error {
	if len(rs) == 0 {
		return nil
	}
	stmt, err := t.tx.PrepareContext(ctx, upsertRetention)
	if err != nil {
		return translate(err)
	}
	defer stmt.Close()
	for _, r := range rs {
		if _, err := stmt.ExecContext(ctx, r.PackageID, r.Policy, r.KeepDays, nullMicros(r.ExpiresAt), r.LastSequence); err != nil {
			return translate(err)
		}
	}
	return nil
}

// LoadViews implements store.Tx.
func (t *tx) LoadViews(ctx context.Context, ps []store.Package, rs []store.Retention) error {
	if err := t.PutPackages(ctx, ps); err != nil {
		return err
	}
	return t.PutRetentions(ctx, rs)
}
