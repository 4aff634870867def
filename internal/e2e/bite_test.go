package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
)

// TestOraclesBite shows that each oracle reports what it must: after a
// clean run it injects, by hand, a duplicate of a stored event, a forged
// message, a deleted message, a corrupted view row and a phantom
// acknowledgement, a message in the wrong partition and one naming the
// wrong predecessor, and checks the exact counts reported.
func TestOraclesBite(t *testing.T) {
	if os.Getenv(EnvChaos) == "off" {
		t.Skipf("%s=off", EnvChaos)
	}
	pg := newPG(t)
	// The relay accepts a stream that allows deletes: the test deletes a
	// message (the stream denies it otherwise).
	e := startEnv(t, pg, "bite", envOptions{ingest: 1, relays: 1, projectors: 1, allowStreamDeletes: true})
	l := newLoad(t, e, loadOptions{clients: 4, packages: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l.run(make(chan struct{}), ctx)
	nc, js := e.connect(t)
	defer nc.Close()
	require.NoError(t, awaitCaughtUp(ctx, e, js))

	log, err := readLog(ctx, e.db)
	require.NoError(t, err)
	require.Len(t, log, 80)
	logID, err := e.db.LogID(ctx)
	require.NoError(t, err)
	ops := l.snapshot()
	msgs, err := readStream(ctx, js, relay.DefaultStream)
	require.NoError(t, err)
	clean := []verdict{checkAcks(ops, log), checkStream(msgs, log, logID, e.parts)}
	for _, v := range clean {
		require.True(t, v.ok(), "a clean run passes: %s", v)
	}

	// Faults: the relay and projector are stopped so that only the
	// injected messages change the stream.
	require.NoError(t, e.relays[0].kill())
	require.NoError(t, e.projectors[0].stop(20*time.Second))
	s, err := js.Stream(ctx, relay.DefaultStream)
	require.NoError(t, err)

	previous := partitionPrevious(log, e.parts)
	encode := func(i int) wire.Message {
		ev := log[i]
		return wire.Message{Event: ev, LogID: logID, Partition: wire.Partition(ev.SubjectID, e.parts), Previous: previous[ev.Sequence]}
	}
	// 1. Duplicate: event 1's message again, once the 1s duplicate window
	//    has passed (the server drops it as a duplicate until then).
	awaitStored(t, js, wire.Encode(encode(0), 0))
	// 2. Forged: event 2's message with a changed body (digest mismatch).
	forged := wire.Encode(encode(1), 0)
	forged.Data = append([]byte(nil), forged.Data...)
	forged.Data[len(forged.Data)-2] ^= 1
	awaitStored(t, js, forged)
	// 3. Lost: delete event 3's message.
	require.NoError(t, s.DeleteMsg(ctx, 3))
	// 4. Misrouted: event 4's message in the next partition (subject token
	//    and header agree, so it decodes; the subject id says otherwise).
	misrouted := encode(3)
	misrouted.Partition = (misrouted.Partition + 1) % e.parts
	awaitStored(t, js, wire.Encode(misrouted, 0))
	// 5. Wrong predecessor: event 5's message naming another previous
	//    event of its partition.
	wrongPrev := encode(4)
	if wrongPrev.Previous == 0 {
		wrongPrev.Previous = wrongPrev.Event.Sequence - 1
	} else {
		wrongPrev.Previous = 0
	}
	awaitStored(t, js, wire.Encode(wrongPrev, 0))

	msgs, err = readStream(ctx, js, relay.DefaultStream)
	require.NoError(t, err)
	o1 := checkStream(msgs, log, logID, e.parts)
	t.Logf("O1 after injecting a duplicate, a forged message, a deletion, a misrouted message and a wrong predecessor:\n%s", o1)
	require.Equal(t, 1, o1.Duplicated)
	require.Equal(t, 3, o1.Unexpected)
	require.Equal(t, 1, o1.Lost)
	notes := strings.Join(o1.Notes, "\n")
	require.Contains(t, notes, fmt.Sprintf("event %d in partition %d", misrouted.Event.Sequence, misrouted.Partition))
	require.Contains(t, notes, fmt.Sprintf("event %d names %d as its partition's previous event", wrongPrev.Event.Sequence, wrongPrev.Previous))

	// O2: change one view row behind the projectors' back.
	conn, err := pgx.Connect(ctx, e.dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "UPDATE artifact_packages SET status = 'open', finalized_at = NULL, manifest_digest = NULL WHERE package_id = $1", log[len(log)-1].SubjectID)
	require.NoError(t, err)
	o2, err := checkViews(ctx, e.db, e.parts)
	require.NoError(t, err)
	t.Logf("O2 after corrupting one view row:\n%s", o2)
	require.Equal(t, 1, o2.Lost)
	require.Equal(t, 1, o2.Unexpected)

	// Acks: a reply for a sequence the log does not hold.
	phantom := *ops[0]
	phantom.reply.Sequence = 1_000_000
	acks := checkAcks(append(ops, &phantom), log)
	t.Logf("acks with a phantom acknowledgement:\n%s", acks)
	require.Equal(t, 1, acks.Lost)
}

// awaitStored publishes m until the stream stores it rather than
// dropping it as a duplicate (the duplicate window is 1s).
func awaitStored(t *testing.T, js jetstream.JetStream, m *nats.Msg) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ack, err := js.PublishMsg(ctx, m)
		cancel()
		require.NoError(t, err)
		if !ack.Duplicate {
			return
		}
		require.True(t, time.Now().Before(deadline), "the duplicate window did not pass within 30s")
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// brokenRelays are deliberately broken builds of the relay: a patch of
// relay/relay.go applied to a copy of the module.
var brokenRelays = []struct {
	name, old, new string
	// want names the verdict field that must be non-zero.
	want string
}{
	{
		// Resumes 20 events behind what the stream holds: after an outage
		// longer than the duplicate window, events are published twice.
		name: "resume-behind",
		old:  "wg.Go(func() { r.fetch(fctx, pos.Sequence, batches) })",
		new:  "wg.Go(func() { r.fetch(fctx, max(0, pos.Sequence-20), batches) })",
		want: "duplicated",
	},
	{
		// Advances its position past an event whose publish was never
		// acknowledged (it starts after the next event): events are lost.
		name: "skip-unacked",
		old:  "wg.Go(func() { r.fetch(fctx, pos.Sequence, batches) })",
		new:  "wg.Go(func() { r.fetch(fctx, pos.Sequence+1, batches) })",
		want: "lost",
	},
}

// TestChaosCatchesBrokenRelay builds each broken relay and runs the
// relay-outage scenario against it; the test passes when the oracles
// report the failure. It runs in the long mode (make chaos) only.
func TestChaosCatchesBrokenRelay(t *testing.T) {
	mode := currentMode(t)
	if mode.name != "long" {
		t.Skipf("long mode only (%s=long)", EnvChaos)
	}
	mode.load, mode.catchUp = 12*time.Second, 40*time.Second
	pg := newPG(t)
	for i, b := range brokenRelays {
		t.Run(b.name, func(t *testing.T) {
			bin := buildPatched(t, "relay/relay.go", b.old, b.new)
			r := runScenario(t, pg, fmt.Sprintf("broken%d", i), scenario{name: "relay-outage/" + b.name,
				faults: []fault{relayOutage}}, mode, envOptions{binary: bin})
			logResult(t, r)
			var n int
			for _, v := range r.verdicts {
				switch b.want {
				case "duplicated":
					n += v.Duplicated
				case "lost":
					n += v.Lost
				}
			}
			if n == 0 {
				t.Fatalf("the oracles did not catch the broken relay %s (want %s > 0)", b.name, b.want)
			}
			t.Logf("caught: broken relay %s: %s = %d (error: %v)", b.name, b.want, n, r.err)
		})
	}
}

// buildPatched copies the module's tracked files, replaces old with new in
// file, and builds the binary.
func buildPatched(t *testing.T, file, old, new string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("git", "-C", moduleRoot, "ls-files").Output()
	require.NoError(t, err)
	for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		b, err := os.ReadFile(filepath.Join(moduleRoot, f))
		if os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
	}
	path := filepath.Join(dir, file)
	src, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(string(src), old), "the patch site in %s", file)
	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(src), old, new, 1)), 0o644))
	bin := filepath.Join(dir, "artifactstore-broken")
	require.NoError(t, goBuild(dir, bin, "./cmd/artifactstore"))
	return bin
}
