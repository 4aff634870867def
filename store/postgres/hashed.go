package postgres

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/artifactstore/artifactstore/store"
)

var _ store.HashingReader = (*DB)(nil)

// FetchHashed implements store.HashingReader: the rows Fetch reads, hashed
// from the wire's bytes as they arrive instead of being copied into events
// first (verify spends as much CPU decoding the log as hashing it).
func (db *DB) FetchHashed(ctx context.Context, after int64, limit int) (store.HashedPage, error) {
	rows, err := db.pool.Query(ctx,
		"SELECT "+eventColumns+" FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2", after, limit)
	if err != nil {
		return store.HashedPage{}, translate(err)
	}
	defer rows.Close()
	n := min(limit, 1024)
	p := store.HashedPage{Events: make([]store.Event, 0, n), PayloadOK: make([]bool, 0, n), Prep: make(store.ChainPrep, 0, n)}
	raw := rawRow(rows)
	for rows.Next() {
		var e store.Event
		ok, err := raw(&e)
		if err != nil {
			return store.HashedPage{}, err
		}
		p.Prep = p.Prep.Add(e)
		// The strings and the payload are the driver's memory, gone with
		// the next row: copied when the chain still needs the fields.
		e.Payload = nil
		if p.Prep.NeedsFields(len(p.Prep) - 1) {
			e.Type, e.SubjectKind, e.SubjectID, e.Actor = strings.Clone(e.Type), strings.Clone(e.SubjectKind), strings.Clone(e.SubjectID), strings.Clone(e.Actor)
		} else {
			e.Type, e.SubjectKind, e.SubjectID, e.Actor = "", "", "", ""
		}
		p.Events, p.PayloadOK = append(p.Events, e), append(p.PayloadOK, ok)
	}
	return p, translate(rows.Err())
}

// rawRow returns the decoder of rows' current row into e (its string and
// payload fields pointing into the driver's buffer) that also reports
// whether the payload matches its digest. It reads the wire's bytes when
// the columns came in the formats it knows (binary, text for text), and
// scans otherwise.
func rawRow(rows pgx.Rows) func(e *store.Event) (bool, error) {
	fds := rows.FieldDescriptions()
	// sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at, chain_digest
	raw := len(fds) == 9
	for i, f := range fds {
		if raw && f.Format != pgtype.BinaryFormatCode && (i < 1 || i > 4) {
			raw = false
		}
	}
	if !raw {
		return func(e *store.Event) (bool, error) {
			var digest, chain []byte
			if err := rows.Scan(&e.Sequence, &e.Type, &e.SubjectKind, &e.SubjectID, &e.Actor, &e.Payload, &digest, &e.CreatedAt, &chain); err != nil {
				return false, translate(err)
			}
			copy(e.PayloadDigest[:], digest)
			copy(e.ChainDigest[:], chain)
			return store.DigestOf(e.Payload) == e.PayloadDigest, nil
		}
	}
	return func(e *store.Event) (bool, error) {
		v := rows.RawValues()
		if len(v[0]) != 8 || len(v[7]) != 8 {
			return false, fmt.Errorf("postgres: an event's sequence or created_at is %d or %d bytes on the wire, not 8", len(v[0]), len(v[7]))
		}
		e.Sequence = int64(binary.BigEndian.Uint64(v[0]))
		e.Type, e.SubjectKind, e.SubjectID, e.Actor = view(v[1]), view(v[2]), view(v[3]), view(v[4])
		e.Payload = v[5]
		copy(e.PayloadDigest[:], v[6])
		e.CreatedAt = time.UnixMicro(pgEpochMicros + int64(binary.BigEndian.Uint64(v[7]))).UTC()
		copy(e.ChainDigest[:], v[8])
		return store.DigestOf(e.Payload) == e.PayloadDigest, nil
	}
}

// pgEpochMicros is 2000-01-01 UTC, where PostgreSQL's binary timestamps
// count their microseconds from, in Unix microseconds.
const pgEpochMicros = 946684800 * 1_000_000

// view is b as a string without copying it: valid while b is.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
