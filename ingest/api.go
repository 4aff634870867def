package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/artifactstore/artifactstore/store"
)

// Service name and subjects (see DESIGN.md, "Commands").
const (
	// ServiceName is the NATS micro service name; `nats micro info
	// artifactstore` shows every running instance.
	ServiceName = "artifactstore"
	// ServiceVersion is the micro service version.
	ServiceVersion = "1.0.0"

	// SubjectCreate takes a CreateRequest.
	SubjectCreate = "artifactstore.cmd.package.create"
	// SubjectFinalize takes a FinalizeRequest.
	SubjectFinalize = "artifactstore.cmd.package.finalize"
	// SubjectGet takes a GetRequest and answers a store.PackageView.
	SubjectGet = "artifactstore.query.package.get"
	// SubjectList takes a ListRequest and answers a ListReply.
	SubjectList = "artifactstore.query.package.list"
)

// Limits of request fields. They are part of the contract: a request outside
// them is answered with invalid_argument.
const (
	// MaxRequestBytes is the largest request body accepted.
	MaxRequestBytes = 16 << 10
	// MaxNameLen is the longest package name.
	MaxNameLen = 128
	// MaxVersionLen is the longest package version.
	MaxVersionLen = 128
	// MaxActorLen is the longest actor.
	MaxActorLen = 256
	// MaxCommandIDLen is the longest command id.
	MaxCommandIDLen = 128
	// MaxKeepDays is the longest keep_days retention.
	MaxKeepDays = 36500
	// MaxListLimit is the largest page a list query returns.
	MaxListLimit = 1000
	// DefaultListLimit is the page size of a list query without a limit.
	DefaultListLimit = 100
)

// CreateRequest is the body of artifactstore.cmd.package.create.
type CreateRequest struct {
	// CommandID, when set, makes the command idempotent: the same id again
	// returns the first reply and appends nothing.
	CommandID string `json:"command_id,omitempty"`
	// Actor is who issues the command (required).
	Actor string `json:"actor"`
	// Name is the package name: a single NATS subject token.
	Name string `json:"name"`
	// Version is the package version: one or more NATS subject tokens.
	Version string `json:"version"`
	// Retention is the package's retention policy (keep_forever when nil).
	Retention *store.RetentionPolicy `json:"retention,omitempty"`
}

// FinalizeRequest is the body of artifactstore.cmd.package.finalize.
type FinalizeRequest struct {
	// CommandID, when set, makes the command idempotent.
	CommandID string `json:"command_id,omitempty"`
	// Actor is who issues the command (required).
	Actor string `json:"actor"`
	// PackageID is the id the create reply returned.
	PackageID string `json:"package_id"`
	// ManifestDigest is 64 lowercase hex characters.
	ManifestDigest string `json:"manifest_digest"`
}

// CommandReply is the success reply of every command: the committed event.
type CommandReply struct {
	// Sequence is the committed event's position in the log.
	Sequence int64 `json:"sequence"`
	// EventType is the event's type (v1.package.created, ...).
	EventType string `json:"event_type"`
	// PackageID is the package the event belongs to (new for a create).
	PackageID string `json:"package_id"`
	// CreatedAt is the time the database gave the event.
	CreatedAt time.Time `json:"created_at"`
}

// GetRequest is the body of artifactstore.query.package.get. Its reply is
// the package's store.PackageView.
type GetRequest struct {
	PackageID string `json:"package_id"`
}

// ListRequest is the body of artifactstore.query.package.list. Every field
// is optional.
type ListRequest struct {
	// Name keeps packages of that name only.
	Name string `json:"name,omitempty"`
	// Status keeps packages in that status only (open or finalized).
	Status string `json:"status,omitempty"`
	// After is the paging cursor: the Next of the previous page.
	After string `json:"after,omitempty"`
	// Limit is the page size (1..MaxListLimit; DefaultListLimit when 0).
	Limit int `json:"limit,omitempty"`
}

// ListReply is the reply of artifactstore.query.package.list. Next is set
// when there may be more packages: pass it as After to get the next page.
type ListReply struct {
	Packages []store.PackageView `json:"packages"`
	Next     string              `json:"next,omitempty"`
}

// decodeStrict decodes exactly one JSON object into v: unknown fields,
// fields given twice, keys that match a field only when case is ignored,
// trailing data, invalid UTF-8 and bodies over MaxRequestBytes are
// invalid_argument errors. JSON v2 (go-json-experiment/json, the reference
// implementation of encoding/json/v2) is strict in all of these by itself;
// encoding/json needed a second, token-by-token pass over every request
// for the case and duplicate rules, 16 % of the service's CPU under load.
func decodeStrict(data []byte, v any) error {
	if len(data) > MaxRequestBytes {
		return invalidf("request is %d bytes, the limit is %d", len(data), MaxRequestBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return invalidf("request body is empty; expected a JSON object")
	}
	if !utf8.Valid(data) {
		return invalidf("request is not valid UTF-8")
	}
	if err := jsonv2.Unmarshal(data, v, jsonv2.RejectUnknownMembers(true)); err != nil {
		return invalidf("decoding request: %s", jsonErrorMessage(err))
	}
	return nil
}

// jsonErrorMessage says what is wrong with a request in the terms of its
// fields.
func jsonErrorMessage(err error) string {
	field := func(p jsontext.Pointer) string {
		return strings.ReplaceAll(strings.TrimPrefix(string(p), "/"), "/", ".")
	}
	var synErr *jsontext.SyntacticError
	if errors.As(err, &synErr) {
		if errors.Is(synErr.Err, jsontext.ErrDuplicateName) {
			return fmt.Sprintf("field %q appears twice", field(synErr.JSONPointer))
		}
		return fmt.Sprintf("invalid JSON at byte %d: %v", synErr.ByteOffset, synErr.Err)
	}
	var semErr *jsonv2.SemanticError
	if errors.As(err, &semErr) {
		switch {
		case errors.Is(semErr.Err, jsonv2.ErrUnknownName):
			return fmt.Sprintf("unknown field %q", field(semErr.JSONPointer))
		case semErr.JSONPointer == "":
			return fmt.Sprintf("expected a JSON object, got %s", kindName(semErr.JSONKind))
		case semErr.GoType != nil:
			return fmt.Sprintf("field %s: expected %s, got %s", field(semErr.JSONPointer), semErr.GoType, kindName(semErr.JSONKind))
		}
		return fmt.Sprintf("field %s: %v", field(semErr.JSONPointer), semErr.Err)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func kindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f', 't':
		return "a boolean"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "something else"
}

// DecodeCreate decodes and validates a create request. Errors are *Error
// with code invalid_argument.
func DecodeCreate(data []byte) (CreateRequest, error) {
	var r CreateRequest
	if err := decodeStrict(data, &r); err != nil {
		return CreateRequest{}, err
	}
	return r, r.Validate()
}

// DecodeFinalize decodes and validates a finalize request. Errors are
// *Error with code invalid_argument.
func DecodeFinalize(data []byte) (FinalizeRequest, error) {
	var r FinalizeRequest
	if err := decodeStrict(data, &r); err != nil {
		return FinalizeRequest{}, err
	}
	return r, r.Validate()
}

// DecodeGet decodes and validates a get request.
func DecodeGet(data []byte) (GetRequest, error) {
	var r GetRequest
	if err := decodeStrict(data, &r); err != nil {
		return GetRequest{}, err
	}
	return r, r.Validate()
}

// DecodeList decodes and validates a list request. An empty body is a
// list of everything.
func DecodeList(data []byte) (ListRequest, error) {
	var r ListRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return r, nil
	}
	if err := decodeStrict(data, &r); err != nil {
		return ListRequest{}, err
	}
	return r, r.Validate()
}

// Validate checks every field of r; errors are *Error with code
// invalid_argument naming the field.
func (r CreateRequest) Validate() error {
	if err := validateCommandID(r.CommandID); err != nil {
		return err
	}
	if err := validateActor(r.Actor); err != nil {
		return err
	}
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	if err := ValidateVersion(r.Version); err != nil {
		return err
	}
	if p := r.Retention; p != nil {
		switch p.Policy {
		case store.RetentionKeepForever, "":
			if p.KeepDays != 0 {
				return invalidf("retention.keep_days is only allowed with policy %q", store.RetentionKeepDays)
			}
		case store.RetentionKeepDays:
			if p.KeepDays < 1 || p.KeepDays > MaxKeepDays {
				return invalidf("retention.keep_days must be 1..%d, got %d", MaxKeepDays, p.KeepDays)
			}
		default:
			return invalidf("retention.policy must be %q or %q", store.RetentionKeepForever, store.RetentionKeepDays)
		}
	}
	return nil
}

// Validate checks every field of r.
func (r FinalizeRequest) Validate() error {
	if err := validateCommandID(r.CommandID); err != nil {
		return err
	}
	if err := validateActor(r.Actor); err != nil {
		return err
	}
	if err := validatePackageID(r.PackageID); err != nil {
		return err
	}
	if _, err := store.ParseDigest(r.ManifestDigest); err != nil {
		return invalidf("manifest_digest: %v", err)
	}
	return nil
}

// Validate checks every field of r.
func (r GetRequest) Validate() error { return validatePackageID(r.PackageID) }

// Validate checks every field of r.
func (r ListRequest) Validate() error {
	if r.Name != "" {
		if err := ValidateName(r.Name); err != nil {
			return err
		}
	}
	switch r.Status {
	case "", store.StatusOpen, store.StatusFinalized:
	default:
		return invalidf("status must be %q or %q", store.StatusOpen, store.StatusFinalized)
	}
	if r.After != "" {
		if err := validatePackageID(r.After); err != nil {
			return invalidf("after: %s", err.(*Error).Message)
		}
	}
	if r.Limit < 0 || r.Limit > MaxListLimit {
		return invalidf("limit must be 0..%d, got %d", MaxListLimit, r.Limit)
	}
	return nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// ValidateName checks a package name: 1..MaxNameLen ASCII characters from
// A-Z a-z 0-9 '-' '_', starting with a letter or digit. A name is a single
// NATS subject token.
func ValidateName(s string) error {
	if s == "" {
		return invalidf("name is required")
	}
	if len(s) > MaxNameLen {
		return invalidf("name must be at most %d characters", MaxNameLen)
	}
	if !isAlnum(s[0]) {
		return invalidf("name must start with a letter or digit")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' {
			return invalidf("name may contain only A-Z a-z 0-9 - _, found %q at %d", c, i)
		}
	}
	return nil
}

// ValidateVersion checks a package version: 1..MaxVersionLen ASCII
// characters from A-Z a-z 0-9 '.' '-' '_' '+', starting and ending with a
// letter or digit, without two dots in a row. A version is therefore one or
// more valid NATS subject tokens joined by dots (1.2.3, 2.0.0-rc.1+build5).
func ValidateVersion(s string) error {
	if s == "" {
		return invalidf("version is required")
	}
	if len(s) > MaxVersionLen {
		return invalidf("version must be at most %d characters", MaxVersionLen)
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return invalidf("version must start and end with a letter or digit")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '-' && c != '_' && c != '+' {
			return invalidf("version may contain only A-Z a-z 0-9 . - _ +, found %q at %d", c, i)
		}
		if c == '.' && s[i-1] == '.' {
			return invalidf("version must not contain two dots in a row")
		}
	}
	return nil
}

func validateActor(s string) error {
	if strings.TrimSpace(s) == "" {
		return invalidf("actor is required")
	}
	if len(s) > MaxActorLen {
		return invalidf("actor must be at most %d bytes", MaxActorLen)
	}
	if strings.TrimSpace(s) != s {
		return invalidf("actor must not start or end with spaces")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return invalidf("actor must not contain control characters")
		}
	}
	return nil
}

// validateCommandID accepts an empty id (the command is not idempotent) or
// 1..MaxCommandIDLen characters from A-Z a-z 0-9 '.' '-' '_' ':'.
func validateCommandID(s string) error {
	if len(s) > MaxCommandIDLen {
		return invalidf("command_id must be at most %d characters", MaxCommandIDLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != ':' {
			return invalidf("command_id may contain only A-Z a-z 0-9 - _ . :, found %q at %d", c, i)
		}
	}
	return nil
}

// validatePackageID accepts any single NATS subject token; ids the service
// generates are UUIDv7 strings.
func validatePackageID(s string) error {
	if s == "" {
		return invalidf("package_id is required")
	}
	if !store.ValidToken(s) {
		return invalidf("package_id must be a single NATS subject token of at most 128 characters")
	}
	return nil
}
