package sqlite

import (
	"context"

	"github.com/artifactstore/artifactstore/store"
)

// FetchKeys implements store.DB.
func (db *DB) FetchKeys(ctx context.Context, after, upTo int64, limit int) ([]store.EventKey, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT sequence, subject_id, payload_digest FROM events
		WHERE sequence > ? AND sequence <= ? ORDER BY sequence LIMIT ?`, after, upTo, limit)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []store.EventKey
	for rows.Next() {
		var k store.EventKey
		var digest []byte
		if err := rows.Scan(&k.Sequence, &k.SubjectID, &digest); err != nil {
			return nil, translate(err)
		}
		copy(k.PayloadDigest[:], digest)
		out = append(out, k)
	}
	return out, translate(rows.Err())
}

// Parked implements store.DB.
func (db *DB) Parked(ctx context.Context) ([]store.Parked, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT projection, partition, sequence, event_type, reason, error, worker,
		attempts, parked_at FROM projector_parked ORDER BY projection, partition`)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []store.Parked
	for rows.Next() {
		var p store.Parked
		var at int64
		if err := rows.Scan(&p.Projection, &p.Partition, &p.Sequence, &p.EventType, &p.Reason, &p.Error, &p.Worker,
			&p.Attempts, &at); err != nil {
			return nil, translate(err)
		}
		p.ParkedAt = fromMicros(at)
		out = append(out, p)
	}
	return out, translate(rows.Err())
}

// Park implements store.Tx.
func (t *tx) Park(ctx context.Context, p store.Parked) error {
	_, err := t.tx.ExecContext(ctx, `INSERT INTO projector_parked (projection, partition, sequence, event_type, reason,
		error, worker, attempts, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (projection, partition) DO UPDATE SET sequence = excluded.sequence,
			event_type = excluded.event_type, reason = excluded.reason, error = excluded.error,
			worker = excluded.worker, attempts = excluded.attempts, parked_at = excluded.parked_at`,
		p.Projection, p.Partition, p.Sequence, p.EventType, p.Reason, p.Error, p.Worker, p.Attempts, micros(p.ParkedAt))
	return translate(err)
}

// Unpark implements store.Tx.
func (t *tx) Unpark(ctx context.Context, projection string, partition int) error {
	_, err := t.tx.ExecContext(ctx, "DELETE FROM projector_parked WHERE projection = ? AND partition = ?", projection, partition)
	return translate(err)
}
