package store

import (
	"context"
	"maps"
	"slices"
)

// bufferCacheRows bounds the clean rows a BufferedViews keeps after a
// flush to answer later reads without a round trip.
const bufferCacheRows = 1 << 20

// BufferedViews is a ViewTx that keeps the rows handlers write in memory
// and writes them to the underlying transaction in bulk on Flush. Replay
// (and any caller applying many events in one transaction) uses it so that
// a long history costs one bulk upsert per table instead of a read and a
// write per event. Handlers see exactly what they would see unbuffered:
// reads fall through to the transaction for rows the buffer does not hold,
// unless the views are known to be empty (reset in this transaction) and
// the row was never written.
type BufferedViews struct {
	tx Tx
	// empty means the views were reset: rows never written do not exist.
	empty bool
	// written holds the ids of every row written through the buffer, which
	// the database has after a flush even when empty is true.
	written    map[string]struct{}
	packages   map[string]Package
	retentions map[string]Retention
	dirtyP     map[string]struct{}
	dirtyR     map[string]struct{}
	// flushed holds, when empty is true, the ids already in the database;
	// other dirty rows are new and can be bulk-loaded instead of upserted.
	flushed map[string]struct{}
	// absentP and absentR hold ids Preload found without a row.
	absentP, absentR map[string]struct{}
}

// NewBufferedViews returns a buffer over tx. When empty is true the views
// are known to be empty (reset in this transaction), so misses are not read
// from the database.
func NewBufferedViews(tx Tx, empty bool) *BufferedViews {
	return &BufferedViews{tx: tx, empty: empty, written: map[string]struct{}{},
		packages: map[string]Package{}, retentions: map[string]Retention{},
		dirtyP: map[string]struct{}{}, dirtyR: map[string]struct{}{}, flushed: map[string]struct{}{}}
}

// Preload tells the buffer what the database holds for ids: the rows in ps
// and rs (keyed by package id), and no row for the ids missing from them.
// Reads of those ids are then answered without a round trip. Rows written
// through the buffer since take precedence.
func (b *BufferedViews) Preload(ids []string, ps map[string]Package, rs map[string]Retention) {
	if b.absentP == nil {
		b.absentP, b.absentR = map[string]struct{}{}, map[string]struct{}{}
	}
	preload(ids, ps, b.packages, b.dirtyP, b.absentP)
	preload(ids, rs, b.retentions, b.dirtyR, b.absentR)
}

// preload puts rows[id] (or, for ids without a row, an absence) in the
// cache for every id not written since the last flush.
func preload[T any](ids []string, rows, cache map[string]T, dirty, absent map[string]struct{}) {
	for _, id := range ids {
		if _, ok := dirty[id]; ok {
			continue
		}
		if r, ok := rows[id]; ok {
			cache[id] = r
			delete(absent, id)
		} else {
			delete(cache, id)
			absent[id] = struct{}{}
		}
	}
}

func (b *BufferedViews) unknown(id string) bool {
	if !b.empty {
		return false
	}
	_, ok := b.written[id]
	return !ok
}

// GetPackage implements ViewTx.
func (b *BufferedViews) GetPackage(ctx context.Context, id string) (Package, error) {
	if p, ok := b.packages[id]; ok {
		return p, nil
	}
	if _, ok := b.absentP[id]; ok || b.unknown(id) {
		return Package{}, ErrNotFound
	}
	return b.tx.GetPackage(ctx, id)
}

// PutPackage implements ViewTx.
func (b *BufferedViews) PutPackage(_ context.Context, p Package) error {
	b.packages[p.ID] = p
	b.dirtyP[p.ID] = struct{}{}
	if b.empty {
		b.written[p.ID] = struct{}{}
	}
	return nil
}

// GetRetention implements ViewTx.
func (b *BufferedViews) GetRetention(ctx context.Context, id string) (Retention, error) {
	if r, ok := b.retentions[id]; ok {
		return r, nil
	}
	if _, ok := b.absentR[id]; ok || b.unknown(id) {
		return Retention{}, ErrNotFound
	}
	return b.tx.GetRetention(ctx, id)
}

// PutRetention implements ViewTx.
func (b *BufferedViews) PutRetention(_ context.Context, r Retention) error {
	b.retentions[r.PackageID] = r
	b.dirtyR[r.PackageID] = struct{}{}
	if b.empty {
		b.written[r.PackageID] = struct{}{}
	}
	return nil
}

// Pending returns the number of rows written since the last flush.
func (b *BufferedViews) Pending() int { return len(b.dirtyP) + len(b.dirtyR) }

// Flush writes every row changed since the last flush to the transaction
// in bulk, in primary key order: rows new to emptied views are bulk-loaded
// (COPY on PostgreSQL), the others upserted.
func (b *BufferedViews) Flush(ctx context.Context) error {
	var newP, oldP []Package
	for _, id := range slices.Sorted(maps.Keys(b.dirtyP)) {
		if _, ok := b.flushed[id]; b.empty && !ok {
			newP = append(newP, b.packages[id])
		} else {
			oldP = append(oldP, b.packages[id])
		}
	}
	var newR, oldR []Retention
	for _, id := range slices.Sorted(maps.Keys(b.dirtyR)) {
		if _, ok := b.flushed[id]; b.empty && !ok {
			newR = append(newR, b.retentions[id])
		} else {
			oldR = append(oldR, b.retentions[id])
		}
	}
	if err := b.tx.LoadViews(ctx, newP, newR); err != nil {
		return err
	}
	if err := b.tx.PutPackages(ctx, oldP); err != nil {
		return err
	}
	if err := b.tx.PutRetentions(ctx, oldR); err != nil {
		return err
	}
	if b.empty {
		for _, p := range newP {
			b.flushed[p.ID] = struct{}{}
		}
		for _, r := range newR {
			b.flushed[r.PackageID] = struct{}{}
		}
	}
	clear(b.dirtyP)
	clear(b.dirtyR)
	if len(b.packages)+len(b.retentions)+len(b.absentP)+len(b.absentR) > bufferCacheRows {
		clear(b.absentP)
		clear(b.absentR)
		clear(b.packages) // reads fall through to the database again
		clear(b.retentions)
	}
	return nil
}
