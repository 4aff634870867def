package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
)

type projectionCmd struct {
	Rebuild projectionRebuildCmd `cmd:"" help:"Build a new version of a projection beside the live one, then switch to it atomically."`
	List    projectionListCmd    `cmd:"" help:"Each projection's versions, the live one, checkpoints and lag."`
}

type projectionRebuildCmd struct {
	Name      string `arg:"" default:"registry" help:"Projection to rebuild (registry)."`
	Stream    string `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream the new version follows after its load."`
	SwitchLag int64  `name:"switch-lag" env:"ARTIFACTSTORE_SWITCH_LAG" default:"1000" help:"Switch once the new version is this many events behind the log head or fewer."`
}

func (c projectionRebuildCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-rebuild", g.log)
	if err != nil {
		return failf(exitUnavailble, "%v", err)
	}
	defer db.Close()
	if _, ok := db.(store.Rebuilder); !ok {
		return failf(exitInvalid, "%v", projector.ErrRebuildUnsupported)
	}
	nc, err := connectNATS(ctx, g, g.natsURL(), "artifactstore-rebuild")
	if err != nil {
		return failf(exitUnavailble, "%v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	progress, finish := rebuildProgress()
	res, err := projector.Rebuild(ctx, db, js, projector.RebuildConfig{Projection: c.Name, Stream: c.Stream,
		SwitchLag: c.SwitchLag, Logger: g.log, Progress: progress})
	finish()
	switch {
	case errors.Is(err, store.ErrNotFound):
		return failf(exitNotFound, "%v", err)
	case errors.Is(err, projector.ErrRebuildRunning), errors.Is(err, postgres.ErrDependents), errors.Is(err, store.ErrVersionObsolete):
		return failf(exitConflict, "%v", err)
	case err != nil:
		return err
	}
	fmt.Printf("%s version %d is live at sequence %d (version %d dropped)\n", c.Name, res.Version, res.SwitchedAt, res.Retired)
	return nil
}

// rebuildProgress draws a progress bar per phase on a terminal (stderr);
// elsewhere it does nothing (the logs say what happens).
func rebuildProgress() (func(projector.RebuildProgress), func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	phase := ""
	finish := func() {
		if bar != nil {
			_ = bar.Finish()
			fmt.Fprintln(os.Stderr)
		}
	}
	return func(p projector.RebuildProgress) {
		if p.Phase != phase {
			finish()
			phase = p.Phase
			bar = progressbar.NewOptions64(max(p.Target, 1), progressbar.OptionSetWriter(os.Stderr),
				progressbar.OptionSetDescription(fmt.Sprintf("v%d %-6s", p.Version, p.Phase)), progressbar.OptionShowCount(),
				progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"), progressbar.OptionThrottle(100_000_000))
		}
		bar.ChangeMax64(max(p.Target, 1))
		_ = bar.Set64(p.Applied)
	}, finish
}

type projectionListCmd struct {
	JSON bool `env:"ARTIFACTSTORE_JSON" help:"Print JSON."`
}

// versionStatus is one version of a projection as list shows it.
type versionStatus struct {
	store.ProjectionVersion
	// Checkpoints names the version's checkpoints.
	Checkpoints string            `json:"checkpoints"`
	Status      *projector.Status `json:"status,omitempty"`
}

func (c projectionListCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-projection", g.log)
	if err != nil {
		return failf(exitUnavailble, "%v", err)
	}
	defer db.Close()
	list, err := listVersions(ctx, db)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"versions": list})
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PROJECTION\tVERSION\tSTATE\tAPPLIED\tLAG\tPARKED\tWHERE")
	for _, v := range list {
		applied, lag, parked := "-", "-", "-"
		if s := v.Status; s != nil {
			applied, lag, parked = fmt.Sprint(s.Applied), fmt.Sprint(s.Lag), fmt.Sprint(s.ParkedPartitions)
		}
		where := "live tables"
		if v.State != store.VersionLive {
			where = "schema " + v.Schema
		}
		state := v.State
		if v.State == store.VersionBuilding && !v.Loaded {
			state = "building (loading)"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", v.Projection, v.Version, state, applied, lag, parked, where)
	}
	return w.Flush()
}

// listVersions returns the catalog's versions that are not dropped, each
// with its checkpoints' status, and the projections that have checkpoints
// but no catalog entry (a projector run under another name) as version 1.
func listVersions(ctx context.Context, db store.DB) ([]versionStatus, error) {
	var vs []store.ProjectionVersion
	if cat, ok := db.(store.Versions); ok {
		var err error
		if vs, err = cat.ProjectionVersions(ctx); err != nil {
			return nil, err
		}
	}
	cps, err := db.Checkpoints(ctx)
	if err != nil {
		return nil, err
	}
	named := map[string]bool{}
	var out []versionStatus
	for _, v := range vs {
		named[v.Checkpoints()] = true
		if v.State == store.VersionDropped {
			continue
		}
		out = append(out, versionStatus{ProjectionVersion: v, Checkpoints: v.Checkpoints()})
	}
	for _, c := range cps {
		if !named[c.Projection] {
			named[c.Projection] = true
			out = append(out, versionStatus{ProjectionVersion: store.ProjectionVersion{Projection: c.Projection, Version: 1,
				State: store.VersionLive}, Checkpoints: c.Projection})
		}
	}
	for i := range out {
		if out[i].State == store.VersionRetired {
			continue
		}
		s, err := projector.Inspect(ctx, db, out[i].Checkpoints)
		if err != nil {
			return nil, err
		}
		out[i].Status = &s
	}
	return out, nil
}
