package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvChaos selects the chaos suite's mode: "long" (make chaos) runs every
// scenario for longer with more faults; "off" skips it; anything else (and
// go test -short) runs the short mode that make test and CI run.
const EnvChaos = "ARTIFACTSTORE_CHAOS"

type chaosMode struct {
	name string
	// load is how long load runs (and faults are injected) per scenario.
	load time.Duration
	// rate is the offered load in commands per second.
	rate    float64
	clients int
	// gap bounds the random pause between two faults.
	gapMin, gapMax time.Duration
	// catchUp bounds the wait for the pipeline to drain after the faults.
	catchUp time.Duration
}

func currentMode(t *testing.T) chaosMode {
	switch m := os.Getenv(EnvChaos); {
	case m == "off":
		t.Skipf("%s=off", EnvChaos)
	case m == "long" && !testing.Short():
		return chaosMode{name: "long", load: 45 * time.Second, rate: 600, clients: 16,
			gapMin: 500 * time.Millisecond, gapMax: 3 * time.Second, catchUp: 3 * time.Minute}
	}
	return chaosMode{name: "short", load: 5 * time.Second, rate: 250, clients: 8,
		gapMin: 300 * time.Millisecond, gapMax: 1500 * time.Millisecond, catchUp: 90 * time.Second}
}

// faultLog counts the faults a scenario injected.
type faultLog struct {
	mu     sync.Mutex
	counts map[string]int
	events []string
	start  time.Time
}

func (f *faultLog) add(kind, format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[kind]++
	f.events = append(f.events, fmt.Sprintf("%6.2fs %s: %s", time.Since(f.start).Seconds(), kind, fmt.Sprintf(format, args...)))
}

func (f *faultLog) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.counts {
		n += c
	}
	return n
}

func (f *faultLog) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ks []string
	for k, n := range f.counts {
		ks = append(ks, fmt.Sprintf("%s×%d", k, n))
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}

// fault injects one kind of fault; it returns once the fault is over
// (processes handed back to supervision).
type fault func(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error

// randDur returns a random duration in [lo, hi).
func randDur(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

func killService(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	ps := e.services()
	p := ps[rng.IntN(len(ps))]
	if err := p.kill(); err != nil {
		return err
	}
	down := randDur(rng, 0, time.Second)
	log.add("sigkill", "%s, down %s", p.name, down.Round(time.Millisecond))
	sleepCtx(ctx, down)
	p.setWant(true)
	return nil
}

func pauseService(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	ps := e.services()
	p := ps[rng.IntN(len(ps))]
	p.pause()
	d := randDur(rng, 200*time.Millisecond, 4*time.Second)
	log.add("sigstop", "%s for %s", p.name, d.Round(time.Millisecond))
	sleepCtx(context.Background(), d) // a pause always ends with SIGCONT
	p.resume()
	return nil
}

func restartNATS(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	n := e.nats[rng.IntN(len(e.nats))]
	if err := n.kill(); err != nil {
		return err
	}
	down := randDur(rng, 100*time.Millisecond, 2*time.Second)
	log.add("nats-restart", "%s SIGKILLed, down %s", n.name, down.Round(time.Millisecond))
	sleepCtx(ctx, down)
	n.setWant(true)
	return n.waitReady(60 * time.Second)
}

func restartPostgres(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	down := randDur(rng, 100*time.Millisecond, 2*time.Second)
	log.add("pg-restart", "pg_ctl stop -m fast, down %s", down.Round(time.Millisecond))
	return e.pg.restart(down)
}

func relayOutage(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	for _, p := range e.relays {
		if err := p.kill(); err != nil {
			return err
		}
	}
	// Longer than the stream's 1s duplicate window.
	down := randDur(rng, 2*time.Second, 4*time.Second)
	log.add("relay-outage", "every relay SIGKILLed, down %s (duplicate window %s)", down.Round(time.Millisecond), e.opts.dupWindow)
	sleepCtx(context.Background(), down)
	for _, p := range e.relays {
		p.setWant(true)
	}
	return nil
}

func killLeader(ctx context.Context, e *env, rng *rand.Rand, log *faultLog) error {
	nc, js := e.connect(e.t)
	defer nc.Close()
	var leader *natsNode
	deadline := time.Now().Add(30 * time.Second)
	for {
		qctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l, err := e.leader(qctx, js)
		cancel()
		if err == nil {
			leader = l
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("finding the stream leader: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := leader.kill(); err != nil {
		return err
	}
	down := randDur(rng, 500*time.Millisecond, 3*time.Second)
	log.add("leader-kill", "stream leader %s SIGKILLed, down %s", leader.name, down.Round(time.Millisecond))
	sleepCtx(ctx, down)
	leader.setWant(true)
	return leader.waitReady(60 * time.Second)
}

// sleepCtx waits d or until ctx ends (fault timing, not synchronisation).
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// scenario is one chaos run: a deployment, load, and faults.
type scenario struct {
	name     string
	cluster  bool // 3-node NATS cluster, R3 stream
	faults   []fault
	longOnly bool
}

var scenarios = []scenario{
	{name: "sigkill-services", faults: []fault{killService}},
	{name: "sigstop-services", faults: []fault{pauseService}},
	{name: "nats-restart", faults: []fault{restartNATS}},
	{name: "postgres-restart", faults: []fault{restartPostgres}},
	{name: "relay-outage", faults: []fault{relayOutage}},
	{name: "cluster-leader-kill", cluster: true, faults: []fault{killLeader}},
	{name: "cluster-mixed", cluster: true, longOnly: true,
		faults: []fault{killService, pauseService, killLeader, restartNATS, restartPostgres, relayOutage}},
}

// result is one scenario's outcome.
type result struct {
	scenario string
	faults   *faultLog
	verdicts []verdict
	err      error
	took     time.Duration
	restarts map[string]int
	crashes  map[string]int
	retries  int64
}

func (r result) ok() bool {
	if r.err != nil {
		return false
	}
	for _, v := range r.verdicts {
		if !v.ok() {
			return false
		}
	}
	return true
}

func TestChaos(t *testing.T) {
	mode := currentMode(t)
	start := time.Now()
	pg := newPG(t)
	var results []result
	for i, sc := range scenarios {
		if sc.longOnly && mode.name != "long" {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			r := runScenario(t, pg, fmt.Sprintf("chaos%d", i), sc, mode, envOptions{})
			results = append(results, r)
			logResult(t, r)
			if !r.ok() {
				t.Errorf("chaos %s failed", sc.name)
			}
		})
	}
	t.Logf("chaos %s mode: %d scenarios in %s", mode.name, len(results), time.Since(start).Round(time.Second))
	t.Log(summaryTable(results))
}

func logResult(t testing.TB, r result) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "scenario %s: %d faults (%s), %s, client retries %d, supervisor restarts %v, unrequested exits %v\n",
		r.scenario, r.faults.total(), r.faults.summary(), r.took.Round(time.Millisecond), r.retries, r.restarts, r.crashes)
	r.faults.mu.Lock()
	for _, ev := range r.faults.events {
		fmt.Fprintf(&b, "  fault %s\n", ev)
	}
	r.faults.mu.Unlock()
	for _, v := range r.verdicts {
		fmt.Fprintf(&b, "  %s\n", v)
	}
	if r.err != nil {
		fmt.Fprintf(&b, "  error: %v\n", r.err)
	}
	t.Log(b.String())
}

func summaryTable(rs []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| scenario | faults | acknowledged | committed | lost | duplicated | unexpected | recovered | O1 | O2 |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		var acks, o1, o2 verdict
		for _, v := range r.verdicts {
			switch v.Check {
			case "acks":
				acks = v
			case "O1":
				o1 = v
			case "O2":
				o2 = v
			}
		}
		mark := func(v verdict) string {
			if v.Check == "" {
				return "not run"
			}
			if v.ok() {
				return "pass"
			}
			return "FAIL"
		}
		fmt.Fprintf(&b, "| %s | %d (%s) | %d | %d | %d | %d | %d | %d | %s | %s |\n", r.scenario, r.faults.total(), r.faults.summary(),
			acks.Acknowledged, acks.Committed, acks.Lost+o1.Lost+o2.Lost, acks.Duplicated+o1.Duplicated+o2.Duplicated,
			acks.Unexpected+o1.Unexpected+o2.Unexpected, acks.Recovered, mark(o1), mark(o2))
	}
	return b.String()
}

// runScenario starts a deployment, runs load while injecting the
// scenario's faults, heals everything and checks the oracles.
func runScenario(t *testing.T, pg *pgServer, db string, sc scenario, mode chaosMode, opts envOptions) result {
	t.Helper()
	began := time.Now()
	if sc.cluster {
		opts.natsNodes = 3
	}
	e := startEnv(t, pg, db, opts)
	r := result{scenario: sc.name, faults: &faultLog{start: time.Now()}}
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	t.Logf("scenario %s: seed %d", sc.name, seed)

	l := newLoad(t, e, loadOptions{clients: mode.clients, rate: mode.rate, attemptTimeout: 3 * time.Second})
	stop := make(chan struct{})
	giveUp, cancelGiveUp := context.WithTimeout(context.Background(), mode.load+mode.catchUp)
	defer cancelGiveUp()
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		l.run(stop, giveUp)
	}()

	// Faults, one after another at random gaps, while the load runs.
	fctx, fcancel := context.WithTimeout(context.Background(), mode.load)
	var faultErr error
	for fctx.Err() == nil && faultErr == nil {
		sleepCtx(fctx, randDur(rng, mode.gapMin, mode.gapMax))
		if fctx.Err() != nil && r.faults.total() > 0 {
			break
		}
		f := sc.faults[rng.IntN(len(sc.faults))]
		faultErr = f(fctx, e, rng, r.faults)
	}
	fcancel()
	close(stop)

	finish := func(err error) result {
		r.err = err
		r.took = time.Since(began)
		r.retries = l.retries.Load()
		e.restartsMu.Lock()
		r.restarts = copyMap(e.restarts)
		e.restartsMu.Unlock()
		r.crashes = e.crashes()
		return r
	}
	if faultErr != nil {
		return finish(fmt.Errorf("injecting a fault: %w", faultErr))
	}
	if err := e.healAll(90 * time.Second); err != nil {
		return finish(fmt.Errorf("healing: %w", err))
	}
	select {
	case <-loadDone:
	case <-giveUp.Done():
		<-loadDone
	}

	var err error
	r.verdicts, err = verify(t, e, l.snapshot(), mode.catchUp)
	return finish(err)
}

// verify awaits the pipeline (relay and every partition at the log head,
// nothing parked, bounded by catchUp), then checks the oracles: acks
// against ops, O1 on the stream and, with the projectors stopped, O2. The
// error is that of awaiting or of reading; the verdicts say what the
// oracles found.
func verify(t testing.TB, e *env, ops []*op, catchUp time.Duration) ([]verdict, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), catchUp)
	defer cancel()
	nc, js := e.connect(t)
	defer nc.Close()
	catchErr := awaitCaughtUp(ctx, e, js)

	octx, ocancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer ocancel()
	mark := time.Now()
	lap := func(what string) {
		t.Logf("verify: %s took %s", what, time.Since(mark).Round(time.Millisecond))
		mark = time.Now()
	}
	log, err := readLog(octx, e.db)
	if err != nil {
		return nil, fmt.Errorf("reading the log: %w", err)
	}
	logID, err := e.db.LogID(octx)
	if err != nil {
		return nil, err
	}
	var vs []verdict
	if ops != nil {
		vs = append(vs, checkAcks(ops, log))
	}
	msgs, err := readStream(octx, js, "ARTIFACTSTORE_EVENTS")
	if err != nil {
		return vs, fmt.Errorf("reading the stream: %w", err)
	}
	vs = append(vs, checkStream(msgs, log, logID, e.parts))
	lap("reading the log and the stream, acks and O1")
	if catchErr != nil {
		// Diagnose before the projectors leave and O2's replay rewrites the
		// checkpoints.
		t.Logf("diagnostic (not an oracle): %s", projectionState(octx, e))
	}
	for _, p := range e.services() {
		if strings.HasPrefix(p.name, "projector-") {
			if err := p.stop(20 * time.Second); err != nil {
				return vs, err
			}
		}
	}
	lap("stopping the projectors")
	v, err := checkViews(octx, e.db, e.parts)
	if err != nil {
		return vs, fmt.Errorf("O2: %w", err)
	}
	vs = append(vs, v)
	lap("O2")
	if catchErr != nil {
		return vs, fmt.Errorf("awaiting the pipeline: %w", catchErr)
	}
	return vs, nil
}

func copyMap(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
