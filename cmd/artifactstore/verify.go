package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

type verifyCmd struct {
	From             int64  `env:"ARTIFACTSTORE_VERIFY_FROM" help:"First sequence to verify (default: 1, the whole history). The chain digest of the event before it is taken from the log as it is."`
	Stream           bool   `help:"Also compare every message of the events stream with the log: body, headers and chain digest."`
	StreamName       string `name:"stream-name" env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream (with --stream)."`
	Checkpoint       string `env:"ARTIFACTSTORE_VERIFY_CHECKPOINT" help:"Prove the log still extends a signed checkpoint: a file ('artifactstore checkpoint get --out FILE'), or 'kv' for the latest one the relay published."`
	CheckpointPubkey string `name:"checkpoint-pubkey" env:"ARTIFACTSTORE_CHECKPOINT_PUBKEY" type:"path" help:"The relay's ed25519 public key (PEM) to check the checkpoint's signature with."`
	JSON             bool   `env:"ARTIFACTSTORE_JSON" help:"Print the report as JSON."`
}

// verifyReport is what verify found.
type verifyReport struct {
	LogID      string              `json:"log_id"`
	From       int64               `json:"from"`
	To         int64               `json:"to"`
	ChainHead  store.ChainHead     `json:"chain_head"`
	Stream     *relay.StreamResult `json:"stream,omitempty"`
	Checkpoint *wire.Checkpoint    `json:"checkpoint,omitempty"`
	// Broken names the first sequence that breaks, when one does.
	Broken *store.BreakError `json:"broken,omitempty"`
}

func (c verifyCmd) Run(ctx context.Context, g *globals) error {
	cp, pub, err := c.readCheckpointFile()
	if err != nil {
		return err
	}
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-verify", g.log)
	if err != nil {
		return failf(exitUnavailble, "%v", err)
	}
	defer db.Close()
	rep := verifyReport{From: max(c.From, 1)}
	if rep.LogID, err = db.LogID(ctx); err != nil {
		return failf(exitUnavailble, "reading the log: %v", err)
	}
	var js jetstream.JetStream
	if c.Stream || c.Checkpoint == "kv" {
		nc, err := dialClient(g)
		if err != nil {
			return err
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return err
		}
	}
	if c.Checkpoint == "kv" {
		if cp, err = latestCheckpoint(ctx, js, rep.LogID, pub); err != nil {
			return err
		}
	}
	if cp != nil && cp.LogID != rep.LogID {
		return failf(exitBroken, "the checkpoint is of log %s, this log is %s", cp.LogID, rep.LogID)
	}
	rep.Checkpoint = cp
	verr := c.verify(ctx, db, js, &rep)
	return c.report(rep, verr)
}

// readCheckpointFile checks the checkpoint flags, reads the public key and,
// unless the checkpoint comes from the bucket, the checkpoint, whose
// signature it checks.
func (c verifyCmd) readCheckpointFile() (*wire.Checkpoint, ed25519.PublicKey, error) {
	if c.Checkpoint == "" {
		if c.CheckpointPubkey != "" {
			return nil, nil, failf(exitInvalid, "--checkpoint-pubkey without --checkpoint")
		}
		return nil, nil, nil
	}
	if c.CheckpointPubkey == "" {
		return nil, nil, failf(exitInvalid, "--checkpoint needs --checkpoint-pubkey, the relay's public key that signed it")
	}
	pub, err := readPublicKey(c.CheckpointPubkey)
	if err != nil {
		return nil, nil, failf(exitInvalid, "--checkpoint-pubkey: %v", err)
	}
	if c.Checkpoint == "kv" {
		return nil, pub, nil
	}
	data, err := os.ReadFile(c.Checkpoint)
	if err != nil {
		return nil, nil, failf(exitInvalid, "--checkpoint: %v", err)
	}
	cp, err := wire.DecodeCheckpoint(data)
	if err != nil {
		return nil, nil, failf(exitInvalid, "--checkpoint %s: %v", c.Checkpoint, err)
	}
	if err := cp.Verify(pub); err != nil {
		return nil, nil, failf(exitBroken, "--checkpoint %s: %v", c.Checkpoint, err)
	}
	return &cp, pub, nil
}

// latestCheckpoint reads the relay's latest checkpoint of the log and
// checks its signature.
func latestCheckpoint(ctx context.Context, js jetstream.JetStream, logID string, pub ed25519.PublicKey) (*wire.Checkpoint, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cp, err := relay.ReadCheckpoint(rctx, js, logID)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, failf(exitNotFound, "no checkpoint of log %s in %s (does a relay run with --checkpoint-key?): %v", logID, wire.CheckpointBucket, err)
	case errors.Is(err, wire.ErrInvalidCheckpoint):
		return nil, failf(exitBroken, "%v", err)
	case err != nil:
		return nil, failf(exitUnavailble, "%v", err)
	}
	if err := cp.Verify(pub); err != nil {
		return nil, failf(exitBroken, "the checkpoint in %s: %v", wire.CheckpointBucket, err)
	}
	return &cp, nil
}

// verify checks the log (and, as asked, the stream and the checkpoint)
// and fills rep; a broken history is a *store.BreakError.
func (c verifyCmd) verify(ctx context.Context, db store.DB, js jetstream.JetStream, rep *verifyReport) error {
	var check []func(store.Event) error
	var sc *relay.StreamCheck
	if c.Stream {
		parts, err := db.Partitions(ctx)
		if err != nil {
			return err
		}
		// Before the log's head is read: every message it reads is then of
		// a committed event.
		if sc, err = relay.NewStreamCheck(ctx, js, c.StreamName, rep.LogID, parts, rep.From); err != nil {
			return err
		}
		defer sc.Close()
		check = append(check, sc.Check)
	}
	if cp := rep.Checkpoint; cp != nil {
		check = append(check, func(e store.Event) error { return checkpointHolds(*cp, e) })
	}
	bar := newProgress()
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{From: rep.From, Progress: bar.set, Each: func(e store.Event) error {
		for _, f := range check {
			if err := f(e); err != nil {
				return err
			}
		}
		return nil
	}})
	bar.finish()
	rep.To, rep.ChainHead = res.To, res.Head
	if sc != nil {
		r := sc.Result()
		rep.Stream = &r
		if err == nil {
			err = sc.Finish(res.To)
			r = sc.Result()
		}
	}
	if err == nil && rep.Checkpoint != nil {
		err = checkpointInLog(ctx, db, *rep.Checkpoint, res)
	}
	return err
}

// checkpointHolds checks the log's event e against the checkpoint.
func checkpointHolds(cp wire.Checkpoint, e store.Event) error {
	if e.Sequence != cp.Sequence || e.ChainDigest == cp.ChainDigest {
		return nil
	}
	return &store.BreakError{Sequence: e.Sequence, Reason: fmt.Sprintf(
		"checkpoint: the log's chain digest %s is not the %s the checkpoint signed at %s pins: the history up to it was rewritten",
		e.ChainDigest, cp.ChainDigest, cp.SignedAt.Format(time.RFC3339))}
}

// checkpointInLog checks what the verification of the events res did not
// cover: that the log reaches the checkpoint, or, when it starts after it,
// the checkpoint's event.
func checkpointInLog(ctx context.Context, db store.DB, cp wire.Checkpoint, res store.VerifyResult) error {
	switch {
	case cp.Sequence > res.Head.Sequence:
		return &store.BreakError{Sequence: res.Head.Sequence + 1, Reason: fmt.Sprintf(
			"checkpoint: the log ends at event %d, the checkpoint signed at %s pins event %d: the log lost its tail",
			res.Head.Sequence, cp.SignedAt.Format(time.RFC3339), cp.Sequence)}
	case cp.Sequence >= res.From:
		return nil // checked on the way
	}
	events, err := db.Fetch(ctx, cp.Sequence-1, 1)
	if err != nil {
		return err
	}
	if len(events) == 0 || events[0].Sequence != cp.Sequence {
		return &store.BreakError{Sequence: cp.Sequence, Reason: "checkpoint: the log has no such event"}
	}
	return checkpointHolds(cp, events[0])
}

// report prints rep and turns err into the exit code.
func (c verifyCmd) report(rep verifyReport, err error) error {
	var be *store.BreakError
	if errors.As(err, &be) {
		rep.Broken = be
	} else if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return failf(exitNotFound, "verify: %v", err)
		}
		if store.Temporary(err) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			return failf(exitUnavailble, "verify: %v", err)
		}
		return fmt.Errorf("verify: %w", err)
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(rep)
	}
	if be != nil {
		return failf(exitBroken, "history broken at event %d: %s", be.Sequence, be.Reason)
	}
	return nil
}

func printReport(rep verifyReport) {
	if rep.To >= rep.From {
		fmt.Printf("log %s: events %d..%d verified (payload digests and hash chain)\n", rep.LogID, rep.From, rep.To)
	} else {
		fmt.Printf("log %s: no events from %d on\n", rep.LogID, rep.From)
	}
	fmt.Printf("chain head: event %d, %s\n", rep.ChainHead.Sequence, rep.ChainHead.Digest)
	if s := rep.Stream; s != nil {
		fmt.Printf("stream %s: %d messages compared with the log", s.Stream, s.Messages)
		if s.Messages > 0 {
			fmt.Printf(" (events %d..%d)", s.First, s.Last)
		}
		if s.Unchained > 0 {
			fmt.Printf(", %d relayed before the log had a chain", s.Unchained)
		}
		fmt.Println()
	}
	if cp := rep.Checkpoint; cp != nil && rep.Broken == nil {
		fmt.Printf("checkpoint: event %d, signed %s: the log extends it\n", cp.Sequence, cp.SignedAt.Format(time.RFC3339))
	}
	if rep.Broken == nil {
		fmt.Println("intact")
	}
}

// progress is verify's progress bar on a terminal (nothing otherwise).
type progress struct{ bar *progressbar.ProgressBar }

func newProgress() *progress {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription("verify"), progressbar.OptionShowCount(), progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"), progressbar.OptionThrottle(100*time.Millisecond))}
}

func (p *progress) set(done, total int64) {
	if p.bar == nil {
		return
	}
	if p.bar.GetMax64() != total {
		p.bar.ChangeMax64(total)
	}
	_ = p.bar.Set64(done)
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
}
