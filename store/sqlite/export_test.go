package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

// AppendUnchained is Append as it was before the log had a hash chain
// (the events get the zero chain digest), for BenchmarkChainCost's
// baseline.
func AppendUnchained(ctx context.Context, stx store.Tx, events []store.Event) error {
	t := stx.(*tx)
	for i := range events {
		if err := events[i].Validate(t.db.cfg.MaxPayload); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	n := len(events)
	var head, at int64
	err := t.tx.QueryRowContext(ctx, `UPDATE log_head SET sequence = sequence + ?, created_at = max(?, created_at)
		RETURNING sequence, created_at`, n, micros(time.Now())).Scan(&head, &at)
	if err != nil {
		return translate(err)
	}
	stmt, err := t.tx.PrepareContext(ctx, "INSERT INTO events ("+eventColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		return translate(err)
	}
	defer stmt.Close()
	zero := make([]byte, 32)
	for i, e := range events {
		if _, err := stmt.ExecContext(ctx, head-int64(n)+int64(i)+1, e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload,
			e.PayloadDigest[:], at, zero); err != nil {
			return translate(err)
		}
	}
	t.appended = true
	return nil
}
