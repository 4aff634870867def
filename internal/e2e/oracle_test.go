package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// verdict is one check in Jepsen's terms.
type verdict struct {
	Check        string   `json:"check"`
	Acknowledged int      `json:"acknowledged"`
	Attempted    int      `json:"attempted"`
	Committed    int      `json:"committed"`
	Lost         int      `json:"lost"`
	Duplicated   int      `json:"duplicated"`
	Unexpected   int      `json:"unexpected"`
	Recovered    int      `json:"recovered"`
	Reordered    int      `json:"reordered,omitempty"`
	Notes        []string `json:"notes,omitempty"`
}

func (v *verdict) note(format string, args ...any) {
	if len(v.Notes) < 10 {
		v.Notes = append(v.Notes, fmt.Sprintf(format, args...))
	}
}

func (v verdict) ok() bool {
	return v.Lost == 0 && v.Duplicated == 0 && v.Unexpected == 0 && v.Reordered == 0
}

func (v verdict) String() string {
	var s string
	switch v.Check {
	case "O2": // rows: Acknowledged = built by the projectors, Committed = built by the replay
		s = fmt.Sprintf("O2   projector rows=%d replay rows=%d lost=%d duplicated=%d unexpected=%d",
			v.Acknowledged, v.Committed, v.Lost, v.Duplicated, v.Unexpected)
	case "O1": // events: Committed = in the log
		s = fmt.Sprintf("O1   committed=%d stream messages=%d lost=%d duplicated=%d unexpected=%d",
			v.Committed, v.Attempted, v.Lost, v.Duplicated, v.Unexpected)
	default:
		s = fmt.Sprintf("%-4s attempted=%d acknowledged=%d committed=%d lost=%d duplicated=%d unexpected=%d recovered=%d",
			v.Check, v.Attempted, v.Acknowledged, v.Committed, v.Lost, v.Duplicated, v.Unexpected, v.Recovered)
	}
	if v.Reordered > 0 {
		s += fmt.Sprintf(" reordered=%d", v.Reordered)
	}
	if len(v.Notes) > 0 {
		s += "\n      " + strings.Join(v.Notes, "\n      ")
	}
	return s
}

// readLog returns every committed event, in order.
func readLog(ctx context.Context, db store.DB) ([]store.Event, error) {
	var all []store.Event
	var after int64
	for {
		batch, err := db.Fetch(ctx, after, 5000)
		if err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			return all, nil
		}
		all = append(all, batch...)
		after = batch[len(batch)-1].Sequence
	}
}

// checkAcks compares what clients attempted with the log: every
// acknowledged command is in the log at the sequence its reply named.
func checkAcks(ops []*op, log []store.Event) verdict {
	v := verdict{Check: "acks", Committed: len(log)}
	bySeq := map[int64]store.Event{}
	creates := map[string][]store.Event{} // name@version
	finals := map[string][]store.Event{}  // package id
	for _, e := range log {
		bySeq[e.Sequence] = e
		switch e.Type {
		case "v1.package.created":
			var p store.PackageCreated
			if err := json.Unmarshal(e.Payload, &p); err != nil {
				v.Unexpected++
				v.note("event %d: undecodable created payload: %v", e.Sequence, err)
				continue
			}
			creates[p.Name+"@"+p.Version] = append(creates[p.Name+"@"+p.Version], e)
		case "v1.package.finalized":
			finals[e.SubjectID] = append(finals[e.SubjectID], e)
		default:
			v.Unexpected++
			v.note("event %d: unexpected type %s", e.Sequence, e.Type)
		}
	}
	attemptedCreates := map[string]bool{}
	attemptedFinals := map[string]bool{}
	for _, o := range ops {
		v.Attempted++
		var found []store.Event
		if o.kind == "create" {
			attemptedCreates[o.name+"@"+o.version] = true
			found = creates[o.name+"@"+o.version]
		} else {
			attemptedFinals[o.packageID] = true
			found = finals[o.packageID]
		}
		if len(found) > 1 {
			v.Duplicated += len(found) - 1
			v.note("%s %s appended %d times", o.kind, o.commandID, len(found))
		}
		if !o.acked {
			if len(found) > 0 {
				v.Recovered++
			}
			continue
		}
		v.Acknowledged++
		e, ok := bySeq[o.reply.Sequence]
		switch {
		case !ok:
			v.Lost++
			v.note("acknowledged %s %s (sequence %d) is not in the log", o.kind, o.commandID, o.reply.Sequence)
		case e.Type != o.reply.EventType || e.SubjectID != o.reply.PackageID || (o.kind == "finalize" && e.SubjectID != o.packageID):
			v.Lost++
			v.note("acknowledged %s %s: sequence %d holds %s %s", o.kind, o.commandID, o.reply.Sequence, e.Type, e.SubjectID)
		case o.kind == "create" && (len(found) == 0 || found[0].Sequence != e.Sequence):
			v.Lost++
			v.note("acknowledged create %s: sequence %d is another package", o.commandID, e.Sequence)
		case !e.CreatedAt.Equal(o.reply.CreatedAt):
			v.Unexpected++
			v.note("acknowledged %s %s: created_at %s in the reply, %s in the log", o.kind, o.commandID, o.reply.CreatedAt, e.CreatedAt)
		}
	}
	for k, es := range creates {
		if !attemptedCreates[k] {
			v.Unexpected += len(es)
			v.note("create of %s in the log (sequence %d) was never attempted", k, es[0].Sequence)
		}
	}
	for k, es := range finals {
		if !attemptedFinals[k] {
			v.Unexpected += len(es)
			v.note("finalize of %s in the log (sequence %d) was never attempted", k, es[0].Sequence)
		}
	}
	return v
}

// streamMsg is one stored message of the events stream.
type streamMsg struct {
	seq     uint64
	subject string
	header  map[string][]string
	data    []byte
}

// readStream reads every message of the stream, in stream order.
func readStream(ctx context.Context, js jetstream.JetStream, stream string) ([]streamMsg, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info := s.CachedInfo()
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, err
	}
	it, err := c.Messages(jetstream.PullMaxMessages(2000))
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	var out []streamMsg
	for {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		m, err := it.Next()
		if err != nil {
			return out, err
		}
		md, err := m.Metadata()
		if err != nil {
			return out, err
		}
		out = append(out, streamMsg{seq: md.Sequence.Stream, subject: m.Subject(), header: m.Headers(), data: m.Data()})
		if md.Sequence.Stream >= last {
			return out, nil
		}
	}
}

// checkStream is O1: the stream holds every committed event exactly once,
// in sequence order, with correct headers and digests, each in its
// partition (Artifactstore-Partition = wire.Partition(subject id, parts),
// also the subject's last token) and naming its partition's previous event
// in the log (Artifactstore-Partition-Previous). A message that decodes
// but differs from the log in any of these is unexpected, not seen.
func checkStream(msgs []streamMsg, log []store.Event, logID string, parts int) verdict {
	v := verdict{Check: "O1", Committed: len(log), Attempted: len(msgs)}
	bySeq := make(map[int64]store.Event, len(log))
	for _, e := range log {
		bySeq[e.Sequence] = e
	}
	previous := partitionPrevious(log, parts)
	seen := map[int64]int{}
	var prev int64
	for _, m := range msgs {
		wm, err := wire.Decode(m.subject, m.header, m.data)
		if err != nil {
			v.Unexpected++
			v.note("stream message %d: %v", m.seq, err)
			continue
		}
		e := wm.Event
		if wm.LogID != logID {
			v.Unexpected++
			v.note("stream message %d: log id %s, want %s", m.seq, wm.LogID, logID)
			continue
		}
		want, ok := bySeq[e.Sequence]
		if !ok {
			v.Unexpected++
			v.note("stream message %d: event %d is not in the log", m.seq, e.Sequence)
			continue
		}
		if diff := eventDiff(want, e); diff != "" {
			v.Unexpected++
			v.note("stream message %d: event %d differs from the log: %s", m.seq, e.Sequence, diff)
			continue
		}
		if p := wire.Partition(e.SubjectID, parts); wm.Partition != p {
			v.Unexpected++
			v.note("stream message %d: event %d in partition %d, its subject id's is %d of %d", m.seq, e.Sequence, wm.Partition, p, parts)
			continue
		}
		if wm.Previous != previous[e.Sequence] {
			v.Unexpected++
			v.note("stream message %d: event %d names %d as its partition's previous event, the log's is %d",
				m.seq, e.Sequence, wm.Previous, previous[e.Sequence])
			continue
		}
		seen[e.Sequence]++
		if seen[e.Sequence] > 1 {
			v.Duplicated++
			v.note("stream message %d: event %d again", m.seq, e.Sequence)
			continue
		}
		if e.Sequence <= prev {
			v.Reordered++
			v.note("stream message %d: event %d after event %d", m.seq, e.Sequence, prev)
		}
		prev = max(prev, e.Sequence)
	}
	for _, e := range log {
		if seen[e.Sequence] == 0 {
			v.Lost++
			v.note("event %d (%s %s) is not in the stream", e.Sequence, e.Type, e.SubjectID)
		}
	}
	v.Acknowledged = len(log)
	return v
}

// partitionPrevious maps each event of log to the previous event of its
// partition among parts (0 for a partition's first).
func partitionPrevious(log []store.Event, parts int) map[int64]int64 {
	out := make(map[int64]int64, len(log))
	last := map[int]int64{}
	for _, e := range log {
		p := wire.Partition(e.SubjectID, parts)
		out[e.Sequence], last[p] = last[p], e.Sequence
	}
	return out
}

// eventDiff names the first field in which got differs from want.
func eventDiff(want, got store.Event) string {
	switch {
	case want.Type != got.Type:
		return "type"
	case want.SubjectKind != got.SubjectKind:
		return "subject kind"
	case want.SubjectID != got.SubjectID:
		return "subject id"
	case want.Actor != got.Actor:
		return "actor"
	case !bytes.Equal(want.Payload, got.Payload):
		return "payload"
	case want.PayloadDigest != got.PayloadDigest:
		return "payload digest"
	case !want.CreatedAt.Equal(got.CreatedAt):
		return fmt.Sprintf("created_at %s, want %s", got.CreatedAt, want.CreatedAt)
	}
	return ""
}

// awaitCaughtUp waits until the stream holds the log head and every
// projection partition's checkpoint covers the last log event of that
// partition, with no partition parked.
func awaitCaughtUp(ctx context.Context, e *env, js jetstream.JetStream) error {
	var last string
	for {
		ok, why, err := caughtUp(ctx, e, js)
		if err == nil && ok {
			return nil
		}
		if err != nil {
			why = err.Error()
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("not caught up: %s", last)
		case <-time.After(50 * time.Millisecond): // poll interval
		}
	}
}

func caughtUp(ctx context.Context, e *env, js jetstream.JetStream) (bool, string, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := relay.ReadStatus(qctx, e.db, js, relay.DefaultStream)
	if err != nil {
		return false, "", err
	}
	if st.Lag != 0 {
		return false, fmt.Sprintf("relay lag %d (stream at %d, head %d)", st.Lag, st.Sequence, st.Head), nil
	}
	need, err := partitionHeads(qctx, e.db, e.parts, st.Head)
	if err != nil {
		return false, "", err
	}
	ps, err := projector.Inspect(qctx, e.db, projector.DefaultProjection)
	if err != nil {
		return false, "", err
	}
	if ps.ParkedPartitions > 0 {
		return false, fmt.Sprintf("%d partitions parked", ps.ParkedPartitions), nil
	}
	have := map[int]int64{}
	for _, p := range ps.Partitions {
		have[p.Partition] = p.Checkpoint
	}
	for p, n := range need {
		if have[p] < n {
			return false, fmt.Sprintf("partition %d at %d, its last event is %d", p, have[p], n), nil
		}
	}
	return true, "", nil
}

// partitionHeads returns, per partition, the last log event up to head.
func partitionHeads(ctx context.Context, db store.DB, partitions int, head int64) (map[int]int64, error) {
	out := map[int]int64{}
	var after int64
	for after < head {
		keys, err := db.FetchKeys(ctx, after, head, 10000)
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			out[wire.Partition(k.SubjectID, partitions)] = k.Sequence
		}
		after = keys[len(keys)-1].Sequence
	}
	return out, nil
}

// checkViews is O2: the views the projectors built equal a replay of the
// log. The projectors must be stopped.
func checkViews(ctx context.Context, db store.DB, partitions int) (verdict, error) {
	v := verdict{Check: "O2"}
	built, err := db.DumpViews(ctx)
	if err != nil {
		return v, err
	}
	applied, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: partitions})
	if err != nil {
		return v, err
	}
	replayed, err := db.DumpViews(ctx)
	if err != nil {
		return v, err
	}
	a, b := splitLines(built), splitLines(replayed)
	v.Committed = len(b)
	v.Acknowledged = len(a)
	inA := map[string]int{}
	for _, l := range a {
		inA[l]++
	}
	inB := map[string]int{}
	for _, l := range b {
		inB[l]++
	}
	for l, n := range inB {
		if inA[l] < n {
			v.Lost += n - inA[l]
			v.note("replay has a row the projectors lack: %.200s", l)
		}
	}
	for l, n := range inA {
		if inB[l] < n {
			v.Unexpected += n - inB[l]
			v.note("projectors have a row the replay lacks: %.200s", l)
		}
	}
	if built != replayed && v.ok() {
		v.Reordered++
		v.note("dumps differ in order only")
	}
	v.note("replay applied up to sequence %d; %d view rows", applied, len(b))
	return v, nil
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// projectionState describes, for a failure report, each partition's
// checkpoint against its last event in the log, parked records and lease
// holders.
func projectionState(ctx context.Context, e *env) string {
	head, err := e.db.Head(ctx)
	if err != nil {
		return err.Error()
	}
	need, err := partitionHeads(ctx, e.db, e.parts, head)
	if err != nil {
		return err.Error()
	}
	ps, err := projector.Inspect(ctx, e.db, projector.DefaultProjection)
	if err != nil {
		return err.Error()
	}
	holders, err := e.db.LeaseHolders(ctx, projector.DefaultProjection)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "head %d, %d partitions parked", head, ps.ParkedPartitions)
	for _, p := range ps.Partitions {
		fmt.Fprintf(&b, "\n  partition %2d: checkpoint %d, last event %d, lease %q", p.Partition, p.Checkpoint, need[p.Partition], holders[p.Partition])
		if p.Parked != nil {
			fmt.Fprintf(&b, ", parked on %d (%s: %s)", p.Parked.Sequence, p.Parked.Reason, p.Parked.Error)
		}
	}
	return b.String()
}
