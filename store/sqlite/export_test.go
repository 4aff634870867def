package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

// AppendUnchained is Append as it was before the log had a hash chain
// (the events get the zero chain digest), for BenchmarkChainCost's
// baseline. Like Append, it returns the events as appended.
func AppendUnchained(ctx context.Context, stx store.Tx, events []store.Event) ([]store.Event, error) {
	t := stx.(*tx)
	for i := range events {
		if err := events[i].Validate(t.db.cfg.MaxPayload); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
	}
	n := len(events)
	var head, at int64
	err := t.tx.QueryRowContext(ctx, `UPDATE log_head SET sequence = sequence + ?, created_at = max(?, created_at)
		RETURNING sequence, created_at`, n, micros(time.Now())).Scan(&head, &at)
	if err != nil {
		return nil, translate(err)
	}
	stmt, err := t.tx.PrepareContext(ctx, "INSERT INTO events ("+eventColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		return nil, translate(err)
	}
	defer stmt.Close()
	zero := make([]byte, 32)
	out := make([]store.Event, n)
	for i, e := range events {
		e.Sequence, e.CreatedAt = head-int64(n)+int64(i)+1, fromMicros(at)
		out[i] = e
		if _, err := stmt.ExecContext(ctx, e.Sequence, e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload,
			e.PayloadDigest[:], at, zero); err != nil {
			return nil, translate(err)
		}
	}
	t.appended = true
	return out, nil
}
