package projection_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestHostileMessagesPark: messages that are not events of the log get
// into the stream (published by someone other than the relay): one with
// no headers, one whose body does not match its digest, one from another
// log, one in a partition that is not its subject's. Each parks its
// partition with reason invalid and an error naming what is wrong; nothing
// of it is applied and its partition's checkpoint stays before it, while
// the other partitions go on. Once the messages are removed from the
// stream the partitions resume after their retry and apply what followed.
func TestHostileMessagesPark(t *testing.T) {
	t.Parallel()
	e := setup(t)
	stopRelay := e.startRelay(t, nil)
	p := counting("counting", nil)
	e.appendPackages(t, 100)
	in := e.start(t, p, fastConfig(t, "w1"))
	published := e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	before := checkpoints(t, e.pool, p.Name)
	// The relay stops: it fences its publishes on the stream's last message,
	// and these messages are not its. What follows them is published as it
	// would publish it.
	stopRelay()

	ctx := context.Background()
	hostile := map[int]string{} // partition → what the error must say
	var seqs []uint64
	publish := func(part int, m *nats.Msg, says string) {
		ack, err := e.js.PublishMsg(ctx, m)
		require.NoError(t, err)
		hostile[part] = says
		seqs = append(seqs, ack.Sequence)
	}
	// 1: no headers at all, on partition 1's subject.
	publish(1, &nats.Msg{Subject: fmt.Sprintf("%sv1.package.created.evil.%d", wire.SubjectPrefix, 1), Data: []byte(`{}`)},
		"header Nats-Msg-Id appears 0 times")
	// 2: a body that does not match its digest.
	m := fabricate(t, e.logID, e.parts, 2, 1_000_000_002)
	m.Data = []byte(`{"package_id":"forged"}`)
	publish(2, m, "does not match the body")
	// 3: an event of another log.
	publish(3, fabricate(t, "0therlog", e.parts, 3, 1_000_000_003), `is from log "0therlog"`)
	// 4: an event whose subject is in partition 5, published as partition 4.
	forged := fabricate(t, e.logID, e.parts, 5, 1_000_000_004)
	ev, err := wire.Decode(forged.Subject, forged.Header, forged.Data)
	require.NoError(t, err)
	publish(4, wire.Encode(wire.Message{Event: ev.Event, LogID: e.logID, Partition: 4}, 0), "the log's 16 partitions put it in 5")

	e.appendPackages(t, 100)
	e.publishAfter(t, published)
	last := e.lastPerPartition(t)
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := projection.Inspect(ctx, e.pool, nil, "", p.Name)
		require.NoError(t, err)
		cps := checkpoints(t, e.pool, p.Name)
		for q, seq := range last {
			if _, bad := hostile[q]; !bad && cps[q] < seq {
				return false
			}
		}
		return st.Parked == len(hostile)
	}, "the hostile messages' partitions park, the others catch up")
	st, err := projection.Inspect(ctx, e.pool, nil, "", p.Name)
	require.NoError(t, err)
	for part, says := range hostile {
		parked := st.Partitions[part].Parked
		require.NotNil(t, parked, "partition %d", part)
		require.Equal(t, projection.ReasonInvalid, parked.Reason, "partition %d", part)
		require.Contains(t, parked.Error, "projection: invalid stream message")
		require.Contains(t, parked.Error, says, "partition %d", part)
		require.Equal(t, before[part], st.Partitions[part].Checkpoint, "partition %d's checkpoint stays before the message", part)
	}
	require.Equal(t, float64(len(hostile)), in.metric(t, "artifactstore_projection_parked", nil))
	var forgedRows int
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM subjects WHERE subject_id NOT LIKE 'pkg-%' OR last_sequence > 1000000`).Scan(&forgedRows))
	require.Zero(t, forgedRows, "nothing of a hostile message is applied")

	s, err := e.js.Stream(ctx, wire.StreamName)
	require.NoError(t, err)
	for _, seq := range seqs {
		require.NoError(t, s.DeleteMsg(ctx, seq))
	}
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool {
		st, err := projection.Inspect(ctx, e.pool, nil, "", p.Name)
		require.NoError(t, err)
		return st.Parked == 0
	}, "the partitions resume once the messages are gone")
	require.NoError(t, in.stop())
	e.requireReplayEqual(t, p)
}

// fabricate returns a well-formed message of log logID for a subject in
// partition part, with log sequence seq (far above the log's).
func fabricate(t testing.TB, logID string, parts, part int, seq int64) *nats.Msg {
	t.Helper()
	var id string
	for i := 0; ; i++ {
		if id = fmt.Sprintf("evil-%d", i); wire.Partition(id, parts) == part {
			break
		}
	}
	ev := storetest.Created(t, id, "evil", "6.6.6", "mallory")
	ev.Sequence, ev.CreatedAt = seq, time.Now().UTC()
	return wire.Encode(wire.Message{Event: ev, LogID: logID, Partition: part}, 0)
}

// TestPoisonParksAndRetries: a handler that keeps failing on one event
// parks its partition after MaxAttempts, with the events before it
// applied and none after; the other partitions go on. Once the handler
// works again the partition resumes at its next retry.
func TestPoisonParksAndRetries(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	var broken atomic.Bool
	broken.Store(true)
	poison := storetest.PackageID(30)
	p := counting("counting", func(ev projection.Event) error {
		if broken.Load() && ev.SubjectID == poison && ev.Type == store.TypePackageCreated {
			return fmt.Errorf("cannot handle %s", poison)
		}
		return nil
	})
	evs := e.appendPackages(t, 200)
	var bad store.Event
	for _, ev := range evs {
		if ev.SubjectID == poison {
			bad = ev
			break
		}
	}
	part := wire.Partition(poison, e.parts)
	var beforeBad int64 // the partition's last event before the poison
	for _, ev := range evs {
		if ev.Sequence < bad.Sequence && wire.Partition(ev.SubjectID, e.parts) == part {
			beforeBad = ev.Sequence
		}
	}
	in := e.start(t, p, fastConfig(t, "w1"))
	e.awaitPublished(t)
	last := e.lastPerPartition(t)
	testenv.Eventually(t, 30*time.Second, func() bool {
		cps := checkpoints(t, e.pool, p.Name)
		for q, seq := range last {
			if q != part && cps[q] < seq {
				return false
			}
		}
		return in.metric(t, "artifactstore_projection_parked", nil) == 1
	}, "partition %d parks, the others catch up", part)
	st, err := projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
	require.NoError(t, err)
	parked := st.Partitions[part].Parked
	require.NotNil(t, parked)
	require.Equal(t, projection.ReasonPoison, parked.Reason)
	require.Equal(t, bad.Sequence, parked.Sequence)
	require.GreaterOrEqual(t, parked.Attempts, 3, "MaxAttempts")
	require.Contains(t, parked.Error, "cannot handle "+poison)
	require.Equal(t, beforeBad, st.Partitions[part].Checkpoint, "applied up to the event before the poison, none after")
	require.GreaterOrEqual(t, in.metric(t, "artifactstore_projection_errors_total", map[string]string{"kind": "handler"}), 3.0)

	broken.Store(false)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	// The gauge is set once the resuming batch has committed, just after
	// the checkpoint moved.
	testenv.Eventually(t, 10*time.Second, func() bool { return in.metric(t, "artifactstore_projection_parked", nil) == 0 },
		"the parked gauge to go back to 0")
	require.NoError(t, in.stop())
	e.requireReplayEqual(t, p)
}
