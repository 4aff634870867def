package store

import (
	"context"
	"maps"
	"slices"
)

// BufferedViews is a ViewTx that keeps the rows handlers write in memory
// and writes them to the underlying transaction in bulk on Flush. Replay
// (and any caller applying many events in one transaction) uses it so that
// a long history costs one bulk upsert per table instead of a read and a
// write per event. Handlers see exactly what they would see unbuffered:
// reads fall through to the transaction for rows not yet in the buffer,
// unless Empty says the views were reset in this transaction.
type BufferedViews struct {
	tx Tx
	// empty means the views were reset: rows not in the buffer do not exist.
	empty bool
	// flushed holds the ids written by earlier flushes, which the database
	// now has even when empty is true.
	flushed    map[string]struct{}
	packages   map[string]Package
	retentions map[string]Retention
}

// NewBufferedViews returns a buffer over tx. When empty is true the views
// are known to be empty (reset in this transaction), so misses are not read
// from the database.
func NewBufferedViews(tx Tx, empty bool) *BufferedViews {
	return &BufferedViews{tx: tx, empty: empty, flushed: map[string]struct{}{}, packages: map[string]Package{}, retentions: map[string]Retention{}}
}

// GetPackage implements ViewTx.
func (b *BufferedViews) GetPackage(ctx context.Context, id string) (Package, error) {
	if p, ok := b.packages[id]; ok {
		return p, nil
	}
	if b.unknown(id) {
		return Package{}, ErrNotFound
	}
	return b.tx.GetPackage(ctx, id)
}

func (b *BufferedViews) unknown(id string) bool {
	if !b.empty {
		return false
	}
	_, ok := b.flushed[id]
	return !ok
}

// PutPackage implements ViewTx.
func (b *BufferedViews) PutPackage(_ context.Context, p Package) error {
	b.packages[p.ID] = p
	return nil
}

// GetRetention implements ViewTx.
func (b *BufferedViews) GetRetention(ctx context.Context, id string) (Retention, error) {
	if r, ok := b.retentions[id]; ok {
		return r, nil
	}
	if b.unknown(id) {
		return Retention{}, ErrNotFound
	}
	return b.tx.GetRetention(ctx, id)
}

// PutRetention implements ViewTx.
func (b *BufferedViews) PutRetention(_ context.Context, r Retention) error {
	b.retentions[r.PackageID] = r
	return nil
}

// Pending returns the number of buffered rows.
func (b *BufferedViews) Pending() int { return len(b.packages) + len(b.retentions) }

// Flush writes every buffered row to the transaction in bulk, in primary
// key order, and empties the buffer.
func (b *BufferedViews) Flush(ctx context.Context) error {
	pkgs := make([]Package, 0, len(b.packages))
	for _, id := range slices.Sorted(maps.Keys(b.packages)) {
		pkgs = append(pkgs, b.packages[id])
	}
	rets := make([]Retention, 0, len(b.retentions))
	for _, id := range slices.Sorted(maps.Keys(b.retentions)) {
		rets = append(rets, b.retentions[id])
	}
	if err := b.tx.PutPackages(ctx, pkgs); err != nil {
		return err
	}
	if err := b.tx.PutRetentions(ctx, rets); err != nil {
		return err
	}
	if b.empty {
		for id := range b.packages {
			b.flushed[id] = struct{}{}
		}
		for id := range b.retentions {
			b.flushed[id] = struct{}{}
		}
	}
	clear(b.packages)
	clear(b.retentions)
	return nil
}
