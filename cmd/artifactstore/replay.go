package main

import (
	"context"
	"fmt"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/artifactstore/artifactstore/store"
)

type replayCmd struct {
	Reset bool  `help:"Empty the views and the projection's checkpoints first (a full rebuild)."`
	UpTo  int64 `name:"up-to" help:"Stop after this sequence (default: the log head at start)."`
}

func (c replayCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	opts := store.ReplayOptions{Reset: c.Reset, UpTo: c.UpTo}
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
