package store

import (
	"context"
	"fmt"
	"sync"
)

// BreakError names the first sequence at which a history fails
// verification and why. It wraps ErrHistoryBroken.
type BreakError struct {
	// Sequence is the first event that is missing, altered or out of
	// place.
	Sequence int64 `json:"sequence"`
	// Reason says what is wrong with it.
	Reason string `json:"reason"`
}

// Error implements error.
func (e *BreakError) Error() string {
	return fmt.Sprintf("store: history broken at event %d: %s", e.Sequence, e.Reason)
}

// Unwrap returns ErrHistoryBroken.
func (e *BreakError) Unwrap() error { return ErrHistoryBroken }

func broken(seq int64, format string, args ...any) *BreakError {
	return &BreakError{Sequence: seq, Reason: fmt.Sprintf(format, args...)}
}

// ChainVerifier checks events handed to it in sequence order: each is the
// one after the last, its payload matches its digest and its chain digest
// follows from the previous one's. The zero value expects the log's first
// event.
type ChainVerifier struct {
	last Digest
	seq  int64
}

// NewChainVerifier returns a verifier that trusts prev as the chain digest
// of event after and expects event after+1 next.
func NewChainVerifier(after int64, prev Digest) *ChainVerifier {
	return &ChainVerifier{last: prev, seq: after}
}

// Head returns the last event checked (or the trusted starting point).
func (v *ChainVerifier) Head() ChainHead { return ChainHead{Sequence: v.seq, Digest: v.last} }

// Check verifies e; the error is a *BreakError naming the sequence that
// breaks (e's, or the first one missing before it). After an error the
// verifier is unchanged.
func (v *ChainVerifier) Check(e Event) error {
	p := prepare(e)
	return v.check(e, DigestOf(e.Payload) == e.PayloadDigest, &p)
}

// check is Check with the work that does not depend on the events before
// e done: whether its payload matches its digest, and its chain prefix.
func (v *ChainVerifier) check(e Event, payloadOK bool, p *chainPrefix) error {
	switch want := v.seq + 1; {
	case e.Sequence > want:
		return broken(want, "missing: the log goes from event %d to event %d", v.seq, e.Sequence)
	case e.Sequence < want:
		return broken(e.Sequence, "out of order: it comes after event %d", v.seq)
	case !payloadOK:
		return broken(e.Sequence, "payload_digest %s is not the BLAKE3-256 of its payload", e.PayloadDigest)
	case p.finish(v.last, e) != e.ChainDigest:
		return broken(e.Sequence, "chain_digest %s does not follow from event %d's and its own fields", e.ChainDigest, v.seq)
	}
	v.last, v.seq = e.ChainDigest, e.Sequence
	return nil
}

// verifyReaders is how many pages VerifyLog reads at once.
const verifyReaders = 2

// readRanges reads the log in (after, upTo] in pages of DefaultBatch
// sequences with read, readers pages at once, and delivers them in order;
// it stops after a page whose failed reports true. Page k is what read
// returns for (after+k·DefaultBatch, after+(k+1)·DefaultBatch]. stop ends
// it and waits for it.
func readRanges[P any](ctx context.Context, after, upTo int64, readers int, read func(ctx context.Context, lo, hi int64) P, failed func(P) bool) (<-chan P, func()) {
	ctx, cancel := context.WithCancel(ctx)
	futures := make(chan chan P, readers-1)
	out := make(chan P)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // dispatches the reads, at most readers at once
		defer wg.Done()
		defer close(futures)
		for lo := after; lo < upTo; lo += DefaultBatch {
			f := make(chan P, 1)
			select {
			case futures <- f:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f <- read(ctx, lo, min(lo+DefaultBatch, upTo))
			}()
		}
	}()
	go func() { // delivers them in order
		defer wg.Done()
		defer close(out)
		for f := range futures {
			var p P
			select {
			case p = <-f:
			case <-ctx.Done():
				return
			}
			select {
			case out <- p:
			case <-ctx.Done():
				return
			}
			if failed(p) {
				return
			}
		}
	}()
	return out, func() { cancel(); wg.Wait() }
}

// readPage reads (lo, hi] with Fetch: the log is gapless, and where it is
// not (a broken log) every event of the range is still in its page.
func readPage(db DB) func(ctx context.Context, lo, hi int64) page {
	return func(ctx context.Context, lo, hi int64) page {
		events, err := db.Fetch(ctx, lo, int(hi-lo))
		for len(events) > 0 && events[len(events)-1].Sequence > hi {
			events = events[:len(events)-1]
		}
		return page{events: events, err: err}
	}
}

// readHashed reads (lo, hi] with a HashingReader.
func readHashed(r HashingReader) func(ctx context.Context, lo, hi int64) hashed {
	return func(ctx context.Context, lo, hi int64) hashed {
		p, err := r.FetchHashed(ctx, lo, int(hi-lo))
		n := len(p.Events)
		for n > 0 && p.Events[n-1].Sequence > hi {
			n--
		}
		return hashed{page: page{events: p.Events[:n], err: err}, payloadOK: p.PayloadOK[:n], prep: p.Prep[:n]}
	}
}

// HashedPage is a page of the log read for verification: each event with
// its sequence, created_at and digests only, whether its payload matches
// its payload_digest, and its chain prefix (PrepareChain).
type HashedPage struct {
	Events    []Event
	PayloadOK []bool
	Prep      ChainPrep
}

// HashingReader is implemented by stores that read the log for VerifyLog
// hashing each row as they decode it, without building whole events.
type HashingReader interface {
	// FetchHashed is Fetch(after, limit), hashed.
	FetchHashed(ctx context.Context, after int64, limit int) (HashedPage, error)
}

// hashed is a page of the log with the hashing that does not depend on
// the events before it done (on its own goroutine, while the next page is
// read and the previous one chained).
type hashed struct {
	page
	payloadOK []bool
	prep      ChainPrep
}

// hashAhead hashes the pages of in on its own goroutine. stop ends it and
// waits for it.
func hashAhead(ctx context.Context, in <-chan page) (<-chan hashed, func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan hashed, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for p := range in {
			h := hashed{page: p, payloadOK: make([]bool, len(p.events)), prep: PrepareChain(p.events)}
			for i, e := range p.events {
				h.payloadOK[i] = DigestOf(e.Payload) == e.PayloadDigest
			}
			select {
			case out <- h:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, func() { cancel(); <-done }
}

// VerifyOptions configures VerifyLog.
type VerifyOptions struct {
	// From is the first sequence verified (1 when below). The chain digest
	// of the event before it is taken from the log as it is: verifying
	// from 1 is what proves the whole history.
	From int64
	// Each, when set, is called with every verified event in order; its
	// error ends the verification and is returned.
	Each func(Event) error
	// Progress, when set, is called after each page with the events
	// verified so far and the number to verify.
	Progress func(done, total int64)
}

// VerifyResult is what VerifyLog verified.
type VerifyResult struct {
	// From and To bound the events verified (To < From when none were).
	From, To int64
	// Head is the log's chain head when the verification started; the
	// events after it are not verified.
	Head ChainHead
}

// VerifyLog reads the log from opts.From up to its chain head (read
// first) and checks every event with a ChainVerifier, then that the head
// row agrees with the last event. The work overlaps: pages are read two
// at a time and hashed (payloads, and the chain input up to the part that
// depends on the event before) — as they are read when the store is a
// HashingReader and opts.Each is nil, else on a goroutine of their own —
// and the caller's goroutine chains them.
// A broken history returns a *BreakError (wrapping ErrHistoryBroken)
// naming the first sequence that breaks; other errors are the database's.
func VerifyLog(ctx context.Context, db DB, opts VerifyOptions) (VerifyResult, error) {
	head, err := db.ChainHead(ctx)
	if err != nil {
		return VerifyResult{}, fmt.Errorf("store: reading the chain head: %w", err)
	}
	from := max(opts.From, 1)
	res := VerifyResult{From: from, To: from - 1, Head: head}
	if from > head.Sequence {
		return res, nil
	}
	v, err := startAt(ctx, db, from)
	if err != nil {
		return res, err
	}
	var pages <-chan hashed
	if hr, ok := db.(HashingReader); ok && opts.Each == nil {
		var stop func()
		pages, stop = readRanges(ctx, from-1, head.Sequence, verifyReaders, readHashed(hr), func(h hashed) bool { return h.err != nil })
		defer stop()
	} else {
		read, stopReading := readRanges(ctx, from-1, head.Sequence, verifyReaders, readPage(db), func(p page) bool { return p.err != nil })
		var stopHashing func()
		pages, stopHashing = hashAhead(ctx, read)
		defer func() {
			stopReading() // first: the hasher may be waiting for its next page
			stopHashing()
		}()
	}
	for p := range pages {
		if p.err != nil {
			return res, p.err
		}
		for i, e := range p.events {
			if err := v.check(e, p.payloadOK[i], &p.prep[i]); err != nil {
				return res, err
			}
			if opts.Each != nil {
				if err := opts.Each(e); err != nil {
					return res, err
				}
			}
			res.To = e.Sequence
		}
		if opts.Progress != nil {
			opts.Progress(res.To-from+1, head.Sequence-from+1)
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	switch last := v.Head(); {
	case last.Sequence < head.Sequence:
		return res, broken(last.Sequence+1, "missing: the log's head row is at event %d, its events end at %d", head.Sequence, last.Sequence)
	case last.Digest != head.Digest:
		return res, broken(head.Sequence, "the log's head row records chain_digest %s, the event has %s", head.Digest, last.Digest)
	}
	return res, nil
}

// startAt returns a verifier that expects event from, trusting the chain
// digest the log holds for the event before it.
func startAt(ctx context.Context, db DB, from int64) (*ChainVerifier, error) {
	if from <= 1 {
		return &ChainVerifier{}, nil
	}
	prev, err := db.Fetch(ctx, from-2, 1)
	if err != nil {
		return nil, err
	}
	if len(prev) == 0 || prev[0].Sequence != from-1 {
		return nil, broken(from-1, "missing: the verification starts after it")
	}
	return NewChainVerifier(from-1, prev[0].ChainDigest), nil
}
