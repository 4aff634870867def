// Command projectord runs one projector worker exactly as `artifactstore
// projector` is meant to (projector.New on PostgreSQL and JetStream, an ops
// server with /readyz). The e2e suite uses it only while the binary does not
// offer the projector subcommand: cmd/artifactstore defines projectorCmd but
// does not register it in the CLI.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc/pool"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/store/postgres"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "projectord:", err)
		os.Exit(1)
	}
}

func run() error {
	var args []string
	for _, a := range os.Args[1:] {
		if a != "projector" {
			args = append(args, a)
		}
	}
	fs := flag.NewFlagSet("projectord", flag.ContinueOnError)
	fs.String("log-format", "json", "ignored (always json)")
	level := fs.String("log-level", "info", "log level")
	listen := fs.String("http-listen", "", "ops listener")
	partitions := fs.Int("partitions", projector.DefaultPartitions, "partitions")
	ackWait := fs.Duration("ack-wait", projector.DefaultAckWait, "ack wait")
	batch := fs.Int("batch-size", projector.DefaultBatchSize, "batch size")
	worker := fs.String("worker-id", "", "worker id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := zap.NewProductionConfig()
	if err := cfg.Level.UnmarshalText([]byte(*level)); err != nil {
		return err
	}
	cfg.Sampling = nil
	log, err := cfg.Build()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := postgres.Open(ctx, postgres.Config{URL: os.Getenv("ARTIFACTSTORE_DATABASE_URL"), Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()
	nc, err := nats.Connect(os.Getenv("ARTIFACTSTORE_NATS_URL"), nats.Name("artifactstore-projector"),
		nats.Timeout(5*time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	srv := ops.New(*listen, log)
	srv.AddCheck("database", func(ctx context.Context) error { _, err := db.Head(ctx); return err })
	srv.AddCheck("nats", func(ctx context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("not connected (%s)", nc.Status())
		}
		return nc.FlushWithContext(ctx)
	})
	w, err := projector.New(db, js, projector.Config{Partitions: *partitions, WorkerID: *worker, BatchSize: *batch,
		AckWait: *ackWait, Logger: log, Registerer: srv.Registerer()})
	if err != nil {
		return err
	}
	l, err := srv.Listen()
	if err != nil {
		return err
	}
	p := pool.New().WithContext(ctx).WithCancelOnError().WithFirstError()
	p.Go(func(ctx context.Context) error { return srv.Serve(ctx, l) })
	p.Go(func(ctx context.Context) error {
		if err := w.Run(ctx); err != nil {
			return err
		}
		if ctx.Err() == nil {
			return fmt.Errorf("projector stopped unexpectedly")
		}
		return nil
	})
	return p.Wait()
}
