package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

// Baseline is a dialect's raw reference for the benchmarks, measured in the
// same run: plain SQL with no log semantics.
type Baseline struct {
	// Insert writes rows in one transaction as one multi-row INSERT into a
	// plain table shaped like events (sequence supplied by the caller).
	Insert func(ctx context.Context, rows []store.Event) error
	// Upsert writes view rows in one transaction with batched multi-row
	// upserts into plain tables shaped like the views.
	Upsert func(ctx context.Context, ps []store.Package, rs []store.Retention) error
	// Reset empties the baseline's tables.
	Reset func(ctx context.Context) error
}

// Rounds is how many times each benchmark measures both sides; medians are
// reported (the machine is small and noisy).
const Rounds = 3

// benchEvents returns n created events with ~300-byte payloads.
func benchEvents(tb testing.TB, start, n int) []store.Event {
	out := make([]store.Event, n)
	pad := string(make([]byte, 0))
	for range 200 {
		pad += "x"
	}
	for i := range n {
		id := fmt.Sprintf("pkg-%09d", start+i)
		e := Created(tb, id, "bench-"+pad[:150], fmt.Sprintf("1.0.%d", start+i), "bench@example.com")
		out[i] = e
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// drive runs writers goroutines, each committing txs batches of perTx rows
// through fn, and returns rows per second.
func drive(ctx context.Context, writers, txs, perTx int, events []store.Event, fn func(ctx context.Context, rows []store.Event) error) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= txs {
					return
				}
				if err := fn(ctx, events[i*perTx:(i+1)*perTx]); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(txs*perTx) / time.Since(start).Seconds(), nil
}

// BenchAppend measures Append throughput with 1, 100 and 1000 events per
// transaction and 1 and 8 writers, next to the raw multi-row INSERT of the
// same rows, and reports events/s, raw_rows/s and the ratio (medians).
func BenchAppend(b *testing.B, open func(b *testing.B) store.DB, base Baseline, total map[int]int) {
	for _, perTx := range []int{1, 100, 1000} {
		for _, writers := range []int{1, 8} {
			b.Run(fmt.Sprintf("per_tx=%d/writers=%d", perTx, writers), func(b *testing.B) {
				ctx := context.Background()
				n := total[perTx]
				txs := n / perTx
				var got, raw []float64
				for b.Loop() {
					for round := range Rounds {
						db := open(b)
						events := benchEvents(b, round*n, n)
						r, err := drive(ctx, writers, txs, perTx, events, base.Insert)
						if err != nil {
							b.Fatal(err)
						}
						s, err := drive(ctx, writers, txs, perTx, events, func(ctx context.Context, rows []store.Event) error {
							return db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, rows...); return err })
						})
						if err != nil {
							b.Fatal(err)
						}
						raw, got = append(raw, r), append(got, s)
						if err := base.Reset(ctx); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(median(got), "events/s")
				b.ReportMetric(median(raw), "raw_rows/s")
				b.ReportMetric(median(got)/median(raw), "ratio")
			})
		}
	}
}

// AppendFunc commits rows in one transaction, one way or another.
type AppendFunc func(ctx context.Context, rows []store.Event) error

// BenchVersus measures subject and base alternately (which goes first
// alternates too) for rounds rounds, each committing txs transactions of
// perTx fresh events on writers connections, and reports the medians in
// events/s, their ratio, and the median of each round's ratio. start
// keeps the events' package ids apart from other benchmarks' on the same
// log. Each side's first transaction after the other side ran is not
// timed: a writer that expects the head it left (postgres) finds it moved
// by the other side, which no writer of a real log does every few
// transactions.
func BenchVersus(b *testing.B, rounds, writers, txs, perTx, start int, subject, base AppendFunc) {
	ctx := context.Background()
	n := (txs + 1) * perTx
	var got, raw []float64
	for b.Loop() {
		for round := range rounds {
			sides := []struct {
				fn  AppendFunc
				out *[]float64
			}{{subject, &got}, {base, &raw}}
			if round%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
			}
			for i, side := range sides {
				events := benchEvents(b, start+(2*round+i)*n, n)
				if err := side.fn(ctx, events[:perTx]); err != nil {
					b.Fatal(err)
				}
				r, err := drive(ctx, writers, txs, perTx, events[perTx:], side.fn)
				if err != nil {
					b.Fatal(err)
				}
				*side.out = append(*side.out, r)
			}
		}
		start += 2 * rounds * n
	}
	pairs := make([]float64, len(got))
	for i := range got {
		pairs[i] = got[i] / raw[i]
	}
	b.ReportMetric(median(got), "events/s")
	b.ReportMetric(median(raw), "base_events/s")
	b.ReportMetric(median(got)/median(raw), "ratio")
	// Each round's two sides ran back to back: the median of their ratios
	// is less swayed by the machine's load drifting between rounds.
	b.ReportMetric(median(pairs), "round_ratio")
}

// BenchReplay measures Replay of n events (creates, a third finalized)
// next to a raw batched upsert of the same final view rows.
func BenchReplay(b *testing.B, db store.DB, base Baseline, n int) {
	ctx := context.Background()
	events := benchEvents(b, 0, n)
	for i := 0; i < n; i += 3 {
		events = append(events, Finalized(b, events[i].SubjectID, "bench", store.Digest{byte(i)}))
	}
	for chunk := range slices.Chunk(events, 1000) {
		Append(b, db, chunk...)
	}
	var got, raw []float64
	for b.Loop() {
		for range Rounds {
			start := time.Now()
			applied, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true})
			if err != nil || applied != int64(len(events)) {
				b.Fatalf("replay: applied %d of %d: %v", applied, len(events), err)
			}
			got = append(got, float64(len(events))/time.Since(start).Seconds())
			ps, rs := finalRows(b, db)
			start = time.Now()
			if err := base.Upsert(ctx, ps, rs); err != nil {
				b.Fatal(err)
			}
			// The raw side writes the final rows only (it knows the answer);
			// normalise it to events of the log for a like-for-like rate.
			raw = append(raw, float64(len(events))/time.Since(start).Seconds())
			if err := base.Reset(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(median(got), "events/s")
	b.ReportMetric(median(raw), "raw_events/s")
	b.ReportMetric(median(got)/median(raw), "ratio")
}

func finalRows(b *testing.B, db store.DB) ([]store.Package, []store.Retention) {
	var ps []store.Package
	var rs []store.Retention
	after := ""
	for {
		page, err := db.ListPackages(context.Background(), store.PackageFilter{After: after, Limit: 1000})
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range page {
			ps = append(ps, v.Package)
			rs = append(rs, *v.Retention)
		}
		if len(page) < 1000 {
			return ps, rs
		}
		after = page[len(page)-1].ID
	}
}

// BenchFetch measures paging through the whole log with Fetch (pages of
// 1000), in events per second.
func BenchFetch(b *testing.B, db store.DB, n int) {
	ctx := context.Background()
	for chunk := range slices.Chunk(benchEvents(b, 0, n), 1000) {
		Append(b, db, chunk...)
	}
	var got []float64
	for b.Loop() {
		for range Rounds {
			start := time.Now()
			count := 0
			for _, err := range store.All(ctx, db, 0, 1000) {
				if err != nil {
					b.Fatal(err)
				}
				count++
			}
			if count != n {
				b.Fatalf("read %d of %d", count, n)
			}
			got = append(got, float64(n)/time.Since(start).Seconds())
		}
	}
	b.ReportMetric(median(got), "events/s")
}

// BenchVerify measures store.VerifyLog over a log of n events next to
// paging through the same log with Fetch (store.All, pages of 1000, what
// BenchFetch measures), in interleaved rounds, and reports both rates and
// their ratio (medians).
func BenchVerify(b *testing.B, db store.DB, n int) {
	ctx := context.Background()
	for chunk := range slices.Chunk(benchEvents(b, 0, n), 1000) {
		Append(b, db, chunk...)
	}
	fetch := func() error {
		count := 0
		for _, err := range store.All(ctx, db, 0, 1000) {
			if err != nil {
				return err
			}
			count++
		}
		if count != n {
			return fmt.Errorf("read %d of %d", count, n)
		}
		return nil
	}
	verify := func() error {
		res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
		if err == nil && res.To != int64(n) {
			err = fmt.Errorf("verified %d of %d", res.To, n)
		}
		return err
	}
	var got, raw []float64
	for b.Loop() {
		for round := range Rounds * 2 {
			sides := []struct {
				fn  func() error
				out *[]float64
			}{{verify, &got}, {fetch, &raw}}
			if round%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
			}
			for _, side := range sides {
				start := time.Now()
				if err := side.fn(); err != nil {
					b.Fatal(err)
				}
				*side.out = append(*side.out, float64(n)/time.Since(start).Seconds())
			}
		}
	}
	b.ReportMetric(median(got), "events/s")
	b.ReportMetric(median(raw), "fetch_events/s")
	b.ReportMetric(median(got)/median(raw), "ratio")
}
