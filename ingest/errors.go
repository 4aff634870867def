package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Error codes of error replies (DESIGN.md, "Commands").
const (
	CodeInvalidArgument = "invalid_argument"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeUnavailable     = "unavailable"
	CodeInternal        = "internal"
	// CodePermissionDenied answers a command whose claimed actor is not the
	// identity NATS authenticated (see Config.Identity).
	CodePermissionDenied = "permission_denied"
)

// Sentinels that *Error values match with errors.Is, one per code.
var (
	ErrInvalidArgument  = errors.New("ingest: invalid argument")
	ErrNotFound         = errors.New("ingest: not found")
	ErrConflict         = errors.New("ingest: conflict")
	ErrUnavailable      = errors.New("ingest: unavailable")
	ErrInternal         = errors.New("ingest: internal error")
	ErrPermissionDenied = errors.New("ingest: permission denied")
)

// Error is an error reply: its Code is one of the Code constants and its
// Message says what was wrong. It is sent with the micro service error
// headers (Nats-Service-Error-Code: HTTPStatus()) and the body
// {"error":{"code":...,"message":...}}. errors.Is matches it against the
// sentinel of its code (ErrConflict, ...).
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string { return "ingest: " + e.Code + ": " + e.Message }

// Unwrap returns the sentinel of e's code.
func (e *Error) Unwrap() error {
	switch e.Code {
	case CodeInvalidArgument:
		return ErrInvalidArgument
	case CodeNotFound:
		return ErrNotFound
	case CodeConflict:
		return ErrConflict
	case CodeUnavailable:
		return ErrUnavailable
	case CodePermissionDenied:
		return ErrPermissionDenied
	default:
		return ErrInternal
	}
}

// HTTPStatus returns the status the Nats-Service-Error-Code header carries
// for e's code: 400, 403, 404, 409, 503 or 500.
func (e *Error) HTTPStatus() int {
	switch e.Code {
	case CodeInvalidArgument:
		return 400
	case CodeNotFound:
		return 404
	case CodeConflict:
		return 409
	case CodeUnavailable:
		return 503
	case CodePermissionDenied:
		return 403
	default:
		return 500
	}
}

// ErrorReply is the body of an error reply.
type ErrorReply struct {
	Error *Error `json:"error"`
}

func (e *Error) body() []byte {
	b, _ := json.Marshal(ErrorReply{Error: e})
	return b
}

func (e *Error) statusText() string { return strconv.Itoa(e.HTTPStatus()) }

func newError(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalidf(format string, args ...any) *Error {
	return newError(CodeInvalidArgument, format, args...)
}
