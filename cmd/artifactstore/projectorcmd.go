package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/projector"
)

// projectorFlags configure a projector worker (dev and projector).
type projectorFlags struct {
	Projection string        `env:"ARTIFACTSTORE_PROJECTION" default:"registry" help:"Projection name (checkpoints and consumers)."`
	Partitions int           `env:"ARTIFACTSTORE_PARTITIONS" default:"0" help:"Expected partition count; refuses to run if the log's differs (0: the log's)."`
	WorkerID   string        `name:"worker-id" env:"ARTIFACTSTORE_WORKER_ID" help:"This worker's id (default: host-pid-random)."`
	BatchSize  int           `name:"batch-size" env:"ARTIFACTSTORE_BATCH_SIZE" default:"500" help:"Most events applied per transaction."`
	LeaseTTL   time.Duration `name:"lease-ttl" env:"ARTIFACTSTORE_LEASE_TTL" default:"2s" help:"How long a partition lease lasts unrenewed: a dead worker's partitions move after at most this long."`
}

// config is the worker's configuration; its metrics go to srv through
// tap, which readiness reads the owned-partitions gauge from.
func (f projectorFlags) config(stream string, log *zap.Logger, srv *ops.Server, tap *ownedTap) projector.Config {
	tap.Registerer = srv.Registerer()
	return projector.Config{Projection: f.Projection, Partitions: f.Partitions, Stream: stream, WorkerID: f.WorkerID,
		BatchSize: f.BatchSize, LeaseTTL: f.LeaseTTL, Logger: log, Registerer: tap}
}

// projectorComponent runs w with its liveness watchdog (when w reports
// progress) and its readiness check.
func projectorComponent(srv *ops.Server, w *projector.Worker, tap *ownedTap) component {
	c, st := watchComponent(srv, "projector", w, w.Run)
	srv.AddCheck("projector", projectorReady(w, st, tap.ownedPartitions(w.ID())))
	return c
}

type projectorCmd struct {
	httpFlag
	projectorFlags
	Stream string `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream to consume."`
}

func (c projectorCmd) Run(ctx context.Context, g *globals) error {
	d, closeDeps, err := openDeps(ctx, g, g.databaseURL(), g.natsURL(), projectorAppName, c.listen(defaultProjectorHTTP))
	if err != nil {
		return err
	}
	defer closeDeps()
	tap := &ownedTap{}
	w, err := projector.New(d.db, d.js, c.config(c.Stream, g.log, d.srv, tap))
	if err != nil {
		return err
	}
	return d.run(ctx, g, c.Stream, projectorComponent(d.srv, w, tap))
}
