package projector

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestMembershipSurvivesNATSRestart: the nats-server goes away long enough
// for membership to lapse (every worker releases every partition), then
// comes back with its data. The workers must beat again, take their
// partitions back and apply new events — also when the members bucket was
// a memory-storage one (as older workers created it), which the restart
// loses.
func TestMembershipSurvivesNATSRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		legacy bool // the bucket exists with memory storage before the workers start
	}{
		{name: "bucket created by the workers"},
		{name: "memory bucket left by older workers", legacy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := setup(t)
			const n = 4
			if tc.legacy {
				_, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
					Bucket: DefaultMembersBucket, TTL: time.Second, History: 1, Storage: jetstream.MemoryStorage,
				})
				require.NoError(t, err)
			}
			ws := []*running{e.start(t, fastConfig("w1", n)), e.start(t, fastConfig("w2", n))}
			owned := func() (sum float64, each []float64) {
				for _, w := range ws {
					v := w.metric(t, "artifactstore_projector_owned_partitions", nil)
					sum += v
					each = append(each, v)
				}
				return sum, each
			}
			testenv.Eventually(t, 30*time.Second, func() bool { _, each := owned(); return each[0] == n/2 && each[1] == n/2 }, "the workers share the partitions")
			appendPackages(t, e.db, 0, 100)
			e.relay(t)
			want := expected(t, e.db, n)
			testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")

			// Down long enough for membership to lapse everywhere.
			e.srv.Shutdown()
			testenv.Eventually(t, 30*time.Second, func() bool { s, _ := owned(); return s == 0 }, "membership lapses while NATS is down")
			e.srv.Start()
			testenv.Eventually(t, 30*time.Second, func() bool {
				_, err := e.js.Stream(ctx, DefaultStream)
				return err == nil
			}, "JetStream is back")

			// Partitions are taken back and new events applied.
			shared := func() bool {
				_, each := owned()
				return each[0] == n/2 && each[1] == n/2
			}
			testenv.Eventually(t, 30*time.Second, shared, "the workers take their partitions back after the restart")
			appendPackages(t, e.db, 100, 200)
			e.relay(t)
			want = expected(t, e.db, n)
			testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "new events are applied after the restart")
			testenv.Eventually(t, 30*time.Second, shared, "both workers still share the partitions")
			for _, w := range ws {
				require.NoError(t, w.stop())
			}
			requireReplayEqual(t, e.db, n)
		})
	}
}
