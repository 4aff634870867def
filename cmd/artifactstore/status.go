package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

type statusCmd struct {
	JSON   bool   `env:"ARTIFACTSTORE_JSON" help:"Print JSON."`
	Stream string `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Events stream."`
}

// statusReport is what status prints.
type statusReport struct {
	LogID string `json:"log_id"`
	Head  int64  `json:"head"`
	// ChainHead is the log head's sequence and chain digest.
	ChainHead store.ChainHead `json:"chain_head"`
	// Partitions is the log's partition count P.
	Partitions  int                `json:"partitions"`
	Relay       *relayStatus       `json:"relay,omitempty"`
	RelayError  string             `json:"relay_error,omitempty"`
	Projections []projector.Status `json:"projections"`
}

type relayStatus struct {
	Stream         string `json:"stream"`
	Position       int64  `json:"position"`
	StreamSequence uint64 `json:"stream_sequence"`
	Lag            int64  `json:"lag"`
}

func (c statusCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-status", g.log)
	if err != nil {
		return failf(exitUnavailble, "%v", err)
	}
	defer db.Close()
	var js relay.StreamLookup
	nc, err := dialClient(g)
	if err == nil {
		defer nc.Close()
		js, err = jetstream.New(nc)
	}
	if err != nil {
		js = nil
	}
	rep, err := collectStatus(ctx, db, js, c.Stream)
	if err != nil {
		return err
	}
	if js == nil && rep.RelayError == "" {
		rep.RelayError = fmt.Sprintf("NATS unreachable at %s", redactURL(g.natsURL()))
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "log\t%s\thead %d\tpartitions %d\tchain %s\n", rep.LogID, rep.Head, rep.Partitions, rep.ChainHead.Digest)
	if rep.Relay != nil {
		fmt.Fprintf(w, "relay\t%s\tposition %d\tlag %d\n", rep.Relay.Stream, rep.Relay.Position, rep.Relay.Lag)
	} else {
		fmt.Fprintf(w, "relay\tunknown\t%s\n", rep.RelayError)
	}
	for _, p := range rep.Projections {
		fmt.Fprintf(w, "projection\t%s\tapplied %d\tlag %d\tparked partitions %d\n", p.Projection, p.Applied, p.Lag, p.ParkedPartitions)
		for _, part := range p.Partitions {
			state := ""
			if part.Parked != nil {
				state = fmt.Sprintf("PARKED at sequence %d: %s", part.Parked.Sequence, part.Parked.Reason)
			}
			worker := part.Worker
			if worker == "" {
				worker = "-"
			}
			fmt.Fprintf(w, "  partition %d\tcheckpoint %d\tworker %s\t%s\n", part.Partition, part.Checkpoint, worker, state)
		}
	}
	return w.Flush()
}

// collectStatus reads the log, the relay's position in the stream (when js
// is not nil) and every projection's checkpoints.
func collectStatus(ctx context.Context, db store.DB, js relay.StreamLookup, stream string) (statusReport, error) {
	var rep statusReport
	var err error
	if rep.LogID, err = db.LogID(ctx); err != nil {
		return rep, failf(exitUnavailble, "reading the log: %v", err)
	}
	if rep.Head, err = db.Head(ctx); err != nil {
		return rep, failf(exitUnavailble, "reading the log: %v", err)
	}
	if rep.Partitions, err = db.Partitions(ctx); err != nil {
		return rep, failf(exitUnavailble, "reading the log: %v", err)
	}
	if rep.ChainHead, err = db.ChainHead(ctx); err != nil {
		return rep, failf(exitUnavailble, "reading the log: %v", err)
	}
	if js != nil {
		if rs, err := readRelay(ctx, db, js, stream); err != nil {
			rep.RelayError = err.Error()
		} else {
			rep.Relay = rs
		}
	}
	cps, err := db.Checkpoints(ctx)
	if err != nil {
		return rep, failf(exitUnavailble, "reading checkpoints: %v", err)
	}
	rep.Projections = []projector.Status{}
	seen := map[string]bool{}
	for _, cp := range cps {
		if seen[cp.Projection] {
			continue
		}
		seen[cp.Projection] = true
		ps, err := projector.Inspect(ctx, db, cp.Projection)
		if err != nil {
			return rep, failf(exitUnavailble, "reading projection %s: %v", cp.Projection, err)
		}
		rep.Projections = append(rep.Projections, ps)
	}
	return rep, nil
}

func readRelay(ctx context.Context, db store.DB, js relay.StreamLookup, stream string) (*relayStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := relay.ReadStatus(ctx, db, js, stream)
	if err != nil {
		return nil, err
	}
	return &relayStatus{Stream: st.Stream, Position: st.Sequence, StreamSequence: st.StreamSequence, Lag: st.Lag}, nil
}
