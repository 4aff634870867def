package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
)

// running is one component started with watchComponent.
type running struct {
	srv    *ops.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func runWatched(t *testing.T, srv *ops.Server, c component) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); _ = c.run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

func ready(srv *ops.Server) bool {
	_, ok := srv.Ready(context.Background())
	return ok
}

func testJS(t *testing.T, url string) jetstream.JetStream {
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// TestRelayReadiness: two relays on one log are both ready, one active and
// one standing by; neither is before Run; a stopped one is not, and the
// standby that took over is.
func TestRelayReadiness(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	ns := testenv.NATS(t)
	var srvs [2]*ops.Server
	var relays [2]*relay.Relay
	var comps [2]component
	for i := range relays {
		db := testenv.OpenPostgres(t, url, schema)
		srvs[i] = ops.New("", nil)
		r, err := relay.New(db, testJS(t, ns.URL()), relay.Config{Registerer: srvs[i].Registerer(), LockRetryInterval: 100 * time.Millisecond})
		require.NoError(t, err)
		relays[i] = r
		c, st := watchComponent(srvs[i], "relay", r, r.Run)
		srvs[i].AddCheck("relay", relayReady(r, st))
		comps[i] = c
		require.False(t, ready(srvs[i]), "relay %d ready before Run", i)
	}
	runs := [2]*running{runWatched(t, srvs[0], comps[0]), runWatched(t, srvs[1], comps[1])}
	testenv.Eventually(t, 30*time.Second, func() bool {
		return ready(srvs[0]) && ready(srvs[1]) && relays[0].Active() != relays[1].Active()
	}, "one active relay and one standby, both ready")
	active := 0
	if relays[1].Active() {
		active = 1
	}
	runs[active].stop()
	require.False(t, ready(srvs[active]), "a stopped relay is ready")
	testenv.Eventually(t, 30*time.Second, func() bool { return relays[1-active].Active() && ready(srvs[1-active]) },
		"the standby to take over and stay ready")
}

// TestProjectorReadiness: a projector worker is not ready before Run nor
// after it stops, and is once it holds its partitions.
func TestProjectorReadiness(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	ns := testenv.NATS(t)
	db := testenv.OpenPostgres(t, url, schema)
	_, err := relay.EnsureStream(context.Background(), testJS(t, ns.URL()), relay.Config{Stream: relay.DefaultStream})
	require.NoError(t, err)
	srv := ops.New("", nil)
	tap := &ownedTap{Registerer: srv.Registerer()}
	w, err := projector.New(db, testJS(t, ns.URL()), projector.Config{Registerer: tap, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	c := projectorComponent(srv, w, tap)
	require.False(t, ready(srv), "ready before Run")
	run := runWatched(t, srv, c)
	testenv.Eventually(t, 30*time.Second, func() bool { return ready(srv) }, "the worker to become ready")
	require.True(t, w.Healthy(), "ready because its lease renewals succeed")
	// Readiness follows the renewal, which comes just before the worker
	// starts the partitions it claimed.
	testenv.Eventually(t, 10*time.Second, func() bool { return tap.ownedPartitions(w.ID())() >= 1 }, "the worker to hold partitions")
	run.stop()
	results, ok := srv.Ready(context.Background())
	require.False(t, ok, "ready after it stopped: %+v", results)
}

// TestStatusPageLiveness: the status page's sampling loop feeds its
// watchdog; /healthz lists it and passes while it samples.
func TestStatusPageLiveness(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	db := testenv.Postgres(t)
	srv := ops.New("", nil)
	page := newStatusPage(db, testJS(t, ns.URL()), relay.DefaultStream, testenv.Logger(t))
	c, _ := watchComponent(srv, "status-page", page, page.run)
	results, _ := srv.Live()
	require.Len(t, results, 1)
	require.Equal(t, "status-page", results[0].Name)
	start := time.Now()
	runWatched(t, srv, c)
	testenv.Eventually(t, 30*time.Second, func() bool { return page.LastProgress().After(start) }, "a sample")
	_, ok := srv.Live()
	require.True(t, ok)
}
