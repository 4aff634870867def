package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
)

type devCmd struct {
	DataDir    string `name:"data-dir" env:"ARTIFACTSTORE_DATA_DIR" default:"./data" help:"Where the SQLite log and JetStream data live."`
	NATSListen string `name:"nats-listen" env:"ARTIFACTSTORE_NATS_LISTEN" default:"127.0.0.1:4222" help:"Address of the in-process NATS server."`
	httpFlag
	streamFlags
	relayFlags
	projectorFlags
}

// startEmbeddedNATS runs nats-server with JetStream in this process. A port
// already in use is reported with the flag that picks another.
func startEmbeddedNATS(listen, storeDir string, log *zap.Logger) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: %w", listen, err)
	}
	port, err := net.LookupPort("tcp", portStr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: %w", listen, err)
	}
	// Probe first: nats-server itself only logs a bind failure.
	l, err := net.Listen("tcp", listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("cannot start the embedded NATS server: %s is already in use (another NATS server?); "+
				"choose another address with --nats-listen (or ARTIFACTSTORE_NATS_LISTEN), e.g. --nats-listen 127.0.0.1:4333, "+
				"or use that server with --nats-url", listen)
		}
		return nil, fmt.Errorf("cannot start the embedded NATS server on %s: %w", listen, err)
	}
	l.Close()
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: "artifactstore-dev",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
		NoLog:      true,
		// Acknowledged writes survive a power loss: fsync every write.
		SyncAlways: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not start on %s", listen)
	}
	log.Info("embedded NATS server listening", zap.String("url", ns.ClientURL()), zap.String("store_dir", storeDir))
	return ns, nil
}

func (c devCmd) natsDir() string { return filepath.Join(c.DataDir, "jetstream") }

func (c devCmd) sqlitePath() string { return filepath.Join(c.DataDir, "artifactstore.db") }

func (c devCmd) Run(ctx context.Context, g *globals) error {
	log := g.log
	dbURL := g.DatabaseURL
	if dbURL == "" {
		dbURL = c.sqlitePath()
	}
	natsURL := g.NATSURL
	if natsURL == "" {
		ns, err := startEmbeddedNATS(c.NATSListen, c.natsDir(), log)
		if err != nil {
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		natsURL = ns.ClientURL()
	}
	d, closeDeps, err := openDeps(ctx, g, dbURL, natsURL, "artifactstore-dev", c.listen(defaultDevHTTP))
	if err != nil {
		return err
	}
	defer closeDeps()
	db := d.db
	if _, err := db.Migrate(ctx); err != nil {
		return err
	}
	svc, err := ingest.New(db, d.nc, ingest.Config{Logger: log, Registerer: d.srv.Registerer()})
	if err != nil {
		return err
	}
	rjs, err := relayJetStream(d.nc)
	if err != nil {
		return err
	}
	rcfg := c.relayConfig(log, d.srv)
	if err := c.relayFlags.apply(&rcfg); err != nil {
		return err
	}
	r, err := relay.New(db, rjs, rcfg)
	if err != nil {
		return err
	}
	tap := &ownedTap{}
	w, err := projector.New(db, d.js, c.config(c.Stream, log, d.srv, tap))
	if err != nil {
		return err
	}
	logID, _ := db.LogID(ctx)
	fmt.Fprintf(os.Stderr, `
artifactstore dev is running (stop with Ctrl-C)
  NATS:     %s
  log:      %s (log id %s)
  stream:   %s
  http:     http://%s/ (/metrics, /healthz, /readyz)
try:
  artifactstore --nats-url %s package create --actor you --name hello --version 1.0.0
  artifactstore --nats-url %s events tail

`, redactURL(natsURL), redactURL(dbURL), logID, c.Stream, d.srv.Addr(), redactURL(natsURL), redactURL(natsURL))
	ingestc, ist := watchComponent(d.srv, "ingest", svc, svc.Run)
	d.srv.AddCheck("ingest", ist.check)
	relayc, rst := watchComponent(d.srv, "relay", r, r.Run)
	d.srv.AddCheck("relay", relayReady(r, rst))
	err = d.run(ctx, g, c.Stream, ingestc, relayc, projectorComponent(d.srv, w, tap))
	log.Info("stopped")
	return err
}
