// Command finalized-per-day is a downstream team's projection built on the
// artifactstore events stream alone: "packages finalized per actor per
// day", kept in the team's own PostgreSQL by package projection. Run any
// number of instances against one database; they share the stream's
// partitions.
//
//	go run ./examples/finalized-per-day --nats-url nats://127.0.0.1:4222 \
//		--database-url 'postgres://team@db:5432/team?search_path=downstream'
//
// It exits 0 on SIGINT/SIGTERM after finishing the batch in flight, 2 on a
// bad command line, 1 on any other error (another log's stream, a changed
// partition count, the database or NATS refusing it). --status prints the
// projection's checkpoints, lag and parked partitions as JSON and exits.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/projection"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the command line.
type options struct {
	natsURL, databaseURL, stream, logID, workerID, httpListen string
	partitions                                                int
	leaseTTL                                                  time.Duration
	status                                                    bool
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("finalized-per-day", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&o.databaseURL, "database-url", "", "the team's PostgreSQL (postgres://...; ?search_path=schema picks the schema) (required)")
	fs.StringVar(&o.stream, "stream", projection.DefaultStream, "events stream")
	fs.StringVar(&o.logID, "log-id", "", "the artifactstore log to follow (default: the stream's, recorded at the first start)")
	fs.IntVar(&o.partitions, "partitions", 0, "the log's partition count (artifactstore status shows it; default: learnt from the stream)")
	fs.StringVar(&o.workerID, "worker-id", "", "this instance's id (default: host-pid-random)")
	fs.StringVar(&o.httpListen, "http-listen", "", "serve /metrics and /healthz on this address (default: none)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", projection.DefaultLeaseTTL, "how long a dead instance keeps its partitions")
	fs.BoolVar(&o.status, "status", false, "print the projection's status as JSON and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.databaseURL == "" {
		return o, errors.New("--database-url is required")
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "finalized-per-day:", err)
		return 2
	}
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(stderr, "finalized-per-day:", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, o, stdout, log); err != nil {
		log.Error("finalized-per-day stopped", zap.Error(err))
		return 1
	}
	return 0
}

// serve connects to the team's database and NATS and runs the projection
// (or prints its status) until ctx ends.
func serve(ctx context.Context, o options, stdout io.Writer, log *zap.Logger) error {
	pc, err := pgxpool.ParseConfig(o.databaseURL)
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "finalized-per-day"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer pool.Close()
	nc, err := nats.Connect(o.natsURL, nats.Name("finalized-per-day"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connecting to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if o.status {
		st, err := projection.Inspect(ctx, pool, js, o.stream, Name)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	reg := prometheus.NewRegistry()
	r, err := projection.New(pool, js, Projection(), projection.Config{
		Stream: o.stream, LogID: o.logID, Partitions: o.partitions, WorkerID: o.workerID, LeaseTTL: o.leaseTTL,
		Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	var wg conc.WaitGroup
	defer wg.Wait()
	if o.httpListen != "" {
		stopHTTP, err := listen(o.httpListen, reg, r, log, &wg)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	return r.Run(ctx)
}

// listen serves /metrics and /healthz (200 while the instance renews its
// leases) on addr; the returned func shuts the server down.
func listen(addr string, reg *prometheus.Registry, r *projection.Runner, log *zap.Logger, wg *conc.WaitGroup) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Healthy() {
			http.Error(w, "not renewing its leases", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", zap.Error(err))
		}
	})
	log.Info("serving /metrics and /healthz", zap.String("addr", ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
