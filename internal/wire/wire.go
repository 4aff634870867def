// Package wire is the events stream's message format (DESIGN.md, "The
// events stream"): the stream's name, its subjects and the headers every
// event message carries, Encode and Decode. The relay writes it; the
// projector and the client read it, so all three hold messages to one
// contract.
package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/store"
)

// StreamName is the events stream's default name.
const StreamName = "ARTIFACTSTORE_EVENTS"

// The headers of every event message (DESIGN.md, "The events stream").
const (
	HeaderMsgID         = jetstream.MsgIDHeader // <log_id>-<sequence>
	HeaderSequence      = "Artifactstore-Sequence"
	HeaderEventType     = "Artifactstore-Event-Type"
	HeaderSubjectKind   = "Artifactstore-Subject-Kind"
	HeaderSubjectID     = "Artifactstore-Subject-Id"
	HeaderActor         = "Artifactstore-Actor"
	HeaderPayloadDigest = "Artifactstore-Payload-Digest"
	HeaderCreatedAt     = "Artifactstore-Created-At"
	HeaderLogID         = "Artifactstore-Log-Id"
	HeaderPartition     = "Artifactstore-Partition"
	// HeaderPartitionPrevious is the log sequence of the previous event of
	// the same partition (0 for its first): a reader of one partition knows
	// from each message alone whether it missed a predecessor.
	HeaderPartitionPrevious = "Artifactstore-Partition-Previous"
	// HeaderChainDigest is the event's chain digest (store.ChainDigest), 64
	// lowercase hex: a reader of consecutive events checks each against
	// the one before it (ChainCheck). Messages relayed before the log had
	// a chain (migration 00008) lack it.
	HeaderChainDigest = "Artifactstore-Chain-Digest"
)

// SubjectPrefix starts every event subject.
const SubjectPrefix = "artifactstore.events."

// Subjects is the events stream's subject pattern.
const Subjects = SubjectPrefix + ">"

// CreatedAtLayout is the format of Artifactstore-Created-At: RFC 3339 in
// UTC with exactly nine fractional digits.
const CreatedAtLayout = "2006-01-02T15:04:05.000000000Z07:00"

// DefaultPartitions is a new log's partition count.
const DefaultPartitions = 16

// MaxPartitions bounds a log's partition count.
const MaxPartitions = 1024

// Partition returns the partition of subjectID among n: FNV-1a-32 of the
// subject id modulo n, the same function as nats-server's partition()
// subject mapping, so a stream transform and this function agree.
func Partition(subjectID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(subjectID); i++ {
		h ^= uint32(subjectID[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// Subject returns the stream subject of e in partition p:
// artifactstore.events.<event_type>.<subject_id>.<p>.
func Subject(e store.Event, p int) string {
	return SubjectPrefix + e.Type + "." + e.SubjectID + "." + strconv.Itoa(p)
}

// PartitionFilter is the subject filter of partition p's messages.
func PartitionFilter(p int) string { return SubjectPrefix + "*.*.*.*." + strconv.Itoa(p) }

// Message is an event as the stream carries it.
type Message struct {
	Event store.Event
	// LogID is the id of the log the event comes from.
	LogID string
	// Partition is the event's partition (the subject's last token).
	Partition int
	// Previous is the sequence of the previous event of the same partition
	// in the log, 0 when the event is its partition's first.
	Previous int64
}

// Encode returns the stream message of m: its subject, the payload as body
// and every header of the contract, with room for extra more headers (the
// relay adds its fencing header).
func Encode(m Message, extra int) *nats.Msg {
	e := m.Event
	seq := strconv.FormatInt(e.Sequence, 10)
	// One backing array for every header's value slice.
	v := [...]string{
		m.LogID + "-" + seq,
		seq,
		e.Type,
		e.SubjectKind,
		e.SubjectID,
		e.Actor,
		e.PayloadDigest.String(),
		e.CreatedAt.UTC().Format(CreatedAtLayout),
		m.LogID,
		strconv.Itoa(m.Partition),
		strconv.FormatInt(m.Previous, 10),
	}
	h := make(nats.Header, len(v)+1+extra)
	for i, name := range headerNames {
		h[name] = v[i : i+1 : i+1]
	}
	if e.ChainDigest != (store.Digest{}) {
		h[HeaderChainDigest] = []string{e.ChainDigest.String()}
	}
	return &nats.Msg{Subject: Subject(e, m.Partition), Data: e.Payload, Header: h}
}

// headerNames lists the event headers in the order Encode fills them.
var headerNames = [...]string{HeaderMsgID, HeaderSequence, HeaderEventType, HeaderSubjectKind, HeaderSubjectID,
	HeaderActor, HeaderPayloadDigest, HeaderCreatedAt, HeaderLogID, HeaderPartition, HeaderPartitionPrevious}

// Decode parses a message of the events stream back into its event. It
// checks that the message is consistent: the subject matches the type,
// subject id and partition, Nats-Msg-Id matches the log id and sequence,
// the previous sequence is below the sequence, and the digest matches the
// body. It cannot check the partition against the log's partition count,
// which it does not know, nor the chain digest, which depends on the
// message before (ChainCheck). A message without a chain digest header
// decodes with the zero ChainDigest. Errors wrap ErrInvalidMessage.
func Decode(subject string, h nats.Header, data []byte) (Message, error) {
	if len(data) == 0 {
		// The log refuses empty payloads: no event has an empty body.
		return Message{}, invalid("empty body")
	}
	var vals [len(headerNames)]string
	for i, name := range headerNames {
		v := h.Values(name)
		if len(v) != 1 {
			return Message{}, invalid("header %s appears %d times, want once", name, len(v))
		}
		vals[i] = v[0]
	}
	m, err := decodeIdentity(vals)
	if err != nil {
		return Message{}, err
	}
	if want := Subject(m.Event, m.Partition); subject != want {
		return Message{}, invalid("subject %q does not match type, subject id and partition (%q)", subject, want)
	}
	e := &m.Event
	if e.PayloadDigest, err = store.ParseDigest(vals[6]); err != nil {
		return Message{}, invalid("%s: %v", HeaderPayloadDigest, err)
	}
	if store.DigestOf(data) != e.PayloadDigest {
		return Message{}, invalid("%s does not match the body", HeaderPayloadDigest)
	}
	at, err := time.Parse(CreatedAtLayout, vals[7])
	if err != nil || !strings.HasSuffix(vals[7], "Z") {
		return Message{}, invalid("%s %q is not RFC 3339 UTC with nanoseconds", HeaderCreatedAt, vals[7])
	}
	e.CreatedAt = at.UTC()
	e.Payload = data
	if e.ChainDigest, err = decodeChain(h.Values(HeaderChainDigest)); err != nil {
		return Message{}, err
	}
	return m, nil
}

// decodeChain parses the chain digest header: absent (a message relayed
// before the log had a chain) or exactly once, 64 lowercase hex, not zero.
func decodeChain(v []string) (store.Digest, error) {
	switch len(v) {
	case 0:
		return store.Digest{}, nil
	case 1:
	default:
		return store.Digest{}, invalid("header %s appears %d times, want at most once", HeaderChainDigest, len(v))
	}
	d, err := store.ParseDigest(v[0])
	if err != nil {
		return d, invalid("%s: %v", HeaderChainDigest, err)
	}
	if d == (store.Digest{}) {
		return d, invalid("%s is zero", HeaderChainDigest)
	}
	return d, nil
}

// decodeIdentity checks and parses the headers that identify the event:
// sequence, log id, type, subject, actor, partition and predecessor.
func decodeIdentity(vals [len(headerNames)]string) (Message, error) {
	var m Message
	e := &m.Event
	msgID, seq, logID := vals[0], vals[1], vals[8]
	e.Type, e.SubjectKind, e.SubjectID, e.Actor = vals[2], vals[3], vals[4], vals[5]
	n, ok := parseDecimal(seq, 1)
	if !ok {
		return Message{}, invalid("%s %q is not a positive decimal sequence", HeaderSequence, seq)
	}
	e.Sequence = n
	if logID == "" {
		return Message{}, invalid("%s is empty", HeaderLogID)
	}
	m.LogID = logID
	if want := store.MsgID(logID, n); msgID != want {
		return Message{}, invalid("%s %q does not match log id and sequence (%q)", HeaderMsgID, msgID, want)
	}
	if !store.ValidEventType(e.Type) {
		return Message{}, invalid("%s %q is not three subject tokens", HeaderEventType, e.Type)
	}
	if !store.ValidToken(e.SubjectKind) {
		return Message{}, invalid("%s %q is not a subject token", HeaderSubjectKind, e.SubjectKind)
	}
	if !store.ValidToken(e.SubjectID) {
		return Message{}, invalid("%s %q is not a subject token", HeaderSubjectID, e.SubjectID)
	}
	if e.Actor == "" || strings.TrimSpace(e.Actor) != e.Actor || strings.ContainsFunc(e.Actor, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return Message{}, invalid("%s %q is empty, padded or holds control characters", HeaderActor, e.Actor)
	}
	p, ok := parseDecimal(vals[9], 0)
	if !ok || p >= MaxPartitions {
		return Message{}, invalid("%s %q is not a partition number below %d", HeaderPartition, vals[9], MaxPartitions)
	}
	m.Partition = int(p)
	if m.Previous, ok = parseDecimal(vals[10], 0); !ok || m.Previous >= n {
		return Message{}, invalid("%s %q is not a decimal sequence below %d", HeaderPartitionPrevious, vals[10], n)
	}
	return m, nil
}

// parseDecimal parses a canonical decimal of at least lowest.
func parseDecimal(s string, lowest int64) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= lowest && strconv.FormatInt(n, 10) == s
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
}

// ErrInvalidMessage is wrapped by every error of Decode.
var ErrInvalidMessage = errors.New("wire: invalid event message")
