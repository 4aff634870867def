// Package client is the Go client of artifactstore for other teams: typed
// commands and queries over NATS request/reply, and a typed consumer of the
// events stream that verifies every payload digest and the hash chain.
//
//	c, _ := client.New(nc)
//	reply, err := c.CreatePackage(ctx, client.CreateRequest{Actor: "ci", Name: "web", Version: "1.4.0"})
//	if errors.Is(err, client.ErrConflict) { ... }
//	for ev, err := range c.Events(ctx, client.EventsOptions{Since: 0}) { ... }
//
// Errors from the service are *client.Error values; match them with
// errors.Is against ErrInvalidArgument, ErrNotFound, ErrConflict,
// ErrUnavailable, ErrInternal, ErrPermissionDenied and ErrCommandIDReused.
// Retrying a command unchanged with the same CommandID is always safe;
// sending another command with a CommandID already used is refused with
// ErrCommandIDReused.
package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// Request and reply types of the service (see DESIGN.md, "Commands").
type (
	// CreateRequest is the body of a create command.
	CreateRequest = ingest.CreateRequest
	// FinalizeRequest is the body of a finalize command.
	FinalizeRequest = ingest.FinalizeRequest
	// CommandReply is the success reply of a command: the committed event.
	CommandReply = ingest.CommandReply
	// ListRequest selects a page of packages.
	ListRequest = ingest.ListRequest
	// ListReply is a page of packages and the cursor of the next one.
	ListReply = ingest.ListReply
	// Package is a package's view row with its retention.
	Package = store.PackageView
	// RetentionPolicy is how long a package is kept.
	RetentionPolicy = store.RetentionPolicy
	// Error is an error reply of the service.
	Error = ingest.Error
)

// Sentinels an *Error matches with errors.Is, one per error code.
var (
	ErrInvalidArgument = ingest.ErrInvalidArgument
	ErrNotFound        = ingest.ErrNotFound
	ErrConflict        = ingest.ErrConflict
	ErrUnavailable     = ingest.ErrUnavailable
	ErrInternal        = ingest.ErrInternal
	// ErrPermissionDenied: the claimed actor is not the authenticated one.
	ErrPermissionDenied = ingest.ErrPermissionDenied
	// ErrCommandIDReused: the CommandID was already used for a command
	// with other parameters; nothing was written. Not retryable: use a new
	// CommandID.
	ErrCommandIDReused = ingest.ErrCommandIDReused
)

// DefaultTimeout bounds a request when its context has no deadline.
const DefaultTimeout = 5 * time.Second

// DefaultStream is the events stream.
const DefaultStream = "ARTIFACTSTORE_EVENTS"

// Client talks to artifactstore over one NATS connection. It is safe for
// concurrent use.
type Client struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	timeout time.Duration
	stream  string
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the timeout of requests whose context has no deadline.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithStream names the events stream (DefaultStream).
func WithStream(name string) Option { return func(c *Client) { c.stream = name } }

// New returns a client over nc.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil *nats.Conn")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c := &Client{nc: nc, js: js, timeout: DefaultTimeout, stream: DefaultStream}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

func (c *Client) call(ctx context.Context, subject string, req, reply any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	err := ingest.Call(ctx, c.nc, subject, req, reply)
	if errors.Is(err, nats.ErrNoResponders) {
		return &Error{Code: ingest.CodeUnavailable, Message: "no artifactstore service is answering"}
	}
	return err
}

// CreatePackage creates a package; the reply carries its new id. A second
// create of the same (name, version) is ErrConflict.
func (c *Client) CreatePackage(ctx context.Context, req CreateRequest) (CommandReply, error) {
	var r CommandReply
	err := c.call(ctx, ingest.SubjectCreate, req, &r)
	return r, err
}

// FinalizePackage finalizes a package with its manifest digest (64
// lowercase hex). An unknown package is ErrNotFound, a second finalize
// ErrConflict.
func (c *Client) FinalizePackage(ctx context.Context, req FinalizeRequest) (CommandReply, error) {
	var r CommandReply
	err := c.call(ctx, ingest.SubjectFinalize, req, &r)
	return r, err
}

// GetPackage returns a package's view row (ErrNotFound until a projector
// has applied its created event).
func (c *Client) GetPackage(ctx context.Context, id string) (Package, error) {
	var p Package
	err := c.call(ctx, ingest.SubjectGet, ingest.GetRequest{PackageID: id}, &p)
	return p, err
}

// ListPackages returns one page of packages; pass reply.Next as After for
// the next page.
func (c *Client) ListPackages(ctx context.Context, req ListRequest) (ListReply, error) {
	var r ListReply
	err := c.call(ctx, ingest.SubjectList, req, &r)
	return r, err
}

// Packages yields every package matching req, page by page.
func (c *Client) Packages(ctx context.Context, req ListRequest) iter.Seq2[Package, error] {
	return func(yield func(Package, error) bool) {
		for {
			page, err := c.ListPackages(ctx, req)
			if err != nil {
				yield(Package{}, err)
				return
			}
			for _, p := range page.Packages {
				if !yield(p, nil) {
					return
				}
			}
			if page.Next == "" {
				return
			}
			req.After = page.Next
		}
	}
}

// Event is one event of the stream, its payload digest and chain digest
// verified (Event.ChainDigest is zero for an event relayed before the log
// had a chain).
type Event struct {
	store.Event
	// LogID is the id of the log the event belongs to.
	LogID string
	// Partition is the event's partition: FNV-1a-32 of its subject id
	// modulo the log's partition count.
	Partition int
	// Previous is the sequence of the previous event of the same
	// partition (0 for the partition's first): a reader of one partition
	// that has not seen it missed an event.
	Previous int64
}

// EventsOptions selects what Events yields.
type EventsOptions struct {
	// Since skips events with a sequence at or below it.
	Since int64
	// Subject filters by subject (artifactstore.events.> when empty), e.g.
	// artifactstore.events.v1.package.> or artifactstore.events.*.*.*.<id>.
	Subject string
}

// ErrInvalidMessage is yielded by Events for a message that is not a valid
// event (for example a payload whose digest does not match).
var ErrInvalidMessage = wire.ErrInvalidMessage

// ErrChainBroken is yielded by Events (as a *ChainError) when a message's
// chain digest does not follow from the previous event's: the history
// was rewritten after that event was relayed, or an event is missing.
var ErrChainBroken = wire.ErrChainBroken

// ChainError names the sequence at which the events Events read stop
// forming the log's hash chain. It wraps ErrChainBroken.
type ChainError = wire.ChainError

// Events follows the events stream with an ordered consumer, in sequence
// order, and yields each event after checking its headers, its payload
// digest and the hash chain: every event that follows the one before it
// must carry the chain digest store.ChainDigest gives (the first one read
// is trusted; with the default subject a missing event is a break too,
// with a narrower one only consecutive events can be checked). It ends
// when the consumer stops ranging or ctx ends; an invalid message is
// yielded as an error wrapping ErrInvalidMessage, a broken chain as a
// *ChainError wrapping ErrChainBroken, and either ends it.
func (c *Client) Events(ctx context.Context, opts EventsOptions) iter.Seq2[Event, error] {
	if opts.Subject == "" {
		opts.Subject = "artifactstore.events.>"
	}
	return func(yield func(Event, error) bool) {
		s, err := c.js.Stream(ctx, c.stream)
		if err != nil {
			yield(Event{}, fmt.Errorf("client: stream %s: %w", c.stream, err))
			return
		}
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{opts.Subject}})
		if err != nil {
			yield(Event{}, fmt.Errorf("client: consumer: %w", err))
			return
		}
		msgs, err := cons.Messages()
		if err != nil {
			yield(Event{}, fmt.Errorf("client: consumer: %w", err))
			return
		}
		defer msgs.Stop()
		stop := context.AfterFunc(ctx, msgs.Stop)
		defer stop()
		chain := wire.ChainCheck{Contiguous: opts.Subject == wire.Subjects}
		for {
			m, err := msgs.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					yield(Event{}, err)
				}
				return
			}
			wm, err := wire.Decode(m.Subject(), m.Headers(), m.Data())
			if err == nil {
				err = chain.Check(wm)
			}
			if err != nil {
				yield(Event{}, err)
				return
			}
			if wm.Event.Sequence <= opts.Since {
				continue
			}
			if !yield(Event{Event: wm.Event, LogID: wm.LogID, Partition: wm.Partition, Previous: wm.Previous}, nil) {
				return
			}
		}
	}
}
