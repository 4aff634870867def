package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// Set-based, pipelined forms of the command-side methods of store.Tx, for
// a group-committing writer: tx implements store.CommandBatcher. A
// batch of commands takes two round trips: ClaimAll (which also begins
// the transaction and marks it in flight, commands_guess.go) and
// AppendCommands (which appends and commits). Each statement
// decides row by row exactly as its single-row counterpart and, like it,
// never aborts the transaction on a conflict. Rows are taken in the order
// given, so a caller that passes sorted keys takes its locks in a global
// order. Rows of the growing tables are found by primary key — one
// statement each (pipelined), or through ON CONFLICT on it — never by
// joining unnest() or by "= ANY($1)": prepared on a fresh log, such plans
// stay sequential scans until the next ANALYZE (4.8 ms for 21 rows at 40k
// rows; an "= ANY" update of commands cut BenchmarkIngest from 10k to 0.9k
// commands/s).

// ClaimAll claims command ids, records new packages and finalizes
// packages, in that order, in one round trip. claimed[i] reports whether
// commandIDs[i] (distinct) was newly recorded, with fingerprints[i];
// created[i] whether
// (names[i], versions[i]) was free for createIDs[i] (of a pair given twice
// the first wins); finalized[i] whether finalIDs[i] was open and is now
// finalized (of an id given twice, its first place), exists[i] whether the
// package is known at all. The packages of this call's creates are known
// to its finalizes.
//
// Its round trip ends by marking the transaction in flight, for
// AppendCommands, which follows it at once (after CommandReplies when a
// command id was seen before), to chain the events to the head expected
// after the batches before it and write them in one round trip; or, when
// the handle expects no head, by locking and reading it (commands_guess.go).
func (t *tx) ClaimAll(ctx context.Context, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) (claimed, created, finalized, exists []bool, err error) {
	return t.claimAll(ctx, t.db.guess.claimHead(), commandIDs, fingerprints, createIDs, names, versions, finalIDs)
}

func (t *tx) claimAll(ctx context.Context, mode claimHead, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) (claimed, created, finalized, exists []bool, err error) {
	b := &pgx.Batch{}
	var gotCommands, gotCreates []string
	if len(commandIDs) > 0 {
		b.Queue(`INSERT INTO commands (command_id, fingerprint)
			SELECT id, fp FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS u(id, fp, ord) ORDER BY ord
			ON CONFLICT DO NOTHING RETURNING command_id`, commandIDs, fingerprints).Query(func(rows pgx.Rows) error {
			var err error
			gotCommands, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		})
	}
	if len(createIDs) > 0 {
		b.Queue(`INSERT INTO package_index (package_id, name, version, status)
			SELECT i, n, v, 'open' FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(i, n, v, ord) ORDER BY ord
			ON CONFLICT DO NOTHING RETURNING package_id`, createIDs, names, versions).Query(func(rows pgx.Rows) error {
			var err error
			gotCreates, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		})
	}
	finalized, exists = make([]bool, len(finalIDs)), make([]bool, len(finalIDs))
	for i, id := range finalIDs {
		b.Queue(`WITH f AS (UPDATE package_index SET status = 'finalized' WHERE package_id = $1 AND status = 'open' RETURNING 1)
			SELECT EXISTS (SELECT 1 FROM package_index WHERE package_id = $1), EXISTS (SELECT 1 FROM f)`, id).
			QueryRow(func(r pgx.Row) error { return r.Scan(&exists[i], &finalized[i]) })
	}
	var head *logHead
	switch {
	case t.head != nil:
	case mode == headLocked:
		head = &logHead{}
		b.Queue(lockHead).QueryRow(scanHead(head))
	case mode == headGuessed:
		t.ticket = rand.Int64N(math.MaxInt64) + 1
		b.Queue(inFlight, t.ticket)
	}
	if b.Len() > 0 {
		if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, nil, nil, nil, translate(err)
		}
	}
	if head != nil {
		t.head = head
		t.db.guess.read(head, time.Now())
	}
	return marks(commandIDs, gotCommands), marks(createIDs, gotCreates), finalized, exists, nil
}

// CommandReplies returns the records of the completed commands among ids:
// their fingerprints and first replies — the stored reply, or for a
// command AppendCommands completed (which stores the sequence only),
// replyOf of the event at that sequence.
func (t *tx) CommandReplies(ctx context.Context, ids []string, replyOf func(store.Event) ([]byte, error)) (map[string]store.CommandRecord, error) {
	out := make(map[string]store.CommandRecord, len(ids))
	b := &pgx.Batch{}
	for _, id := range ids {
		b.Queue(`SELECT c.reply, c.fingerprint, e.sequence, e.event_type, e.subject_kind, e.subject_id, e.actor, e.payload, e.payload_digest, e.created_at
			FROM commands c LEFT JOIN events e ON e.sequence = c.sequence
			WHERE c.command_id = $1 AND c.sequence IS NOT NULL`, id).QueryRow(func(r pgx.Row) error {
			var rec store.CommandRecord
			var digest []byte
			var seq *int64
			var e store.Event
			err := r.Scan(&rec.Reply, &rec.Fingerprint, &seq, &e.Type, &e.SubjectKind, &e.SubjectID, &e.Actor, &e.Payload, &digest, &e.CreatedAt)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				return nil
			case err != nil:
				return err
			case rec.Reply != nil:
				out[id] = rec
				return nil
			case seq == nil:
				return fmt.Errorf("command %s: its event is not in the log", id)
			}
			e.Sequence = *seq
			copy(e.PayloadDigest[:], digest)
			e.CreatedAt = e.CreatedAt.UTC()
			rec.Reply, err = replyOf(e)
			out[id] = rec
			return err
		})
	}
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, translate(err)
	}
	return out, nil
}

// AppendCommands ends the transaction: it forgets the claims of the
// release ids (rejected commands), appends events, records for every
// commandIDs[i] other than "" that events[i] answered it (the sequence
// only: CommandReplies rebuilds the reply from the event), and commits.
// It takes one round trip, or two with events when ClaimAll did not lock
// the log's head (see appendCommandsChained). It must be the
// transaction's last call. An error wrapping store.ErrOutcomeUnknown means
// the transaction may have committed; any other means it did not.
func (t *tx) AppendCommands(ctx context.Context, release []string, events []store.Event, commandIDs []string, _ func(store.Event) ([]byte, error)) ([]store.Event, error) {
	b := &pgx.Batch{}
	if len(release) > 0 {
		b.Queue("DELETE FROM commands WHERE command_id = ANY($1) AND sequence IS NULL", release)
	}
	var out []store.Event
	var err error
	if len(events) == 0 {
		err = t.tx.commit(ctx, b)
	} else {
		prep := store.StartPrepareChain(events) // beside the validation
		defer prep()
		if err = t.validate(events); err == nil {
			if t.head == nil && t.ticket != 0 {
				out, err = t.appendCommandsGuessed(ctx, b, events, commandIDs, prep)
			} else {
				out, err = t.appendCommandsChained(ctx, b, newEventRows(events, prep), commandIDs)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("appending %d events: %w", len(events), err)
	}
	return out, nil
}

// marks reports for each key whether it is among got.
func marks(keys, got []string) []bool {
	set := make(map[string]bool, len(got))
	for _, g := range got {
		set[g] = true
	}
	out := make([]bool, len(keys))
	for i, k := range keys {
		out[i] = set[k]
	}
	return out
}
