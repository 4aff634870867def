package main

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/store"
)

// Name is the projection's name (its checkpoints, leases, migrations).
const Name = "finalized_per_day"

// Projection is "packages finalized per actor per day": one row per actor
// and UTC day of the finalized events' created_at, with how many packages
// that actor finalized that day and the highest sequence counted. Every
// value comes from the events, so a replay builds the same rows.
func Projection() projection.Projection {
	return projection.Projection{
		Name: Name,
		Migrations: []string{
			`CREATE TABLE finalized_per_day (
				actor         text   NOT NULL,
				day           date   NOT NULL,
				count         bigint NOT NULL,
				last_sequence bigint NOT NULL,
				PRIMARY KEY (actor, day)
			)`,
		},
		Tables:   []string{"finalized_per_day"},
		Handlers: map[string]projection.Handler{store.TypePackageFinalized: countFinalized},
		// One row counts the packages of many subjects (partitions):
		// batches commit one at a time rather than deadlock on it.
		Serialize: true,
	}
}

// countFinalized counts a finalized event on its actor's row of the event's
// UTC day. Partitions apply in any interleaving, so the row keeps the
// greatest sequence, not the last written.
func countFinalized(ctx context.Context, tx pgx.Tx, e projection.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO finalized_per_day AS f (actor, day, count, last_sequence) VALUES ($1, $2::date, 1, $3)
		ON CONFLICT (actor, day) DO UPDATE SET count = f.count + 1, last_sequence = greatest(f.last_sequence, excluded.last_sequence)`,
		e.Actor, e.CreatedAt.UTC().Format(time.DateOnly), e.Sequence)
	return err
}
