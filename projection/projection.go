package projection

import (
	"context"
	"fmt"
	"regexp"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// Event is one event of the log as a handler sees it: the event (its
// payload digest verified against the body) and its partition.
type Event struct {
	store.Event
	// Partition is the event's partition: FNV-1a-32 of its subject id
	// modulo the log's partition count.
	Partition int
}

// Handler applies one event to the projection's tables inside tx, the
// transaction that also moves the event's partition checkpoint; it commits
// or rolls back with it. It must derive every value it writes from the
// event (its fields, payload, CreatedAt), never from the wall clock, so
// that Replay builds the same rows. Rows written by events of many
// subjects must not depend on the order of partitions (see the package
// documentation). ctx ends when the instance stops.
//
// An error that is not a temporary database error (connection lost,
// serialization failure) counts as a failed attempt: the event is retried
// alone up to Config.MaxAttempts times, then its partition parks.
type Handler func(ctx context.Context, tx pgx.Tx, e Event) error

// Projection is a downstream read model: a name, its handlers, its tables
// and their migrations. The runtime keeps its checkpoints.
type Projection struct {
	// Name identifies the projection's checkpoints, leases, parked
	// partitions and migrations: 1-63 lower-case letters, digits or '_',
	// starting with a letter.
	Name string
	// Handlers maps event types (v1.package.finalized) to their handler.
	// Events of other types are skipped, their checkpoint advanced
	// (DESIGN.md, guarantee 6).
	Handlers map[string]Handler
	// Migrations are SQL statements applied once each, in order, in the
	// connection's current schema (its search_path), and recorded in
	// projection_migrations. They are append-only: never edit or remove an
	// applied one, add a new one.
	Migrations []string
	// Tables lists the tables the projection writes (unqualified names),
	// for Replay (which empties them first) and Dump.
	Tables []string
	// Serialize makes the batches of every partition, over every instance,
	// commit one at a time (a transaction advisory lock taken first). Set
	// it when handlers of different subjects write the same rows (an
	// aggregate: counts per actor, per day): concurrent partitions then
	// wait on each other's row locks and deadlock now and then, each
	// deadlock costing the server's deadlock_timeout. Leave it unset when
	// every row belongs to one subject: partitions then apply in parallel.
	Serialize bool
}

var (
	nameRe  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)
	identRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

// validate checks the projection and names the bad field.
func (p *Projection) validate() error {
	bad := func(field, why string) error { return fmt.Errorf("%w: Projection.%s %s", ErrConfig, field, why) }
	if !nameRe.MatchString(p.Name) {
		return bad("Name", fmt.Sprintf("%q must be 1-63 lower-case letters, digits or '_', starting with a letter", p.Name))
	}
	if len(p.Handlers) == 0 {
		return bad("Handlers", "is empty")
	}
	for t, h := range p.Handlers {
		if !store.ValidEventType(t) {
			return bad("Handlers", fmt.Sprintf("key %q is not an event type (three subject tokens)", t))
		}
		if h == nil {
			return bad("Handlers", fmt.Sprintf("%q has a nil handler", t))
		}
	}
	for i, m := range p.Migrations {
		if m == "" {
			return bad("Migrations", fmt.Sprintf("statement %d is empty", i+1))
		}
	}
	for _, t := range p.Tables {
		if !identRe.MatchString(t) {
			return bad("Tables", fmt.Sprintf("%q is not a lower-case unqualified table name", t))
		}
	}
	if len(p.Tables) != len(slices.Compact(slices.Sorted(slices.Values(p.Tables)))) {
		return bad("Tables", "lists a table twice")
	}
	return nil
}

// apply runs e's handler in tx (nothing for an unknown type).
func (p *Projection) apply(ctx context.Context, tx pgx.Tx, e Event) error {
	h, ok := p.Handlers[e.Type]
	if !ok {
		return nil
	}
	if err := h(ctx, tx, e); err != nil {
		return fmt.Errorf("applying %s at sequence %d: %w", e.Type, e.Sequence, err)
	}
	return nil
}
