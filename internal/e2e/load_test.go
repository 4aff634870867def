package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/ingest"
)

// op is one command a client attempted, retried with the same command id
// until it is acknowledged or the client gives up.
type op struct {
	kind      string // "create" or "finalize"
	commandID string
	name      string // create
	version   string // create
	packageID string // finalize (and create, once acknowledged)
	digest    string // finalize

	sent     time.Time // first attempt
	attempts int
	acked    bool
	reply    ingest.CommandReply
	latency  time.Duration // first attempt → success reply
	ackedAt  time.Time
	failed   error // a definite (non-retryable) error reply
	lastErr  error
	schedule time.Time // paced runs: when it was due
}

// loadOptions configures a load run.
type loadOptions struct {
	clients int
	// packages caps the packages each client creates (0: until stop).
	packages int
	// rate paces all clients together in commands per second (0: as fast
	// as replies come).
	rate float64
	// attemptTimeout bounds one request.
	attemptTimeout time.Duration
	// conns is how many NATS connections the clients share.
	conns  int
	prefix string
}

// load drives create-then-finalize commands from concurrent clients.
type load struct {
	opts  loadOptions
	conns []*nats.Conn

	mu  sync.Mutex
	ops []*op

	next    atomic.Int64 // paced runs: the next command slot
	started time.Time
	retries atomic.Int64
	onAck   func(o *op)
}

func newLoad(t testing.TB, e *env, opts loadOptions) *load {
	t.Helper()
	if opts.attemptTimeout == 0 {
		opts.attemptTimeout = 5 * time.Second
	}
	if opts.conns == 0 {
		opts.conns = max(1, opts.clients/8)
	}
	if opts.prefix == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		opts.prefix = "p" + hex.EncodeToString(b)
	}
	l := &load{opts: opts}
	for range opts.conns {
		nc, _ := e.connect(t)
		t.Cleanup(nc.Close)
		l.conns = append(l.conns, nc)
	}
	return l
}

// run drives the load until every client has created its packages or stop
// is closed (no new packages are begun after that; a command in progress
// is retried until it is acknowledged or giveUp ends). It returns when
// every client is done.
func (l *load) run(stop <-chan struct{}, giveUp context.Context) {
	l.started = time.Now()
	var wg sync.WaitGroup
	for c := range l.opts.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.client(c, stop, giveUp)
		}()
	}
	wg.Wait()
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

func (l *load) client(c int, stop <-chan struct{}, giveUp context.Context) {
	nc := l.conns[c%len(l.conns)]
	for i := 0; l.opts.packages == 0 || i < l.opts.packages; i++ {
		if stopped(stop) || giveUp.Err() != nil {
			return
		}
		create := &op{kind: "create", commandID: fmt.Sprintf("%s-c%d-%d-create", l.opts.prefix, c, i),
			name: fmt.Sprintf("%s-c%d", l.opts.prefix, c), version: fmt.Sprintf("%d.0.0", i)}
		l.do(nc, create, stop, giveUp)
		if !create.acked {
			continue
		}
		if stopped(stop) && l.opts.packages == 0 {
			return
		}
		fin := &op{kind: "finalize", commandID: fmt.Sprintf("%s-c%d-%d-finalize", l.opts.prefix, c, i),
			packageID: create.reply.PackageID, digest: digestHex(create.commandID)}
		l.do(nc, fin, stop, giveUp)
	}
}

func digestHex(s string) string {
	b := make([]byte, 32)
	copy(b, s)
	return hex.EncodeToString(b)
}

// pace waits for the op's slot in a paced run.
func (l *load) pace(o *op, giveUp context.Context) {
	if l.opts.rate <= 0 {
		return
	}
	k := l.next.Add(1) - 1
	at := l.started.Add(time.Duration(float64(k) / l.opts.rate * float64(time.Second)))
	o.schedule = at
	if d := time.Until(at); d > 0 {
		select {
		case <-time.After(d): // pacing: the command's due time
		case <-giveUp.Done():
		}
	}
}

// do sends one command, retrying retryable failures with the same command
// id until it is acknowledged, definitely rejected, or giveUp ends.
func (l *load) do(nc *nats.Conn, o *op, stop <-chan struct{}, giveUp context.Context) {
	l.pace(o, giveUp)
	l.mu.Lock()
	l.ops = append(l.ops, o)
	l.mu.Unlock()
	o.sent = time.Now()
	var subject string
	var req any
	if o.kind == "create" {
		subject, req = ingest.SubjectCreate, ingest.CreateRequest{CommandID: o.commandID, Actor: "chaos", Name: o.name, Version: o.version}
	} else {
		subject, req = ingest.SubjectFinalize, ingest.FinalizeRequest{CommandID: o.commandID, Actor: "chaos", PackageID: o.packageID, ManifestDigest: o.digest}
	}
	backoff := 20 * time.Millisecond
	for giveUp.Err() == nil {
		o.attempts++
		if o.attempts > 1 {
			l.retries.Add(1)
		}
		ctx, cancel := context.WithTimeout(giveUp, l.opts.attemptTimeout)
		var reply ingest.CommandReply
		err := ingest.Call(ctx, nc, subject, req, &reply)
		cancel()
		if err == nil {
			now := time.Now()
			l.mu.Lock()
			o.acked, o.reply, o.latency, o.ackedAt = true, reply, now.Sub(o.sent), now
			if o.kind == "create" {
				o.packageID = reply.PackageID
			}
			l.mu.Unlock()
			if l.onAck != nil {
				l.onAck(o)
			}
			return
		}
		o.lastErr = err
		var ie *ingest.Error
		if errors.As(err, &ie) && ie.Code != ingest.CodeUnavailable && ie.Code != ingest.CodeInternal {
			l.mu.Lock()
			o.failed = err
			l.mu.Unlock()
			return
		}
		select {
		case <-time.After(backoff): // retry backoff
		case <-giveUp.Done():
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// snapshot returns the ops attempted so far.
func (l *load) snapshot() []*op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*op(nil), l.ops...)
}
