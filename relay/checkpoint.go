package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// KeyValueManager finds and creates key-value buckets; jetstream.JetStream
// implements it. The relay needs it to publish checkpoints.
type KeyValueManager interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
	CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// checkpointer signs and puts the active relay's checkpoints.
type checkpointer struct {
	r      *Relay
	kvm    KeyValueManager
	kv     jetstream.KeyValue
	signed int64 // the last sequence put
}

// run signs a checkpoint every CheckpointInterval while the relay's
// position has moved since the last one, until ctx is done. Failures are
// logged and counted, and retried at the next tick: they never stop the
// relay.
func (c *checkpointer) run(ctx context.Context) {
	t := time.NewTicker(c.r.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pos := c.r.Position()
		if pos <= c.signed {
			continue
		}
		if err := c.put(ctx, pos); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.r.m.errors.WithLabelValues(errKindCheckpoint).Inc()
			c.r.log.Warn("cannot publish a checkpoint; retrying at the next interval", zap.Int64("sequence", pos), zap.Error(err))
			continue
		}
		c.signed = pos
		c.r.m.checkpoint.Set(float64(pos))
		c.r.stage("checkpoint", pos)
	}
}

// put signs the checkpoint of the log's event at seq, which the stream
// holds, and puts it under the log id.
func (c *checkpointer) put(ctx context.Context, seq int64) error {
	logID, err := c.r.db.LogID(ctx)
	if err != nil {
		return fmt.Errorf("reading the log id: %w", err)
	}
	events, err := c.r.db.Fetch(ctx, seq-1, 1)
	if err != nil {
		return fmt.Errorf("reading event %d: %w", seq, err)
	}
	if len(events) == 0 || events[0].Sequence != seq || events[0].ChainDigest == (store.Digest{}) {
		return fmt.Errorf("the log has no chained event %d", seq)
	}
	if c.kv == nil {
		if c.kv, err = c.bucket(ctx); err != nil {
			return err
		}
	}
	cp := wire.SignCheckpoint(c.r.cfg.CheckpointKey, logID, store.ChainHead{Sequence: seq, Digest: events[0].ChainDigest}, time.Now())
	if _, err := c.kv.Put(ctx, logID, wire.EncodeCheckpoint(cp)); err != nil {
		c.kv = nil // look the bucket up again next time
		return fmt.Errorf("putting it in %s: %w", wire.CheckpointBucket, err)
	}
	return nil
}

// bucket returns the checkpoint bucket, creating it when missing.
func (c *checkpointer) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := c.kvm.KeyValue(ctx, wire.CheckpointBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = c.kvm.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      wire.CheckpointBucket,
			Description: "artifactstore signed checkpoints of the events stream, by log id (written by the relay only)",
			History:     CheckpointHistory,
			Storage:     jetstream.FileStorage,
			Replicas:    c.r.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = c.kvm.KeyValue(ctx, wire.CheckpointBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", wire.CheckpointBucket, err)
	}
	return kv, nil
}

// ReadCheckpoint returns the latest checkpoint the relay put for the log
// logID (its signature is not checked: Checkpoint.Verify does). A missing
// bucket or key wraps jetstream.ErrBucketNotFound or ErrKeyNotFound. ctx
// bounds the requests.
func ReadCheckpoint(ctx context.Context, kvm interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
}, logID string) (wire.Checkpoint, error) {
	kv, err := kvm.KeyValue(ctx, wire.CheckpointBucket)
	if err != nil {
		return wire.Checkpoint{}, fmt.Errorf("relay: bucket %s: %w", wire.CheckpointBucket, err)
	}
	e, err := kv.Get(ctx, logID)
	if err != nil {
		return wire.Checkpoint{}, fmt.Errorf("relay: checkpoint of log %s in %s: %w", logID, wire.CheckpointBucket, err)
	}
	return wire.DecodeCheckpoint(e.Value())
}
