package ingest

import (
	"encoding/json"
	"fmt"

	"github.com/artifactstore/artifactstore/store"
)

// fingerprint identifies a command by its parameters — everything but its
// command_id and what the service generates (a create's package id): the
// BLAKE3-256 digest of [endpoint, actor, params] as JSON, params being the
// decoded, defaulted request (so that spelling the default retention out
// is the same command). It is recorded with the command_id; a later
// command with that id and another fingerprint is refused
// (CodeCommandIDReused).
func fingerprint(endpoint, actor string, params any) ([]byte, error) {
	b, err := json.Marshal([]any{endpoint, actor, params})
	if err != nil {
		return nil, fmt.Errorf("ingest: fingerprinting a command: %w", err)
	}
	d := store.DigestOf(b)
	return d[:], nil
}

func errCommandIDReused(id string) *Error {
	return newError(CodeCommandIDReused,
		"command_id %s was already used for a command with other parameters; send this command with a new command_id", id)
}
