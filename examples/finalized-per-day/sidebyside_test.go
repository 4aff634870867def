package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestSideBySideKilled: the registry's projector (two `artifactstore
// projector` processes on the log's database) and the example projection
// (two processes on the team's database) follow one stream while events
// keep coming; 20 times one of the four, picked at random, is SIGKILLed
// and started again (under a new worker id: its leases must expire). At the end each
// equals its own replay: the registry views a replay --reset of the log,
// the example's table a replay of the stream (and the log's counts).
func TestSideBySideKilled(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	tm := newTeam(t)
	registryEnv := []string{"ARTIFACTSTORE_DATABASE_URL=" + w.logURL, "ARTIFACTSTORE_NATS_URL=" + w.ns.URL()}
	starts := map[string]int{}
	var procs []*proc
	launch := func(p *proc) {
		starts[p.name]++
		args := p.args
		p.args = append(append([]string(nil), args...), fmt.Sprintf("%s-%d", p.name, starts[p.name]))
		p.start(t)
		p.args = args
	}
	for i := range 2 {
		p := newProc(t, fmt.Sprintf("registry-%d", i), artifactstoreBin, registryEnv,
			"--log-format", "json", "projector", "--http-listen", "", "--lease-ttl", "1s", "--partitions", fmt.Sprint(w.parts), "--worker-id")
		procs = append(procs, p)
	}
	for i := range 2 {
		p := newProc(t, fmt.Sprintf("example-%d", i), exampleBin, nil,
			"--nats-url", w.ns.URL(), "--database-url", tm.url, "--lease-ttl", "1s", "--worker-id")
		procs = append(procs, p)
	}
	for _, p := range procs {
		launch(p)
	}

	// 40 chunks of 50 packages, 100-300 ms apart; after every other chunk
	// one of the four processes, picked at random, is killed and started
	// again.
	kills := map[string]int{}
	for chunk := range 40 {
		w.appendPackages(t, 50)
		time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond) // the load's pace and the fault's timing
		if chunk%2 == 1 {
			p := procs[rand.IntN(len(procs))]
			p.kill()
			kills[p.name[:len(p.name)-2]]++
			launch(p)
		}
	}
	require.Positive(t, kills["registry"], "registry projectors killed")
	require.Positive(t, kills["example"], "example instances killed")
	t.Logf("kills: %v", kills)

	want := w.lastPerPartition(t)
	testenv.Eventually(t, 90*time.Second, func() bool {
		cps, err := w.log.Checkpoints(context.Background())
		require.NoError(t, err)
		reg := map[int]int64{}
		for _, c := range cps {
			if c.Projection == "registry" {
				reg[c.Partition] = c.Sequence
			}
		}
		return caughtUp(reg, want) && caughtUp(tm.checkpoints(t), want)
	}, "both projections catch up with the log")
	for _, p := range procs {
		require.True(t, p.running(), "%s is still running:\n%s", p.name, p.tail(20))
		require.NoError(t, p.signal(syscall.SIGTERM), "%s stops cleanly", p.name)
	}
	requireRegistryReplayEqual(t, w.log)
	tm.requireReplayEqual(t, w)
}

// requireRegistryReplayEqual checks the registry views against a replay
// --reset of the same log, byte for byte, with nothing parked.
func requireRegistryReplayEqual(t testing.TB, db store.DB) {
	t.Helper()
	ctx := context.Background()
	parked, err := db.Parked(ctx)
	require.NoError(t, err)
	require.Empty(t, parked)
	projected, err := db.DumpViews(ctx)
	require.NoError(t, err)
	parts, err := db.Partitions(ctx)
	require.NoError(t, err)
	_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: parts})
	require.NoError(t, err)
	replayed, err := db.DumpViews(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, replayed)
	require.Equal(t, replayed, projected, "registry views differ from replay --reset")
}
