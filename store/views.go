package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// Event types of the registry.
const (
	TypePackageCreated   = "v1.package.created"
	TypePackageFinalized = "v1.package.finalized"
)

// PackageCreated is the payload of v1.package.created.
type PackageCreated struct {
	PackageID string `json:"package_id"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	// Retention is the package's retention policy.
	Retention RetentionPolicy `json:"retention"`
}

// RetentionPolicy is how long a package is kept.
type RetentionPolicy struct {
	// Policy is keep_forever (the default) or keep_days.
	Policy string `json:"policy"`
	// KeepDays is the number of days after finalization a keep_days package
	// is kept (1..36500).
	KeepDays int `json:"keep_days,omitempty"`
}

// PackageFinalized is the payload of v1.package.finalized.
type PackageFinalized struct {
	PackageID      string `json:"package_id"`
	ManifestDigest Digest `json:"manifest_digest"`
}

// Handler applies one event to the views inside tx. It must derive every
// value it writes from the event (never the wall clock), so that applying
// the same events in the same order always builds the same rows.
type Handler func(ctx context.Context, tx ViewTx, e Event) error

// Handlers maps event types to the handlers that apply them. Event types
// with no handler are tolerated: applying them is a no-op.
type Handlers struct {
	byType map[string]Handler
}

// NewHandlers returns an empty registry.
func NewHandlers() *Handlers { return &Handlers{byType: map[string]Handler{}} }

// Register adds the handler of an event type, replacing any earlier one.
func (h *Handlers) Register(eventType string, fn Handler) { h.byType[eventType] = fn }

// Handles reports whether eventType has a handler.
func (h *Handlers) Handles(eventType string) bool { _, ok := h.byType[eventType]; return ok }

// Types returns the handled event types, sorted.
func (h *Handlers) Types() []string {
	out := make([]string, 0, len(h.byType))
	for t := range h.byType {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Apply runs e's handler, or does nothing for an unknown type.
func (h *Handlers) Apply(ctx context.Context, tx ViewTx, e Event) error {
	fn, ok := h.byType[e.Type]
	if !ok {
		return nil
	}
	if err := fn(ctx, tx, e); err != nil {
		return fmt.Errorf("applying %s at sequence %d: %w", e.Type, e.Sequence, err)
	}
	return nil
}

// RegistryHandlers returns the handlers of the registry views
// (artifact_packages and retention_state).
func RegistryHandlers() *Handlers {
	h := NewHandlers()
	h.Register(TypePackageCreated, applyPackageCreated)
	h.Register(TypePackageFinalized, applyPackageFinalized)
	return h
}

// ViewWriter is what replay and projectors drive: reset the views, then
// apply events one by one in sequence order.
type ViewWriter interface {
	// Reset empties the views the writer maintains.
	Reset(ctx context.Context, tx Tx) error
	// Apply applies one event to tx (a transaction, or a BufferedViews
	// over one).
	Apply(ctx context.Context, tx ViewTx, e Event) error
}

// RegistryViews is the ViewWriter of the registry views.
type RegistryViews struct {
	// Handlers applies events; RegistryHandlers() when nil.
	Handlers *Handlers
}

// Reset implements ViewWriter.
func (v RegistryViews) Reset(ctx context.Context, tx Tx) error { return tx.ResetViews(ctx) }

// Apply implements ViewWriter.
func (v RegistryViews) Apply(ctx context.Context, tx ViewTx, e Event) error {
	h := v.Handlers
	if h == nil {
		h = defaultHandlers
	}
	return h.Apply(ctx, tx, e)
}

var defaultHandlers = RegistryHandlers()

func applyPackageCreated(ctx context.Context, tx ViewTx, e Event) error {
	var p PackageCreated
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		return fmt.Errorf("decoding payload: %w", err)
	}
	if p.PackageID != e.SubjectID {
		return fmt.Errorf("payload package_id %q differs from subject id %q", p.PackageID, e.SubjectID)
	}
	if _, err := tx.GetPackage(ctx, p.PackageID); err == nil {
		return fmt.Errorf("package %s already exists", p.PackageID)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	created := DBTime(e.CreatedAt)
	if err := tx.PutPackage(ctx, Package{
		ID:              p.PackageID,
		Name:            p.Name,
		Version:         p.Version,
		Status:          StatusOpen,
		CreatedBy:       e.Actor,
		CreatedAt:       created,
		CreatedSequence: e.Sequence,
		LastSequence:    e.Sequence,
	}); err != nil {
		return err
	}
	policy := p.Retention.Policy
	if policy == "" {
		policy = RetentionKeepForever
	}
	return tx.PutRetention(ctx, Retention{
		PackageID:    p.PackageID,
		Policy:       policy,
		KeepDays:     p.Retention.KeepDays,
		LastSequence: e.Sequence,
	})
}

func applyPackageFinalized(ctx context.Context, tx ViewTx, e Event) error {
	var f PackageFinalized
	if err := json.Unmarshal(e.Payload, &f); err != nil {
		return fmt.Errorf("decoding payload: %w", err)
	}
	pkg, err := tx.GetPackage(ctx, e.SubjectID)
	if err != nil {
		return fmt.Errorf("package %s: %w", e.SubjectID, err)
	}
	if pkg.Status == StatusFinalized {
		return fmt.Errorf("package %s is already finalized", pkg.ID)
	}
	at := DBTime(e.CreatedAt)
	digest := f.ManifestDigest
	pkg.Status = StatusFinalized
	pkg.FinalizedBy = e.Actor
	pkg.FinalizedAt = &at
	pkg.ManifestDigest = &digest
	pkg.LastSequence = e.Sequence
	if err := tx.PutPackage(ctx, pkg); err != nil {
		return err
	}
	r, err := tx.GetRetention(ctx, pkg.ID)
	if err != nil {
		return fmt.Errorf("retention of %s: %w", pkg.ID, err)
	}
	if r.Policy == RetentionKeepDays {
		exp := at.AddDate(0, 0, r.KeepDays)
		r.ExpiresAt = &exp
	}
	r.LastSequence = e.Sequence
	return tx.PutRetention(ctx, r)
}
