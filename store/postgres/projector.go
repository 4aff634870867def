package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// FetchKeys implements store.DB.
func (db *DB) FetchKeys(ctx context.Context, after, upTo int64, limit int) ([]store.EventKey, error) {
	rows, err := db.pool.Query(ctx, `SELECT sequence, subject_id, payload_digest FROM events
		WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3`, after, upTo, limit)
	if err != nil {
		return nil, translate(err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.EventKey, error) {
		var k store.EventKey
		var digest []byte
		err := r.Scan(&k.Sequence, &k.SubjectID, &digest)
		copy(k.PayloadDigest[:], digest)
		return k, err
	})
	return keys, translate(err)
}

// Parked implements store.DB.
func (db *DB) Parked(ctx context.Context) ([]store.Parked, error) {
	rows, err := db.pool.Query(ctx, `SELECT projection, partition, sequence, event_type, reason, error, worker,
		attempts, parked_at FROM projector_parked ORDER BY projection, partition`)
	if err != nil {
		return nil, translate(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Parked, error) {
		var p store.Parked
		err := r.Scan(&p.Projection, &p.Partition, &p.Sequence, &p.EventType, &p.Reason, &p.Error, &p.Worker,
			&p.Attempts, &p.ParkedAt)
		p.ParkedAt = p.ParkedAt.UTC()
		return p, err
	})
	return out, translate(err)
}

// Park implements store.Tx.
func (t *tx) Park(ctx context.Context, p store.Parked) error {
	_, err := t.tx.Exec(ctx, `INSERT INTO projector_parked (projection, partition, sequence, event_type, reason,
		error, worker, attempts, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (projection, partition) DO UPDATE SET sequence = excluded.sequence,
			event_type = excluded.event_type, reason = excluded.reason, error = excluded.error,
			worker = excluded.worker, attempts = excluded.attempts, parked_at = excluded.parked_at`,
		p.Projection, p.Partition, p.Sequence, p.EventType, p.Reason, p.Error, p.Worker, p.Attempts, p.ParkedAt)
	return translate(err)
}

// Unpark implements store.Tx (sent with the next round trip).
func (t *tx) Unpark(_ context.Context, projection string, partition int) error {
	return t.tx.later("DELETE FROM projector_parked WHERE projection = $1 AND partition = $2", projection, partition)
}
