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
	Partitions int    `env:"ARTIFACTSTORE_PARTITIONS" help:"Partition count to write checkpoints for (default: the projection's current count; with --reset, a new count for the projectors)."`
}

func (c replayCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-replay", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	opts := store.ReplayOptions{Reset: c.Reset, UpTo: c.UpTo, Projection: c.Projection, Partitions: c.Partitions}
	// Without --reset, partitions may stand at different checkpoints while
	// projectors run: each event is then applied only above its own
	// partition's checkpoint.
	n := c.Partitions
	if n == 0 {
		cps, err := db.Checkpoints(ctx)
		if err != nil {
			return err
		}
		for _, cp := range cps {
			if cp.Projection == c.Projection {
				n = max(n, cp.Partition+1)
			}
		}
	}
	if n > 0 {
		opts.PartitionOf = projector.Partitioner(n)
	}
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
