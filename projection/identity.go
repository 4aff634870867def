package projection

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
)

// identity is what a projection is built from: one log, partitioned into
// parts partitions.
type identity struct {
	logID string
	parts int
}

// sampleSize bounds the stream messages read to check the identity.
const sampleSize = 32

// errNoEvents: the identity cannot be told yet, the stream holds no event.
var errNoEvents = errors.New("projection: the stream holds no event yet")

// identify returns the projection's identity: the one recorded at its
// first start, checked against the configuration, the stream and the log
// source; at the first start, the configured one or the one the stream's
// events tell, which it records. It waits while the stream does not exist
// or holds no event and nothing is configured.
func (r *Runner) identify(ctx context.Context) (identity, error) {
	logged := false
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		id, err := r.tryIdentify(ctx)
		if !errors.Is(err, jetstream.ErrStreamNotFound) && !errors.Is(err, errNoEvents) {
			return id, err
		}
		if !logged {
			r.log.Info("waiting for the events stream and its first event", zap.String("stream", r.cfg.Stream), zap.Error(err))
			logged = true
		}
		select {
		case <-ctx.Done():
			return identity{}, ctx.Err()
		case <-time.After(wait):
		}
	}
}

func (r *Runner) tryIdentify(ctx context.Context) (identity, error) {
	recorded, found, err := r.readMeta(ctx)
	if err != nil {
		return identity{}, err
	}
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return identity{}, fmt.Errorf("projection: stream %s: %w", r.cfg.Stream, err)
	}
	msgs, err := sample(ctx, s)
	if err != nil {
		return identity{}, err
	}
	id := recorded
	if !found {
		if id, err = r.firstIdentity(msgs); err != nil {
			return identity{}, err
		}
	} else if err := r.checkConfigured(recorded); err != nil {
		return identity{}, err
	}
	if err := checkSample(id, msgs); err != nil {
		return identity{}, err
	}
	if err := r.checkLogSource(ctx, id); err != nil {
		return identity{}, err
	}
	if !found {
		return r.record(ctx, id)
	}
	return id, nil
}

// checkConfigured compares the recorded identity with Config's.
func (r *Runner) checkConfigured(recorded identity) error {
	if r.cfg.LogID != "" && r.cfg.LogID != recorded.logID {
		return fmt.Errorf("%w: configured log %q, projection %s was built from log %q", ErrForeignLog, r.cfg.LogID, r.p.Name, recorded.logID)
	}
	if r.cfg.Partitions != 0 && r.cfg.Partitions != recorded.parts {
		return fmt.Errorf("%w: configured %d partitions, projection %s was built with %d", ErrPartitionsChanged, r.cfg.Partitions, r.p.Name, recorded.parts)
	}
	return nil
}

// firstIdentity is the identity of a projection's first start: Config's,
// else the one the stream's sampled events tell.
func (r *Runner) firstIdentity(msgs []wire.Message) (identity, error) {
	id := identity{logID: r.cfg.LogID, parts: r.cfg.Partitions}
	if id.logID == "" {
		logs := map[string]int{}
		for _, m := range msgs {
			logs[m.LogID]++
		}
		switch len(logs) {
		case 0:
			return identity{}, errNoEvents
		case 1:
			id.logID = slices.Collect(maps.Keys(logs))[0]
		default:
			return identity{}, fmt.Errorf("%w: the stream holds events of several logs %v; set Config.LogID", ErrForeignLog, logs)
		}
	}
	if id.parts == 0 {
		var ours []wire.Message
		for _, m := range msgs {
			if m.LogID == id.logID {
				ours = append(ours, m)
			}
		}
		if len(ours) == 0 {
			return identity{}, errNoEvents
		}
		cands := partitionCounts(ours)
		if len(cands) != 1 {
			return identity{}, fmt.Errorf("%w: %d sampled events fit %d partition counts (%v...); set Config.Partitions (artifactstore status shows it)",
				ErrPartitionsUnknown, len(ours), len(cands), cands[:min(len(cands), 5)])
		}
		id.parts = cands[0]
	}
	return id, nil
}

// partitionCounts returns every partition count 1..wire.MaxPartitions
// under which each message's partition is its subject id's. The true count
// is always among them; with a few dozen distinct subjects it is alone.
func partitionCounts(msgs []wire.Message) []int {
	var out []int
	for n := 1; n <= wire.MaxPartitions; n++ {
		if !slices.ContainsFunc(msgs, func(m wire.Message) bool { return wire.Partition(m.Event.SubjectID, n) != m.Partition }) {
			out = append(out, n)
		}
	}
	return out
}

// checkSample refuses a stream whose sampled events are mostly of another
// log, or mostly partitioned otherwise. A majority decides so that one
// stray message does not stop the runtime: consumed, it parks its
// partition with reason invalid.
func checkSample(id identity, msgs []wire.Message) error {
	var ours, fit int
	others := map[string]int{}
	for _, m := range msgs {
		if m.LogID != id.logID {
			others[m.LogID]++
			continue
		}
		ours++
		if wire.Partition(m.Event.SubjectID, id.parts) == m.Partition {
			fit++
		}
	}
	if 2*ours < len(msgs) {
		return fmt.Errorf("%w: %d of %d sampled events of the stream are from other logs %v, the projection's is %q (a stream rebuilt from another log: build the projection anew)",
			ErrForeignLog, len(msgs)-ours, len(msgs), others, id.logID)
	}
	if 2*fit < ours {
		return fmt.Errorf("%w: %d of %d sampled events of the stream are not in their partition among %d (a stream rebuilt with another partition count: build the projection anew)",
			ErrPartitionsChanged, ours-fit, ours, id.parts)
	}
	return nil
}

// checkLogSource checks that Config.Log is the projection's log.
func (r *Runner) checkLogSource(ctx context.Context, id identity) error {
	if r.cfg.Log == nil {
		return nil
	}
	logID, err := r.cfg.Log.LogID(ctx)
	if err != nil {
		return fmt.Errorf("projection: log source: %w", err)
	}
	if logID != id.logID {
		return fmt.Errorf("%w: the log source is log %q, the projection's is %q", ErrForeignLog, logID, id.logID)
	}
	parts, err := r.cfg.Log.Partitions(ctx)
	if err != nil {
		return fmt.Errorf("projection: log source: %w", err)
	}
	if parts != id.parts {
		return fmt.Errorf("%w: the log source has %d partitions, the projection %d", ErrPartitionsChanged, parts, id.parts)
	}
	return nil
}

// sample reads up to sampleSize messages spread evenly over the stream and
// returns those that decode (wire.Decode).
func sample(ctx context.Context, s jetstream.Stream) ([]wire.Message, error) {
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return nil, nil
	}
	var out []wire.Message
	seen := map[uint64]bool{}
	n := uint64(min(sampleSize, st.Msgs))
	for k := range n {
		seq := st.FirstSeq
		if n > 1 {
			seq += (st.LastSeq - st.FirstSeq) * k / (n - 1)
		}
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(wire.Subjects))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("projection: reading the stream: %w", err)
		}
		if seen[m.Sequence] {
			continue
		}
		seen[m.Sequence] = true
		if wm, err := wire.Decode(m.Subject, m.Header, m.Data); err == nil {
			out = append(out, wm)
		}
	}
	return out, nil
}

// readMeta reads the recorded identity.
func (r *Runner) readMeta(ctx context.Context) (identity, bool, error) {
	var id identity
	err := r.pool.QueryRow(ctx, `SELECT log_id, partitions FROM projection_meta WHERE projection = $1`, r.p.Name).Scan(&id.logID, &id.parts)
	if errors.Is(err, pgx.ErrNoRows) {
		return identity{}, false, nil
	}
	if err != nil {
		return identity{}, false, fmt.Errorf("projection: reading projection_meta: %w", err)
	}
	return id, true, nil
}

// record records the identity of a first start, or returns the one another
// instance recorded meanwhile if it is the same.
func (r *Runner) record(ctx context.Context, id identity) (identity, error) {
	_, err := r.pool.Exec(ctx, `INSERT INTO projection_meta (projection, log_id, partitions, stream) VALUES ($1, $2, $3, $4)
		ON CONFLICT (projection) DO NOTHING`, r.p.Name, id.logID, id.parts, r.cfg.Stream)
	if err != nil {
		return identity{}, fmt.Errorf("projection: recording the log id and partition count: %w", err)
	}
	got, _, err := r.readMeta(ctx)
	if err != nil {
		return identity{}, err
	}
	if got != id {
		return identity{}, fmt.Errorf("%w: another instance recorded log %q with %d partitions, this one found %q with %d",
			ErrForeignLog, got.logID, got.parts, id.logID, id.parts)
	}
	r.log.Info("recorded the projection's log and partition count", zap.String("log_id", id.logID), zap.Int("partitions", id.parts))
	return id, nil
}
