package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Requester is the part of *nats.Conn a client of the service needs.
type Requester interface {
	RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error)
}

// Call sends req as JSON to subject and decodes the success reply into
// reply (which may be nil). ctx bounds the wait. An error reply returns an
// *Error (match it with errors.Is against ErrConflict and the other
// sentinels); a transport failure (no responders, timeout) returns the NATS
// error wrapped.
func Call(ctx context.Context, nc Requester, subject string, req, reply any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("ingest: encoding request: %w", err)
	}
	msg, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data})
	if err != nil {
		return fmt.Errorf("ingest: %s: %w", subject, err)
	}
	return DecodeReply(msg, reply)
}

// DecodeReply decodes a reply of the service: an error reply (one with the
// Nats-Service-Error-Code header) returns its *Error; otherwise the body is
// decoded into v (unless v is nil).
func DecodeReply(msg *nats.Msg, v any) error {
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		var body ErrorReply
		if err := json.Unmarshal(msg.Data, &body); err == nil && body.Error != nil && body.Error.Code != "" {
			return body.Error
		}
		// Not one of ours (for example a micro framework error): map the
		// status back to a code.
		e := &Error{Code: CodeInternal, Message: msg.Header.Get(micro.ErrorHeader)}
		if n, err := strconv.Atoi(code); err == nil {
			for _, c := range []string{CodeInvalidArgument, CodeNotFound, CodeConflict, CodeUnavailable, CodePermissionDenied, CodeCommandIDReused} {
				if (&Error{Code: c}).HTTPStatus() == n {
					e.Code = c
				}
			}
		}
		return e
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		return fmt.Errorf("ingest: decoding reply: %w", err)
	}
	return nil
}
