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
	// CodeCommandIDReused answers a command whose command_id was already
	// used for a command with other parameters (another endpoint, actor,
	// name, version, retention, package or digest). Nothing is written and
	// the first command's reply is not sent: the client has a bug (or two
	// clients share ids), and answering the other command's outcome as if
	// it were this one's would hide it. Retrying cannot succeed; send the
	// command with a new command_id. Status 422, as the IETF
	// Idempotency-Key draft answers a key reused with another payload: the
	// request is well-formed, but unprocessable with that key; 409 already
	// means the package's state conflicts (CodeConflict).
	CodeCommandIDReused = "command_id_reused"
)

// Sentinels that *Error values match with errors.Is, one per code.
var (
	ErrInvalidArgument  = errors.New("ingest: invalid argument")
	ErrNotFound         = errors.New("ingest: not found")
	ErrConflict         = errors.New("ingest: conflict")
	ErrUnavailable      = errors.New("ingest: unavailable")
	ErrInternal         = errors.New("ingest: internal error")
	ErrPermissionDenied = errors.New("ingest: permission denied")
	ErrCommandIDReused  = errors.New("ingest: command_id reused with other parameters")
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
	case CodeCommandIDReused:
		return ErrCommandIDReused
	default:
		return ErrInternal
	}
}

// HTTPStatus returns the status the Nats-Service-Error-Code header carries
// for e's code: 400, 403, 404, 409, 422, 503 or 500.
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
	case CodeCommandIDReused:
		return 422
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
