package store

import (
	"encoding/binary"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/guts"
)

// ChainHead is where the log's hash chain stands: the sequence of its last
// committed event and that event's chain digest (0 and the zero digest for
// an empty log).
type ChainHead struct {
	Sequence int64  `json:"sequence"`
	Digest   Digest `json:"chain_digest"`
}

// ChainDigest returns the chain digest of e given prev, the chain digest of
// the event before it (the zero Digest before the log's first event):
// BLAKE3-256 of the canonical encoding
//
//	event_type      uint32 big-endian byte length, then the bytes
//	subject_kind    uint32 big-endian byte length, then the bytes
//	subject_id      uint32 big-endian byte length, then the bytes
//	actor           uint32 big-endian byte length, then the bytes
//	payload_digest  32 bytes
//	zero bytes up to the next multiple of 64 bytes
//	sequence        int64 big-endian
//	created_at      int64 big-endian: nanoseconds since the Unix epoch
//	prev            32 bytes
//
// Every field is what the stream's headers carry (created_at is the
// instant Artifactstore-Created-At names), so a downstream reader
// recomputes it from the headers alone. The fields the writer knows come
// first, padded to BLAKE3's 64-byte block, so that a writer can hash them
// before the log assigns the rest (PrepareChain) and finish each digest
// with one block under the log's lock. e.ChainDigest is not read.
func ChainDigest(prev Digest, e Event) Digest {
	p := prepare(e)
	return p.finish(prev, e)
}

// ChainInput returns the bytes ChainDigest hashes, for readers that check
// the chain with another BLAKE3 implementation.
func ChainInput(prev Digest, e Event) []byte {
	b := appendPrefix(make([]byte, 0, 256), e)
	return appendSuffix(b, prev, e)
}

func appendPrefix(b []byte, e Event) []byte {
	for _, s := range [...]string{e.Type, e.SubjectKind, e.SubjectID, e.Actor} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = append(b, e.PayloadDigest[:]...)
	if r := len(b) % guts.BlockSize; r != 0 {
		b = append(b, make([]byte, guts.BlockSize-r)...)
	}
	return b
}

// suffixLen is the length of the encoding's last part (sequence,
// created_at, prev): it fits one block.
const suffixLen = 8 + 8 + 32

func appendSuffix(b []byte, prev Digest, e Event) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(e.Sequence))
	b = binary.BigEndian.AppendUint64(b, uint64(e.CreatedAt.UnixNano()))
	return append(b, prev[:]...)
}

// chainPrefix is the BLAKE3 state after an event's padded prefix: the
// chaining value of its blocks, within the single chunk every valid event
// fits. slow marks an event whose encoding spans more than one chunk
// (fields longer than validation allows), hashed the ordinary way.
type chainPrefix struct {
	cv   [8]uint32
	slow bool
}

func prepare(e Event) chainPrefix {
	var stack [1024]byte
	b := appendPrefix(stack[:0], e)
	if len(b)+suffixLen > guts.ChunkSize {
		return chainPrefix{slow: true}
	}
	cv := guts.IV
	for i := 0; i < len(b); i += guts.BlockSize {
		var flags uint32
		if i == 0 {
			flags = guts.FlagChunkStart
		}
		cv = guts.ChainingValue(guts.Node{CV: cv, Block: words(b[i : i+guts.BlockSize]), BlockLen: guts.BlockSize, Flags: flags})
	}
	return chainPrefix{cv: cv}
}

// finish hashes the last block: e's sequence and created_at and prev.
func (p *chainPrefix) finish(prev Digest, e Event) Digest {
	if p.slow {
		return blake3.Sum256(ChainInput(prev, e))
	}
	var block [guts.BlockSize]byte
	appendSuffix(block[:0], prev, e)
	out := guts.CompressNode(guts.Node{CV: p.cv, Block: words(block[:]), BlockLen: suffixLen,
		Flags: guts.FlagChunkEnd | guts.FlagRoot})
	var d Digest
	for i := range 8 {
		binary.LittleEndian.PutUint32(d[4*i:], out[i])
	}
	return d
}

func words(b []byte) (w [16]uint32) {
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return w
}

// ChainPrep holds the part of the chain digests of a batch of events that
// their writer can compute before the log assigns their sequences and
// created_at (PrepareChain): everything but one BLAKE3 block per event.
type ChainPrep []chainPrefix

// PrepareChain hashes the fields of events their writer sets.
func PrepareChain(events []Event) ChainPrep {
	p := make(ChainPrep, len(events))
	for i, e := range events {
		p[i] = prepare(e)
	}
	return p
}

// Add returns p with e's prefix appended.
func (p ChainPrep) Add(e Event) ChainPrep { return append(p, prepare(e)) }

// NeedsFields reports whether chaining the i-th event reads its fields
// again (an encoding longer than one BLAKE3 chunk, which only fields
// longer than validation allows make): Chain must then be given them.
func (p ChainPrep) NeedsFields(i int) bool { return p[i].slow }

// Chain sets the chain digest of each of events (the events p was
// prepared from, now with their sequences and created_at), in order, the
// first chained to prev, and returns the last one's (prev when events is
// empty). Dialects call it under the log's commit-order lock.
func (p ChainPrep) Chain(prev Digest, events []Event) Digest {
	for i := range events {
		prev = p[i].finish(prev, events[i])
		events[i].ChainDigest = prev
	}
	return prev
}

// StartPrepareChain starts PrepareChain(events), on another goroutine for
// batches large enough to be worth it (so that a writer hashes them while
// it validates them, say), and returns the wait for its result.
func StartPrepareChain(events []Event) func() ChainPrep {
	if len(events) < 256 {
		p := PrepareChain(events)
		return func() ChainPrep { return p }
	}
	done := make(chan ChainPrep, 1)
	go func() { done <- PrepareChain(events) }()
	var p ChainPrep
	return func() ChainPrep {
		if p == nil {
			p = <-done
		}
		return p
	}
}

// Chain is PrepareChain(events).Chain(prev, events).
func Chain(prev Digest, events []Event) Digest { return PrepareChain(events).Chain(prev, events) }
