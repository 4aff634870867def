package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// Endpoint names (the micro endpoint names and the endpoint label of the
// metrics).
const (
	endpointCreate   = "create"
	endpointFinalize = "finalize"
	endpointGet      = "get"
	endpointList     = "list"
)

// Service is the ingest service: it answers the command and query subjects
// of DESIGN.md over one NATS connection, deciding commands against the
// command-side state and appending their events in group-commit batches.
type Service struct {
	db  store.DB
	nc  *nats.Conn
	cfg Config
	log *zap.Logger
	m   *metrics

	started atomic.Bool
	// running is set while Run runs; due[i] is when commit loop i's batch
	// is due to be done (Unix ns; 0 while it waits for commands).
	running atomic.Bool
	due     []atomic.Int64

	// mu guards closed; handlers hold it for reading while they hand work
	// to queue or queries, close takes it for writing.
	mu      sync.RWMutex
	closed  bool
	queue   chan *command
	queries conc.WaitGroup
	qslots  chan struct{}

	rejectLog logLimiter
}

// New returns a service over db and nc configured by cfg (zero fields take
// the documented defaults). It checks cfg and registers the metrics with
// cfg.Registerer; it does not touch the network until Run.
func New(db store.DB, nc *nats.Conn, cfg Config) (*Service, error) {
	if db == nil {
		return nil, errors.New("ingest: nil store.DB")
	}
	if nc == nil {
		return nil, errors.New("ingest: nil *nats.Conn")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		db:     db,
		nc:     nc,
		cfg:    cfg,
		log:    cfg.Logger.Named("ingest"),
		queue:  make(chan *command, cfg.MaxPending),
		qslots: make(chan struct{}, cfg.QueryConcurrency),
		due:    make([]atomic.Int64, cfg.Committers),

		rejectLog: logLimiter{interval: rejectedLogInterval},
	}
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(len(s.queue)) }, db)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Run checks the database and the NATS connection, registers the micro
// service and answers requests until ctx is cancelled. Then it stops taking
// requests, commits the commands already accepted (each within its request
// timeout, on a context that is not cancelled), waits for running queries
// and returns nil. It returns an error when a dependency is unusable at
// start or when the NATS connection is closed under it. Run may be called
// once.
func (s *Service) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("ingest: Run called twice")
	}
	s.running.Store(true)
	defer s.running.Store(false)
	checkCtx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout*2)
	defer cancel()
	if _, err := s.db.Head(checkCtx); err != nil {
		return fmt.Errorf("ingest: checking the database: %w", err)
	}
	if err := s.nc.FlushWithContext(checkCtx); err != nil {
		return fmt.Errorf("ingest: checking the NATS connection: %w", err)
	}

	var committers conc.WaitGroup
	for i := range s.cfg.Committers {
		committers.Go(func() { s.commitLoop(i) })
	}
	defer committers.Wait()
	defer s.close()

	stopped := make(chan struct{})
	var stopOnce sync.Once
	md := map[string]string{"dialect": s.db.Dialect()}
	for k, v := range s.cfg.Metadata {
		md[k] = v
	}
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "artifactstore commands and queries: decode, validate, decide, append",
		QueueGroup:  s.cfg.QueueGroup,
		Metadata:    md,
		DoneHandler: func(micro.Service) { stopOnce.Do(func() { close(stopped) }) },
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			s.log.Warn("micro service error", zap.String("subject", e.Subject), zap.String("error", e.Description))
		},
	})
	if err != nil {
		return fmt.Errorf("ingest: adding the micro service: %w", err)
	}
	for _, ep := range []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{endpointCreate, SubjectCreate, s.handleCreate},
		{endpointFinalize, SubjectFinalize, s.handleFinalize},
		{endpointGet, SubjectGet, s.query(endpointGet, s.get)},
		{endpointList, SubjectList, s.query(endpointList, s.list)},
	} {
		if err := svc.AddEndpoint(ep.name, s.guard(ep.name, ep.h), micro.WithEndpointSubject(ep.subject)); err != nil {
			_ = svc.Stop()
			return fmt.Errorf("ingest: adding endpoint %s: %w", ep.subject, err)
		}
	}
	s.log.Info("ingest service running", zap.String("queue_group", s.cfg.QueueGroup),
		zap.String("dialect", s.db.Dialect()), zap.Int("committers", s.cfg.Committers),
		zap.Strings("reply_prefixes", s.cfg.ReplyPrefixes))

	select {
	case <-ctx.Done():
	case <-stopped:
	}
	if err := svc.Stop(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		s.log.Warn("stopping the micro service", zap.Error(err))
	}
	if ctx.Err() == nil {
		return errors.New("ingest: the micro service stopped: NATS connection closed")
	}
	s.log.Info("ingest service stopping; draining accepted commands", zap.Int("pending", len(s.queue)))
	return nil
}

// close stops handing work out: later requests are answered unavailable;
// the committers drain the queue and return; running queries are waited
// for.
func (s *Service) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.queue)
	}
	s.mu.Unlock()
	s.queries.Wait()
}

var errShuttingDown = &Error{Code: CodeUnavailable, Message: "the ingest service is shutting down; retry"}

// command is one decoded, validated command waiting for its batch.
type command struct {
	endpoint    string
	commandID   string
	fingerprint []byte // of the parameters, when commandID is set
	params      any    // what fingerprint digests
	name        string // create
	version     string // create
	event       store.Event
	deadline    time.Time
	req         responder

	// Set while deciding.
	claimed   bool
	res       result
	followers []*command // same command id in the same batch
}

// result is a command's outcome: a reply body or an error.
type result struct {
	body      []byte
	err       *Error
	duplicate bool
}

func (s *Service) handleCreate(req micro.Request) {
	r, err := DecodeCreate(req.Data())
	if err != nil {
		s.replyError(req, endpointCreate, err)
		return
	}
	if e := checkActor(s.cfg.Identity, r.Actor, req.Headers()); e != nil {
		s.replyError(req, endpointCreate, e)
		return
	}
	id, err := uuid.NewV7()
	if err != nil {
		s.replyError(req, endpointCreate, newError(CodeInternal, "generating a package id"))
		return
	}
	p := store.PackageCreated{PackageID: id.String(), Name: r.Name, Version: r.Version,
		Retention: store.RetentionPolicy{Policy: store.RetentionKeepForever}}
	if r.Retention != nil && r.Retention.Policy == store.RetentionKeepDays {
		p.Retention = *r.Retention
	}
	// The parameters are the payload without the generated package id.
	params := p
	params.PackageID = ""
	s.submit(req, &command{endpoint: endpointCreate, commandID: r.CommandID, params: params, name: r.Name, version: r.Version},
		store.TypePackageCreated, p.PackageID, r.Actor, p)
}

func (s *Service) handleFinalize(req micro.Request) {
	r, err := DecodeFinalize(req.Data())
	if err != nil {
		s.replyError(req, endpointFinalize, err)
		return
	}
	if e := checkActor(s.cfg.Identity, r.Actor, req.Headers()); e != nil {
		s.replyError(req, endpointFinalize, e)
		return
	}
	d, _ := store.ParseDigest(r.ManifestDigest) // validated by DecodeFinalize
	p := store.PackageFinalized{PackageID: r.PackageID, ManifestDigest: d}
	s.submit(req, &command{endpoint: endpointFinalize, commandID: r.CommandID, params: p},
		store.TypePackageFinalized, r.PackageID, r.Actor, p)
}

// submit builds c's event from its canonical payload and queues c for a
// batch, or answers at once when the service is closed or overloaded.
func (s *Service) submit(req micro.Request, c *command, eventType, subjectID, actor string, payload any) {
	c.req = s.detach(req)
	c.deadline = time.Now().Add(s.cfg.RequestTimeout)
	b, err := json.Marshal(payload)
	if err != nil {
		s.replyError(req, c.endpoint, newError(CodeInternal, "encoding the event payload"))
		return
	}
	c.event, err = store.NewEvent(eventType, store.SubjectKindPackage, subjectID, actor, b)
	if err != nil {
		// The request was validated; this is a contract drift between the
		// validation here and store's.
		s.replyError(req, c.endpoint, invalidf("%v", err))
		return
	}
	if c.commandID != "" {
		if c.fingerprint, err = fingerprint(c.endpoint, actor, c.params); err != nil {
			s.replyError(req, c.endpoint, newError(CodeInternal, "fingerprinting the command"))
			return
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.replyError(req, c.endpoint, errShuttingDown)
		return
	}
	select {
	case s.queue <- c:
	default:
		s.replyError(req, c.endpoint, newError(CodeUnavailable, "the ingest service is overloaded (%d commands pending); retry", cap(s.queue)))
	}
}

// query adapts a query function to a handler: queries run on their own
// goroutines, at most QueryConcurrency at once, each within RequestTimeout.
func (s *Service) query(endpoint string, fn func(ctx context.Context, data []byte) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed {
			s.replyError(req, endpoint, errShuttingDown)
			return
		}
		// Wait for a query slot, but not past half the request timeout: a
		// stuck database must not hold the dispatcher (and shutdown) for long.
		slot := time.NewTimer(s.cfg.RequestTimeout / 2)
		select {
		case s.qslots <- struct{}{}:
			slot.Stop()
		case <-slot.C:
			s.replyError(req, endpoint, newError(CodeUnavailable, "too many queries in flight (%d); retry", cap(s.qslots)))
			return
		}
		data, r := req.Data(), s.detach(req)
		s.queries.Go(func() {
			defer func() { <-s.qslots }()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
			defer cancel()
			v, err := fn(ctx, data)
			if err != nil {
				s.replyError(r, endpoint, s.storeError(err, endpoint))
				return
			}
			body, err := json.Marshal(v)
			if err != nil {
				s.replyError(r, endpoint, newError(CodeInternal, "encoding the reply"))
				return
			}
			s.m.requests.WithLabelValues(endpoint, outcomeOK).Inc()
			_ = r.Respond(body)
		})
	}
}

func (s *Service) get(ctx context.Context, data []byte) (any, error) {
	r, err := DecodeGet(data)
	if err != nil {
		return nil, err
	}
	v, err := s.db.Package(ctx, r.PackageID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, newError(CodeNotFound, "package %s not found", r.PackageID)
	}
	return v, err
}

func (s *Service) list(ctx context.Context, data []byte) (any, error) {
	r, err := DecodeList(data)
	if err != nil {
		return nil, err
	}
	limit := r.Limit
	if limit == 0 {
		limit = DefaultListLimit
	}
	views, err := s.db.ListPackages(ctx, store.PackageFilter{Name: r.Name, Status: r.Status, After: r.After, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := ListReply{Packages: views}
	if out.Packages == nil {
		out.Packages = []store.PackageView{}
	}
	if len(views) == limit {
		out.Next = views[len(views)-1].ID
	}
	return out, nil
}

// storeError turns an error from the store (or an *Error) into the *Error
// to reply with, logging unexpected ones.
func (s *Service) storeError(err error, endpoint string) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case store.Temporary(err), errors.Is(err, context.DeadlineExceeded):
		return newError(CodeUnavailable, "the database is unavailable; retry later")
	default:
		s.log.Error("request failed", zap.String("endpoint", endpoint), zap.Error(err))
		return newError(CodeInternal, "internal error")
	}
}

// replyError sends err as an error reply with the micro error headers.
func (s *Service) replyError(req responder, endpoint string, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = s.storeError(err, endpoint)
	}
	s.m.requests.WithLabelValues(endpoint, e.Code).Inc()
	if rerr := req.Error(e.statusText(), headerSafe(e.Message), e.body()); rerr != nil {
		s.log.Debug("sending an error reply", zap.String("endpoint", endpoint), zap.Error(rerr))
	}
}

// responder answers one request. A micro.Request is one, but only inside
// its handler: micro reads the request's state when the handler returns,
// so answers sent later (by a committer or a query goroutine) go through
// a detached responder instead.
type responder interface {
	Respond(data []byte, opts ...micro.RespondOpt) error
	Error(code, description string, data []byte, opts ...micro.RespondOpt) error
}

// detach returns a responder for req that is safe to use after the
// handler has returned.
func (s *Service) detach(req micro.Request) responder {
	return detached{nc: s.nc, reply: req.Reply()}
}

// detached answers a request by publishing to its reply subject, with the
// same headers micro.Request.Error sets.
type detached struct {
	nc    *nats.Conn
	reply string
}

func (d detached) Respond(data []byte, _ ...micro.RespondOpt) error {
	return d.publish(&nats.Msg{Data: data})
}

func (d detached) Error(code, description string, data []byte, _ ...micro.RespondOpt) error {
	return d.publish(&nats.Msg{Data: data, Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}})
}

func (d detached) publish(m *nats.Msg) error {
	if d.reply == "" {
		return nats.ErrMsgNoReply
	}
	m.Subject = d.reply
	return d.nc.PublishMsg(m)
}

// headerSafe keeps a message usable as a NATS header value.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if strings.TrimSpace(s) == "" {
		return "error"
	}
	return s
}
