package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/store"
)

// projectorFlags configure a projector worker (dev and projector).
type projectorFlags struct {
	Projection string        `env:"ARTIFACTSTORE_PROJECTION" default:"registry" help:"Projection name (checkpoints and consumers)."`
	Partitions int           `env:"ARTIFACTSTORE_PARTITIONS" default:"8" help:"Partitions; every worker of a projection must use the same number."`
	WorkerID   string        `name:"worker-id" env:"ARTIFACTSTORE_WORKER_ID" help:"This worker's id (default: host-pid-random)."`
	BatchSize  int           `name:"batch-size" env:"ARTIFACTSTORE_BATCH_SIZE" default:"500" help:"Most events applied per transaction."`
	AckWait    time.Duration `name:"ack-wait" env:"ARTIFACTSTORE_ACK_WAIT" default:"30s" help:"Partition consumers' ack wait."`
}

func (f projectorFlags) config(stream string, log *zap.Logger, srv *ops.Server) projector.Config {
	return projector.Config{Projection: f.Projection, Partitions: f.Partitions, Stream: stream, WorkerID: f.WorkerID,
		BatchSize: f.BatchSize, AckWait: f.AckWait, Logger: log, Registerer: srv.Registerer()}
}

type projectorCmd struct {
	httpFlag
	projectorFlags
	Stream string `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream to consume."`
}

func (c projectorCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	nc, err := connectNATS(ctx, g, g.natsURL(), "artifactstore-projector")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	srv := ops.New(c.HTTPListen, g.log)
	srv.AddCheck("database", dbCheck(db))
	srv.AddCheck("nats", natsCheck(nc))
	w, err := projector.New(db, js, c.config(c.Stream, g.log, srv))
	if err != nil {
		return err
	}
	httpc, err := opsComponent(srv)
	if err != nil {
		return err
	}
	page, err := statusPageComponent(srv, db, nc, c.Stream, g.log)
	if err != nil {
		return err
	}
	return runComponents(ctx, g.log, httpc, page, component{"projector", w.Run})
}

// projectorComponent builds the projector dev runs.
func projectorComponent(db store.DB, js jetstream.JetStream, f projectorFlags, stream string, log *zap.Logger, srv *ops.Server) (component, error) {
	w, err := projector.New(db, js, f.config(stream, log, srv))
	if err != nil {
		return component{}, err
	}
	return component{"projector", w.Run}, nil
}
