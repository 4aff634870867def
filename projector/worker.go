package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// JetStream is what the projector needs from a JetStream context;
// jetstream.JetStream implements it.
type JetStream interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	Consumer(ctx context.Context, stream string, name string) (jetstream.Consumer, error)
	CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
}

var _ JetStream = jetstream.JetStream(nil)

// Worker is one projector process's share of a projection: it registers as
// a member, consumes the partitions assigned to it and applies their events.
type Worker struct {
	db      store.DB
	js      JetStream
	cfg     Config
	log     *zap.Logger
	m       *metrics
	derived string
	keys    keyCache
	logID   string
}

// New returns a worker for db and js. It checks cfg (errors wrap
// ErrConfig) and registers the metrics with cfg.Registerer.
func New(db store.DB, js JetStream, cfg Config) (*Worker, error) {
	if db == nil || js == nil {
		return nil, fmt.Errorf("%w: nil database or JetStream", ErrConfig)
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("projector: registering metrics: %w", err)
	}
	return &Worker{
		db:      db,
		js:      js,
		cfg:     cfg,
		log:     cfg.Logger.Named("projector").With(zap.String("projection", cfg.Projection), zap.String("worker", cfg.WorkerID)),
		m:       m,
		derived: DerivedStream(cfg.Stream, cfg.Partitions),
	}, nil
}

// ID returns the worker id.
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Run registers the worker, consumes its partitions and applies their
// events until ctx ends. It first checks its dependencies: the database
// (log id, checkpoints of a matching partition count, else
// ErrPartitionsChanged) and JetStream; it waits for the public stream to
// exist, then creates (or updates) the derived partitioned stream, the
// partition consumers and the members bucket. When ctx ends (or a
// rebalance moves a partition away) it pulls no more, finishes the fetch
// in flight — applying and acking every message delivered to it — and
// unpins, within ShutdownTimeout; then it leaves the group and returns
// nil. A lost NATS connection (closed) returns its error.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	kv, err := w.membersBucket(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("projector: members bucket: %w", err)
	}
	w.log.Info("projector started", zap.Int("partitions", w.cfg.Partitions), zap.String("stream", w.derived))

	memberKey := w.cfg.Projection + "." + w.cfg.WorkerID
	type running struct {
		cancel context.CancelFunc // stops the partition at once
		stop   chan struct{}      // stops it after the fetch in flight
		done   chan struct{}
	}
	owned := map[int]*running{}
	var wg conc.WaitGroup
	fatal := make(chan error, w.cfg.Partitions)
	// stopPartitions stops partitions at once: others own them already.
	stopPartitions := func(ps []int) {
		for _, p := range ps {
			owned[p].cancel()
		}
		for _, p := range ps {
			<-owned[p].done
			delete(owned, p)
		}
	}
	// handOver stops partitions gracefully: each finishes the fetch it has
	// in flight, applying and acking every message delivered to it, and
	// unpins its consumer; the next owner starts right after the last ack.
	// Cut short instead, messages already sent to this worker would be
	// dropped and come again only after AckWait, holding the next owner's
	// partition back that long. Bounded by ShutdownTimeout.
	handOver := func(ps []int) {
		for _, p := range ps {
			close(owned[p].stop)
		}
		deadline := time.NewTimer(w.cfg.ShutdownTimeout)
		defer deadline.Stop()
		for _, p := range ps {
			select {
			case <-owned[p].done:
			case <-deadline.C:
				stopPartitions(ps)
				return
			}
		}
		stopPartitions(ps)
	}
	defer func() {
		handOver(slices.Collect(maps.Keys(owned)))
		wg.Wait()
		w.m.owned.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Set(0)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = kv.Delete(dctx, memberKey)
	}()

	tick := time.NewTicker(w.cfg.heartbeatInterval())
	defer tick.Stop()
	var hbErr error
	var prevMembers []string
	lastBeat := time.Now()
	for {
		if h := w.cfg.hooks.beforeHeartbeat; h != nil {
			h()
		}
		members, err := w.heartbeat(ctx, kv, memberKey)
		if err != nil && ctx.Err() == nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, jetstream.ErrConnectionClosed) {
			// The bucket may be gone: a nats-server restart loses a
			// memory-storage bucket (as older workers created it), an
			// operator may have deleted it. Open it again, creating it if
			// it is missing, and beat once more; otherwise heartbeats fail
			// for ever and every partition stays released.
			if nkv, rerr := w.reopenMembersBucket(ctx); rerr == nil {
				kv = nkv
				members, err = w.heartbeat(ctx, kv, memberKey)
			}
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed):
			return fmt.Errorf("projector: %w", err)
		case err != nil:
			if hbErr == nil {
				w.log.Warn("heartbeat failed", zap.Error(err))
			}
			hbErr = err
			w.m.errors.WithLabelValues(w.cfg.Projection, "nats").Inc()
			if time.Since(lastBeat) > w.cfg.MemberTTL && len(owned) > 0 {
				// The others see this worker gone and take its partitions.
				w.log.Warn("membership lapsed; releasing every partition")
				stopPartitions(slices.Collect(maps.Keys(owned)))
				w.m.owned.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Set(0)
			}
		default:
			hbErr, lastBeat = nil, time.Now()
			// A member counts until two listings in a row miss it: one
			// listing can miss a live member whose heartbeat replaced its
			// previous one while the listing ran (the bucket keeps one
			// value per key), and every flap moves partitions twice.
			seen := slices.Concat(members, prevMembers)
			prevMembers = members
			want := assign(seen, w.cfg.Partitions, w.cfg.WorkerID)
			var release []int
			for p := range owned {
				if !slices.Contains(want, p) {
					w.log.Info("releasing partition", zap.Int("partition", p))
					release = append(release, p)
				}
			}
			handOver(release)
			for _, p := range want {
				if owned[p] != nil {
					continue
				}
				// Run's end stops the partition through handOver, not
				// through its context.
				pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
				r := &running{cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
				owned[p] = r
				w.log.Info("taking partition", zap.Int("partition", p))
				wg.Go(func() {
					defer close(r.done)
					if err := w.consume(pctx, p, r.stop); err != nil {
						fatal <- err
					}
				})
			}
			w.m.owned.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Set(float64(len(owned)))
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-fatal:
			return err
		case <-tick.C:
		}
	}
}

// membersBucket creates the members bucket, or opens it when it exists.
// It is created, never updated: an existing bucket is used as it is (an
// update racing between workers starting together gains nothing). File
// storage, so that a nats-server restart keeps the members; a bucket that
// is lost anyway is created again by the next failing heartbeat.
func (w *Worker) membersBucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := w.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      w.cfg.MembersBucket,
		Description: "artifactstore projector workers (heartbeats)",
		TTL:         w.cfg.MemberTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = w.js.KeyValue(ctx, w.cfg.MembersBucket)
	}
	return kv, err
}

func (w *Worker) reopenMembersBucket(ctx context.Context) (jetstream.KeyValue, error) {
	rctx, cancel := context.WithTimeout(ctx, w.cfg.MemberTTL/2)
	defer cancel()
	kv, err := w.membersBucket(rctx)
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// heartbeat refreshes this worker's member key and returns the live
// members of the projection.
func (w *Worker) heartbeat(ctx context.Context, kv jetstream.KeyValue, key string) ([]string, error) {
	hctx, cancel := context.WithTimeout(ctx, w.cfg.MemberTTL/2)
	defer cancel()
	if _, err := kv.Put(hctx, key, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return nil, err
	}
	keys, err := kv.Keys(hctx)
	if err != nil {
		return nil, err
	}
	var members []string
	for _, k := range keys {
		if m, ok := strings.CutPrefix(k, w.cfg.Projection+"."); ok {
			members = append(members, m)
		}
	}
	if !slices.Contains(members, w.cfg.WorkerID) {
		return nil, fmt.Errorf("own member key %s not listed", key)
	}
	return members, nil
}

// assign spreads partitions over the sorted members round-robin and
// returns self's share.
func assign(members []string, partitions int, self string) []int {
	members = slices.Clone(members)
	slices.Sort(members)
	members = slices.Compact(members)
	i := slices.Index(members, self)
	if i < 0 {
		return nil
	}
	var out []int
	for p := i; p < partitions; p += len(members) {
		out = append(out, p)
	}
	return out
}

// setup checks the database, waits for the public stream and creates the
// derived stream and the partition consumers.
func (w *Worker) setup(ctx context.Context) error {
	logID, err := w.db.LogID(ctx)
	if err != nil {
		return fmt.Errorf("projector: reading log id: %w", err)
	}
	w.logID = logID
	if err := w.initCheckpoints(ctx); err != nil {
		return err
	}
	var public jetstream.Stream
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		public, err = w.js.Stream(ctx, w.cfg.Stream)
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("projector: stream %s: %w", w.cfg.Stream, err)
		}
		w.log.Info("waiting for the events stream", zap.String("stream", w.cfg.Stream))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	pc := public.CachedInfo().Config
	dup := pc.Duplicates
	if pc.MaxAge > 0 && (dup == 0 || dup > pc.MaxAge) {
		dup = pc.MaxAge
	}
	// Create, never update: workers starting together must not race a
	// stream update against consumer creation (and a derived stream that
	// exists is used as it is).
	_, err = w.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        w.derived,
		Description: fmt.Sprintf("%s partitioned by subject id into %d partitions for projectors", w.cfg.Stream, w.cfg.Partitions),
		Storage:     pc.Storage,
		Replicas:    pc.Replicas,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      pc.MaxAge,
		MaxMsgs:     pc.MaxMsgs,
		MaxBytes:    pc.MaxBytes,
		Duplicates:  dup,
		Sources: []*jetstream.StreamSource{{
			Name: w.cfg.Stream,
			SubjectTransforms: []jetstream.SubjectTransformConfig{{
				Source:      publicSubjects,
				Destination: partitionTransform(w.cfg.Partitions),
			}},
		}},
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		w.log.Info("derived stream exists with another configuration; using it as it is", zap.String("stream", w.derived))
		err = nil
	}
	if err != nil {
		return fmt.Errorf("projector: derived stream %s: %w", w.derived, err)
	}
	for p := range w.cfg.Partitions {
		_, err := w.js.CreateOrUpdateConsumer(ctx, w.derived, jetstream.ConsumerConfig{
			Durable:        consumerName(w.cfg.Projection, p),
			Description:    fmt.Sprintf("projection %s partition %d", w.cfg.Projection, p),
			FilterSubject:  partitionFilter(p),
			DeliverPolicy:  jetstream.DeliverAllPolicy,
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        w.cfg.AckWait,
			MaxDeliver:     -1,
			MaxAckPending:  4 * w.cfg.BatchSize,
			MaxWaiting:     512,
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PinnedTTL:      w.cfg.PinnedTTL,
			PriorityGroups: []string{priorityGroup},
		})
		if err != nil {
			return fmt.Errorf("projector: consumer of partition %d: %w", p, err)
		}
	}
	return nil
}

// initCheckpoints creates a checkpoint row for every partition, and
// refuses a partition count that differs from the checkpoints' unless the
// change is safe. Partitions hash subject ids modulo the count, so under a
// new count a subject lands in a partition whose checkpoint says nothing
// about that subject's events: the change is safe only when every existing
// checkpoint holds the same sequence (right after replay --reset, or after
// a projection that had only partition 0's checkpoint, which an
// unpartitioned replay writes). Then every partition starts from that
// sequence. Otherwise Run returns ErrPartitionsChanged. Stop every worker of
// the projection before changing the count.
func (w *Worker) initCheckpoints(ctx context.Context) error {
	cps, err := w.db.Checkpoints(ctx)
	if err != nil {
		return fmt.Errorf("projector: reading checkpoints: %w", err)
	}
	have := map[int]int64{}
	uniform, common := true, int64(-1)
	for _, c := range cps {
		if c.Projection != w.cfg.Projection {
			continue
		}
		have[c.Partition] = c.Sequence
		if common >= 0 && c.Sequence != common {
			uniform = false
		}
		common = c.Sequence
	}
	same := len(have) == w.cfg.Partitions
	for p := range have {
		same = same && p < w.cfg.Partitions
	}
	if len(have) > 0 && !same && !uniform {
		return fmt.Errorf("%w: %s has %d partition checkpoints at different sequences, configured %d partitions (stop its workers and run replay --reset, then start them with the new count)",
			ErrPartitionsChanged, w.cfg.Projection, len(have), w.cfg.Partitions)
	}
	err = w.db.InTx(ctx, func(tx store.Tx) error {
		if len(have) > 0 && !same {
			// Re-partition: every partition restarts from the common sequence.
			w.log.Info("partition count changed; every partition starts from the common checkpoint",
				zap.Int("partitions", w.cfg.Partitions), zap.Int("previous", len(have)), zap.Int64("checkpoint", common))
			if err := tx.DeleteCheckpoints(ctx, w.cfg.Projection); err != nil {
				return err
			}
			clear(have)
		}
		for p := range w.cfg.Partitions {
			if _, ok := have[p]; ok {
				continue
			}
			if err := tx.AdvanceCheckpoint(ctx, w.cfg.Projection, p, 0, max(common, 0)); err != nil && !errors.Is(err, store.ErrCheckpointMoved) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("projector: creating checkpoints: %w", err)
	}
	return nil
}

func partLabel(p int) string { return strconv.Itoa(p) }

// keyCache holds the keys of a contiguous range (lo, hi] of the log, shared
// by the partitions of one worker, to check batches for gaps without
// reading the log once per partition.
type keyCache struct {
	mu     sync.Mutex
	lo, hi int64
	keys   []store.EventKey
	parts  []int
}

const keyCacheMax = 200_000

// partitionKeys returns the keys of the events of partition p with after <
// sequence <= upTo, read from the log.
func (w *Worker) partitionKeys(ctx context.Context, p int, after, upTo int64) ([]store.EventKey, error) {
	c := &w.keys
	c.mu.Lock()
	defer c.mu.Unlock()
	if after < c.lo || after > c.hi {
		c.lo, c.hi, c.keys, c.parts = after, after, nil, nil
	}
	for c.hi < upTo {
		const page = 5000
		ks, err := w.db.FetchKeys(ctx, c.hi, upTo, page)
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			c.keys = append(c.keys, k)
			c.parts = append(c.parts, Partition(k.SubjectID, w.cfg.Partitions))
		}
		if len(ks) < page {
			// upTo was delivered, so it is committed, and so is everything
			// below it (sequence order is commit order).
			c.hi = upTo
		} else {
			c.hi = ks[len(ks)-1].Sequence
		}
	}
	if n := len(c.keys); n > keyCacheMax {
		cut := n - keyCacheMax/2
		c.lo = c.keys[cut-1].Sequence
		c.keys, c.parts = slices.Clone(c.keys[cut:]), slices.Clone(c.parts[cut:])
	}
	i, _ := slices.BinarySearchFunc(c.keys, after+1, func(k store.EventKey, s int64) int { return cmp.Compare(k.Sequence, s) })
	var out []store.EventKey
	for ; i < len(c.keys) && c.keys[i].Sequence <= upTo; i++ {
		if c.parts[i] == p {
			out = append(out, c.keys[i])
		}
	}
	return out, nil
}
