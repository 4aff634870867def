// Package storetest is the test suite every store dialect must pass. Each
// dialect's own _test.go calls Run with a function that returns a fresh,
// migrated database.
package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
)

// Opener returns a fresh, migrated, empty database for one test.
type Opener func(t *testing.T) store.DB

// Created returns a valid v1.package.created event for id.
func Created(t testing.TB, id, name, version, actor string) store.Event {
	t.Helper()
	payload, err := json.Marshal(store.PackageCreated{PackageID: id, Name: name, Version: version,
		Retention: store.RetentionPolicy{Policy: store.RetentionKeepDays, KeepDays: 30}})
	require.NoError(t, err)
	e, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, actor, payload)
	require.NoError(t, err)
	return e
}

// Finalized returns a valid v1.package.finalized event for id.
func Finalized(t testing.TB, id, actor string, digest store.Digest) store.Event {
	t.Helper()
	payload, err := json.Marshal(store.PackageFinalized{PackageID: id, ManifestDigest: digest})
	require.NoError(t, err)
	e, err := store.NewEvent(store.TypePackageFinalized, store.SubjectKindPackage, id, actor, payload)
	require.NoError(t, err)
	return e
}

// Append appends events in one transaction and returns them as written.
func Append(t testing.TB, db store.DB, events ...store.Event) []store.Event {
	t.Helper()
	var out []store.Event
	err := db.InTx(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.Append(context.Background(), events...)
		return err
	})
	require.NoError(t, err)
	return out
}

// PackageID returns a deterministic test package id.
func PackageID(i int) string { return fmt.Sprintf("pkg-%06d", i) }
