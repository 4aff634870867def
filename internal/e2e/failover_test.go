package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestProjectorKilledForGood SIGKILLs one of three projectors for good
// under a paced load of 300 commands/s (creates and finalizes) and
// asserts that no command issued after the kill waits more than 5s from
// its reply to its view: the dead worker's leases expire (2s) and the
// others take its partitions.
func TestProjectorKilledForGood(t *testing.T) {
	skipIfOff(t)
	pg := newPG(t)
	e := startEnv(t, pg, "killed", envOptions{ingest: 1, relays: 1, projectors: 3})
	waitAssigned(t, e)
	w := newViewWatch(t, e)
	l := newLoad(t, e, loadOptions{clients: 16, rate: 300, attemptTimeout: 3 * time.Second})
	l.onAck = w.add
	stop := runLoad(t, l)

	sleepCtx(context.Background(), 4*time.Second) // load before the kill
	victim := e.projectors[1]
	killedAt := time.Now()
	require.NoError(t, victim.kill())
	t.Logf("SIGKILLed %s for good at %s", victim.name, killedAt.Format("15:04:05.000"))
	sleepCtx(context.Background(), 12*time.Second) // load after the kill
	stop()
	w.await(t, 30*time.Second)

	ops := l.snapshot()
	before := w.lags(ops, func(o *op) bool { return o.acked && o.ackedAt.Before(killedAt) })
	after := w.lags(ops, func(o *op) bool { return o.acked && !o.sent.Before(killedAt) })
	t.Logf("reply→view before the kill: %d commands, p50 %.1fms p99 %.1fms max %.1fms",
		len(before), ms(percentile(before, 0.5)), ms(percentile(before, 0.99)), ms(percentile(before, 1)))
	t.Logf("reply→view of the commands issued after the kill: %d commands, p50 %.1fms p99 %.1fms max %.1fms",
		len(after), ms(percentile(after, 0.5)), ms(percentile(after, 0.99)), ms(percentile(after, 1)))
	require.Greater(t, len(after), 2500, "commands issued in the 12s after the kill at 300/s")
	require.LessOrEqual(t, percentile(after, 1), 5*time.Second, "no command's reply→view lag above 5s after the kill")
	require.Zero(t, leaseHolders(t, e)["projector-2"], "the dead worker holds no lease")
	requireVerdicts(t, e, ops, 90*time.Second)
}

// TestProjectorJoinsUnderLoad starts a third projector while two apply a
// paced load and asserts that it holds partitions within 3s of its
// process starting (the projector_leases table, then its own
// artifactstore_projector_owned_partitions), and that the views equal a
// replay at the end.
func TestProjectorJoinsUnderLoad(t *testing.T) {
	skipIfOff(t)
	pg := newPG(t)
	e := startEnv(t, pg, "join", envOptions{ingest: 1, relays: 1, projectors: 2})
	waitAssigned(t, e)
	l := newLoad(t, e, loadOptions{clients: 16, rate: 300, attemptTimeout: 3 * time.Second})
	stop := runLoad(t, l)
	sleepCtx(context.Background(), 3*time.Second) // load before the join

	joiner := e.joinProjector()
	started := time.Now()
	require.NoError(t, joiner.start())
	var first, share time.Duration
	fair := e.parts / 3
	for deadline := started.Add(10 * time.Second); time.Now().Before(deadline) && share == 0; {
		n := leaseHolders(t, e)["projector-3"]
		if n > 0 && first == 0 {
			first = time.Since(started)
		}
		if n >= fair {
			share = time.Since(started)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	t.Logf("projector-3: first lease %s after its process started, %d of %d partitions (its share) after %s",
		first.Round(time.Millisecond), fair, e.parts, share.Round(time.Millisecond))
	require.NotZero(t, first, "the joining projector took no partition within 10s")
	require.LessOrEqual(t, first, 3*time.Second, "the joining projector holds partitions within 3s")
	require.NotZero(t, share, "the joining projector took its share (%d) within 10s", fair)
	require.NoError(t, joiner.waitReady(30*time.Second))
	owned, err := joiner.metric("artifactstore_projector_owned_partitions")
	require.NoError(t, err)
	require.Greater(t, owned, 0.0, "its metric shows the partitions it owns")

	sleepCtx(context.Background(), 5*time.Second) // load after the join
	stop()
	requireVerdicts(t, e, l.snapshot(), 90*time.Second)
}

// TestProjectorsSurviveRestartsAndPauses runs three projectors under load
// through a nats-server restart, a PostgreSQL restart (the suite's own
// throwaway cluster, stopped with pg_ctl -m fast and started again) and
// a SIGSTOP of one projector for three lease TTLs (its partitions must
// move to the others meanwhile), then asserts that nothing is parked and
// the views equal a replay.
func TestProjectorsSurviveRestartsAndPauses(t *testing.T) {
	skipIfOff(t)
	pg := newPG(t)
	e := startEnv(t, pg, "restarts", envOptions{projectors: 3})
	waitAssigned(t, e)
	l := newLoad(t, e, loadOptions{clients: 8, rate: 250, attemptTimeout: 3 * time.Second})
	stop := runLoad(t, l)
	pause := func() { sleepCtx(context.Background(), 2*time.Second) } // load between faults

	pause()
	n := e.nats[0]
	require.NoError(t, n.kill())
	sleepCtx(context.Background(), time.Second) // NATS down
	n.setWant(true)
	require.NoError(t, n.waitReady(60*time.Second))
	t.Logf("nats-server restarted (down 1s)")

	pause()
	require.NoError(t, e.pg.restart(time.Second))
	t.Logf("PostgreSQL restarted (down 1s)")

	pause()
	victim := e.projectors[0]
	const ttl = 2 * time.Second // the projectors' default lease TTL
	victim.pause()
	paused := time.Now()
	var moved time.Duration
	for time.Since(paused) < 3*ttl {
		hs := leaseHolders(t, e)
		total := 0
		for _, c := range hs {
			total += c
		}
		if moved == 0 && hs[victim.name] == 0 && total == e.parts {
			moved = time.Since(paused)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	victim.resume()
	t.Logf("%s SIGSTOPped for %s; its partitions were all held by the others after %s", victim.name, 3*ttl, moved.Round(time.Millisecond))
	require.NotZero(t, moved, "the paused projector's partitions moved to the others while it was stopped")
	testenv.Eventually(t, 15*time.Second, func() bool { return leaseHolders(t, e)[victim.name] > 0 },
		"%s to take partitions again after SIGCONT", victim.name)

	pause()
	stop()
	require.NoError(t, e.healAll(60*time.Second))
	t.Logf("services that exited unasked (restarted by the supervisor): %v", e.crashes())
	requireVerdicts(t, e, l.snapshot(), 90*time.Second)
}

// TestProjectorRefusesAnotherPartitionCount starts a projector that
// expects another partition count than the log's: the process must exit
// with an error naming both counts, having taken no lease.
func TestProjectorRefusesAnotherPartitionCount(t *testing.T) {
	skipIfOff(t)
	pg := newPG(t)
	e := startEnv(t, pg, "otherp", envOptions{ingest: 1, relays: 1, projectors: 1})
	other := e.parts / 2
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.opts.binary, "--log-format", "json", "projector", "--http-listen",
		fmt.Sprintf("127.0.0.1:%d", testenv.FreePort()), "--partitions", fmt.Sprint(other), "--worker-id", "projector-otherp")
	cmd.Env = append(os.Environ(), e.env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, ctx.Err(), "the projector exits by itself; output:\n%s", out)
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the projector exits with an error; output:\n%s", out)
	t.Logf("exit code %d; output:\n%s", exit.ExitCode(), out)
	require.Contains(t, string(out), fmt.Sprintf("configured %d, the log has %d", other, e.parts))
	require.Zero(t, leaseHolders(t, e)["projector-otherp"], "it took no lease")
}
