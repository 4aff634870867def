package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc/pool"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

const (
	defaultDatabaseURL = "./data/artifactstore.db"
	defaultNATSURL     = "nats://127.0.0.1:4222"
)

func (g *globals) databaseURL() string {
	if g.DatabaseURL == "" {
		return defaultDatabaseURL
	}
	return g.DatabaseURL
}

func (g *globals) natsURL() string {
	if g.NATSURL == "" {
		return defaultNATSURL
	}
	return g.NATSURL
}

// connectNATS connects as a long-running service: it fails with a clear
// error when the server cannot be reached at start, then reconnects for
// ever, logging each disconnect and reconnect.
func connectNATS(ctx context.Context, g *globals, url, name string) (*nats.Conn, error) {
	log := g.log.Named("nats")
	auth, err := g.options()
	if err != nil {
		return nil, err
	}
	nc, err := dialNATS(ctx, url, append(auth,
		nats.Name(name),
		nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("disconnected from NATS", zap.Error(err))
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("url", c.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS async error", zap.Error(err))
		}),
	))
	if err != nil {
		return nil, natsDialError(url, err, g.usesTLS())
	}
	if ctx.Err() != nil {
		nc.Close()
		return nil, ctx.Err()
	}
	log.Info("connected to NATS", zap.String("url", nc.ConnectedUrlRedacted()))
	return nc, nil
}

// component is one long-running part of a process.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// runComponents runs every component until ctx is cancelled or one fails;
// a failure stops the others. It returns the first error.
func runComponents(ctx context.Context, log *zap.Logger, comps ...component) error {
	p := pool.New().WithContext(ctx).WithCancelOnError().WithFirstError()
	for _, c := range comps {
		p.Go(func(ctx context.Context) error {
			err := c.run(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Error("component failed", zap.String("component", c.name), zap.Error(err))
				if strings.HasPrefix(err.Error(), c.name+":") {
					return err // the package named itself already
				}
				return fmt.Errorf("%s: %w", c.name, err)
			}
			if ctx.Err() == nil {
				return fmt.Errorf("%s stopped unexpectedly", c.name)
			}
			return nil
		})
	}
	return p.Wait()
}

func dbCheck(db store.DB) ops.Check {
	return func(ctx context.Context) error { _, err := db.Head(ctx); return err }
}

func natsCheck(nc *nats.Conn) ops.Check {
	return func(ctx context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("not connected (%s)", nc.Status())
		}
		return nc.FlushWithContext(ctx)
	}
}

// deps are what every service process holds: the store, a NATS connection
// with JetStream, and the ops HTTP server with database and NATS readiness
// checks.
type deps struct {
	db  migratingDB
	nc  *nats.Conn
	js  jetstream.JetStream
	srv *ops.Server
	// ln is the ops server's listener, bound first (nil: none).
	ln net.Listener
}

// openDeps binds the ops listener (first, so that a taken address fails
// before anything is opened) and opens the store and NATS for the service
// name; close releases them.
func openDeps(ctx context.Context, g *globals, dbURL, natsURL, name string, http httpListen) (d *deps, release func(), err error) {
	d = &deps{}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	d.srv = ops.New(http.addr, g.log)
	if http.freePort {
		d.srv.FreePortIfTaken()
	}
	if d.ln, err = d.srv.Listen(); err != nil {
		return nil, nil, err
	}
	if ln := d.ln; ln != nil {
		closers = append(closers, func() { _ = ln.Close() })
	}
	if d.db, err = openDB(ctx, dbURL, name, g.log); err != nil {
		return nil, nil, err
	}
	closers = append(closers, d.db.Close)
	if d.nc, err = connectNATS(ctx, g, natsURL, name); err != nil {
		return nil, nil, err
	}
	closers = append(closers, d.nc.Close)
	if d.js, err = jetstream.New(d.nc); err != nil {
		return nil, nil, err
	}
	if g.Pprof {
		d.srv.EnableProfiling()
	}
	d.srv.AddCheck("database", dbCheck(d.db))
	d.srv.AddCheck("nats", natsCheck(d.nc))
	return d, closeAll, nil
}

// run serves the ops HTTP server and the status page next to comps until
// ctx ends or one fails.
func (d *deps) run(ctx context.Context, g *globals, stream string, comps ...component) error {
	httpc := component{"http", func(ctx context.Context) error { return d.srv.Serve(ctx, d.ln) }}
	page := newStatusPage(d.db, d.js, stream, g.log)
	page.register(d.srv)
	pagec, _ := watchComponent(d.srv, "status-page", page, page.run)
	return runComponents(ctx, g.log, append([]component{httpc, pagec}, comps...)...)
}

type ingestCmd struct {
	httpFlag
	Stream         string        `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream (for the status page)."`
	RequestTimeout time.Duration `name:"request-timeout" env:"ARTIFACTSTORE_REQUEST_TIMEOUT" default:"2s" help:"Longest a command waits for its commit before it is answered unavailable."`
	MaxBatch       int           `name:"max-batch" env:"ARTIFACTSTORE_MAX_BATCH" default:"256" help:"Most commands committed in one transaction."`
	Identity       string        `env:"ARTIFACTSTORE_IDENTITY" enum:"trust,verify,require" default:"trust" help:"Actor check against the Nats-Request-Info identity of a shared service import: trust (record the claim), verify (check when present), require."`
	ReplyPrefixes  []string      `name:"reply-prefixes" env:"ARTIFACTSTORE_REPLY_PREFIXES" default:"_INBOX.,_R_." sep:"," help:"Inbox prefixes (comma-separated, each ending with '.') whose reply subjects ingest answers; a request with any other reply subject is dropped unanswered. List the clients' --nats-inbox-prefix values followed by a dot (_INBOX_client.); _R_. is where a service import puts replies."`
}

func (c ingestCmd) Run(ctx context.Context, g *globals) error {
	d, closeDeps, err := openDeps(ctx, g, g.databaseURL(), g.natsURL(), "artifactstore-ingest", c.listen(defaultIngestHTTP))
	if err != nil {
		return err
	}
	defer closeDeps()
	identity := ingest.IdentityMode(c.Identity)
	if c.Identity == "trust" {
		identity = ingest.IdentityTrustClaim
	}
	svc, err := ingest.New(d.db, d.nc, ingest.Config{RequestTimeout: c.RequestTimeout, MaxBatch: c.MaxBatch,
		Identity: identity, ReplyPrefixes: c.ReplyPrefixes, Logger: g.log, Registerer: d.srv.Registerer()})
	if err != nil {
		return err
	}
	ingestc, st := watchComponent(d.srv, "ingest", svc, svc.Run)
	d.srv.AddCheck("ingest", st.check)
	return d.run(ctx, g, c.Stream, ingestc)
}

type streamFlags struct {
	Stream          string        `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"JetStream stream of the events."`
	Replicas        int           `env:"ARTIFACTSTORE_STREAM_REPLICAS" default:"1" help:"Stream replicas when the relay creates it (3 on a cluster)."`
	DuplicateWindow time.Duration `name:"duplicate-window" env:"ARTIFACTSTORE_DUPLICATE_WINDOW" default:"2m" help:"Stream de-duplication window (exactly-once does not depend on it)."`
}

func (f streamFlags) relayConfig(log *zap.Logger, srv *ops.Server) relay.Config {
	cfg := relay.Config{Stream: f.Stream, Replicas: f.Replicas, DuplicateWindow: f.DuplicateWindow, Logger: log}
	if srv != nil {
		cfg.Registerer = srv.Registerer()
	}
	return cfg
}

// relayJetStream returns the relay's own JetStream context on nc: the relay
// owns its asynchronous publishing (see relay.JetStream), and a publish
// that nobody answers (a stream without a leader drops it) fails after the
// relay's ack timeout instead of staying pending.
func relayJetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	return jetstream.New(nc, jetstream.WithPublishAsyncTimeout(relay.DefaultAckTimeout))
}

// relayFlags are the relay's own flags (relay and dev).
type relayFlags struct {
	PublishBatch       int           `name:"publish-batch" env:"ARTIFACTSTORE_PUBLISH_BATCH" default:"0" help:"Publish in JetStream atomic batches of up to this many events (2..1000), synced once per batch: use it when NATS runs with sync_interval: always. 0 publishes event by event."`
	CheckpointKey      string        `name:"checkpoint-key" env:"ARTIFACTSTORE_CHECKPOINT_KEY" type:"path" help:"ed25519 private key (PEM, PKCS #8: 'artifactstore checkpoint keygen' or 'openssl genpkey -algorithm ed25519'): sign checkpoints of the stream's position and put them in the ARTIFACTSTORE_CHECKPOINTS bucket."`
	CheckpointInterval time.Duration `name:"checkpoint-interval" env:"ARTIFACTSTORE_CHECKPOINT_INTERVAL" default:"1m" help:"How often to sign a checkpoint (when the position moved)."`
	AllowStreamDeletes bool          `name:"allow-stream-deletes" env:"ARTIFACTSTORE_ALLOW_STREAM_DELETES" help:"Create the events stream without deny-delete/deny-purge and accept an existing one that allows deleting or purging messages (history downstream consumers rely on could then be removed)."`
}

// apply sets the relay's own settings in cfg, reading the checkpoint key.
func (f relayFlags) apply(cfg *relay.Config) error {
	cfg.PublishBatch = f.PublishBatch
	cfg.AllowStreamDeletes = f.AllowStreamDeletes
	cfg.CheckpointInterval = f.CheckpointInterval
	if f.CheckpointKey != "" {
		key, err := readPrivateKey(f.CheckpointKey)
		if err != nil {
			return failf(exitInvalid, "--checkpoint-key: %v", err)
		}
		cfg.CheckpointKey = key
	}
	return nil
}

type relayCmd struct {
	httpFlag
	streamFlags
	relayFlags
}

func (c relayCmd) Run(ctx context.Context, g *globals) error {
	d, closeDeps, err := openDeps(ctx, g, g.databaseURL(), g.natsURL(), "artifactstore-relay", c.listen(defaultRelayHTTP))
	if err != nil {
		return err
	}
	defer closeDeps()
	js, err := relayJetStream(d.nc)
	if err != nil {
		return err
	}
	cfg := c.relayConfig(g.log, d.srv)
	if err := c.apply(&cfg); err != nil {
		return err
	}
	r, err := relay.New(d.db, js, cfg)
	if err != nil {
		return err
	}
	relayc, st := watchComponent(d.srv, "relay", r, r.Run)
	d.srv.AddCheck("relay", relayReady(r, st))
	return d.run(ctx, g, c.Stream, relayc)
}
