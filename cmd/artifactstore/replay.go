package main

import (
	"context"
	"fmt"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/store"
)

type replayCmd struct {
	Reset      bool   `env:"ARTIFACTSTORE_REPLAY_RESET" help:"Empty the views, the projection's checkpoints and parked partitions first (a full rebuild)."`
	UpTo       int64  `name:"up-to" env:"ARTIFACTSTORE_REPLAY_UP_TO" help:"Stop after this sequence (default: the log head at start)."`
	Projection string `env:"ARTIFACTSTORE_PROJECTION" default:"registry" help:"Projection whose checkpoints the replay advances."`
	Partitions int    `env:"ARTIFACTSTORE_PARTITIONS" help:"Expected partition count; refuses to run if the log's differs (0: the log's)."`
}

func (c replayCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-replay", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	// Checkpoints are per partition of the log: each event is applied only
	// above its own partition's checkpoint.
	n, err := db.Partitions(ctx)
	if err != nil {
		return err
	}
	if c.Partitions != 0 && c.Partitions != n {
		return failf(exitInvalid, "--partitions %d: the log has %d partitions (fixed when it was first migrated)", c.Partitions, n)
	}
	opts := store.ReplayOptions{Reset: c.Reset, UpTo: c.UpTo, Projection: c.Projection, Partitions: n,
		PartitionOf: projector.Partitioner(n)}
	var bar *progressbar.ProgressBar
	if term.IsTerminal(int(os.Stderr.Fd())) {
		opts.Progress = func(applied, target int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(target, progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetDescription("replay"), progressbar.OptionShowCount(), progressbar.OptionShowIts(),
					progressbar.OptionSetItsString("events"), progressbar.OptionThrottle(100_000_000))
			}
			_ = bar.Set64(applied)
		}
	}
	applied, err := store.Replay(ctx, db, store.RegistryViews{}, opts)
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return err
	}
	fmt.Println(applied)
	return nil
}
