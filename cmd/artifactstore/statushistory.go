package main

import (
	"math"
	"time"
)

// lagSample is the pipeline's position, lag and throughput at one moment:
// one point of the status page's charts.
type lagSample struct {
	At time.Time `json:"at"`
	// T is At in Unix milliseconds (the charts' x and the page's ?since=).
	T int64 `json:"t"`
	// Head is the log head.
	Head int64 `json:"head"`
	// RelayLag is events committed but not yet in the stream (-1: unknown).
	RelayLag int64 `json:"relay_lag"`
	// Published is the stream's last sequence (-1: unknown).
	Published int64 `json:"published"`
	// ProjectionLag is events in the log not yet in the views, worst
	// projection (-1: no projection yet).
	ProjectionLag int64              `json:"projection_lag"`
	Projections   []projectionSample `json:"projections"`
	// CommandsPerSec is the log head's growth per second since the previous
	// sample (each accepted command is one event); PublishedPerSec the
	// stream's. Nil when unknown: the first sample, or a position that went
	// backwards (a log migrated fresh, a stream rebuilt).
	CommandsPerSec  *float64 `json:"commands_per_s"`
	PublishedPerSec *float64 `json:"published_per_s"`
}

// projectionSample is one projection's part of a lagSample.
type projectionSample struct {
	Projection string `json:"projection"`
	// Applied is the lowest partition checkpoint; Lag is Head − Applied.
	Applied int64 `json:"applied"`
	Lag     int64 `json:"lag"`
	// PartitionLag is Head − checkpoint for each partition, by partition
	// number; Lag is the largest.
	PartitionLag []int64 `json:"partition_lag"`
	// AppliedPerSec is Applied's growth per second: the log sequences the
	// whole projection moved past. (The sum of the partitions' checkpoint
	// growth would count each event up to P times, since idle partitions'
	// checkpoints advance too.)
	AppliedPerSec *float64 `json:"applied_per_s"`
}

// nextSample turns rep, read at at, into a sample; rates are measured
// against prev (nil for the first sample).
func nextSample(prev *lagSample, rep statusReport, at time.Time) lagSample {
	s := lagSample{At: at.UTC(), T: at.UnixMilli(), Head: rep.Head, RelayLag: -1, Published: -1, ProjectionLag: -1,
		Projections: make([]projectionSample, 0, len(rep.Projections))}
	if rep.Relay != nil {
		s.RelayLag = rep.Relay.Lag
		s.Published = int64(rep.Relay.StreamSequence)
	}
	for _, pr := range rep.Projections {
		ps := projectionSample{Projection: pr.Projection, Applied: pr.Applied, Lag: pr.Lag,
			PartitionLag: make([]int64, len(pr.Partitions))}
		for i, part := range pr.Partitions {
			ps.PartitionLag[i] = max(0, pr.Head-part.Checkpoint)
		}
		s.ProjectionLag = max(s.ProjectionLag, pr.Lag)
		s.Projections = append(s.Projections, ps)
	}
	if prev == nil {
		return s
	}
	dt := at.Sub(prev.At)
	s.CommandsPerSec = rate(prev.Head, s.Head, dt)
	s.PublishedPerSec = rate(prev.Published, s.Published, dt)
	for i := range s.Projections {
		for _, pp := range prev.Projections {
			if pp.Projection == s.Projections[i].Projection {
				s.Projections[i].AppliedPerSec = rate(pp.Applied, s.Projections[i].Applied, dt)
			}
		}
	}
	return s
}

// rate is (cur − prev) per second over dt, rounded to 0.01; nil when
// either position is unknown (negative), time did not move forward, or the
// position went backwards.
func rate(prev, cur int64, dt time.Duration) *float64 {
	if prev < 0 || cur < prev || dt <= 0 {
		return nil
	}
	r := math.Round(float64(cur-prev)/dt.Seconds()*100) / 100
	return &r
}
