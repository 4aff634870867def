package ingest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/sethvargo/go-retry"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/store"
)

// commitLoop is committer i: it takes a batch off the queue, decides and
// commits it in one transaction, replies, and repeats until the queue is
// closed and empty. Its batch is due RequestTimeout after it took the
// first command (see LastProgress).
func (s *Service) commitLoop(i int) {
	for {
		first, ok := <-s.queue
		if !ok {
			return
		}
		s.due[i].Store(time.Now().Add(s.cfg.RequestTimeout).UnixNano())
		s.commit(s.fill([]*command{first}))
		s.due[i].Store(0)
	}
}

// fill adds queued commands to batch until it holds MaxBatch, the queue is
// closed, or BatchDelay has passed since the first one was taken.
func (s *Service) fill(batch []*command) []*command {
	var timer *time.Timer
	for len(batch) < s.cfg.MaxBatch {
		select {
		case c, ok := <-s.queue:
			if !ok {
				return batch
			}
			batch = append(batch, c)
			continue
		default:
		}
		if s.cfg.BatchDelay <= 0 {
			return batch
		}
		if timer == nil {
			timer = time.NewTimer(s.cfg.BatchDelay)
			defer timer.Stop()
		}
		select {
		case c, ok := <-s.queue:
			if !ok {
				return batch
			}
			batch = append(batch, c)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// commit decides a batch and sends every reply.
func (s *Service) commit(batch []*command) {
	now := time.Now()
	leaders := make([]*command, 0, len(batch))
	byID := make(map[string]*command)
	// A command with little time left would cut the whole batch's
	// transaction short (it runs until the earliest deadline): answer it
	// now, with nothing written, rather than risk every other one.
	floor := now.Add(s.cfg.RequestTimeout / 4)
	for _, c := range batch {
		if c.deadline.Before(floor) {
			c.res.err = newError(CodeUnavailable, "timed out waiting for a batch; retry")
			s.reply(c)
			continue
		}
		if c.commandID != "" {
			// The same command id twice in one batch: decide it once and
			// give every copy with the same parameters the first one's
			// reply; refuse the others.
			if l, ok := byID[c.commandID]; ok {
				if !bytes.Equal(l.fingerprint, c.fingerprint) {
					c.res.err = errCommandIDReused(c.commandID)
					s.reply(c)
					continue
				}
				l.followers = append(l.followers, c)
				continue
			}
			byID[c.commandID] = c
		}
		leaders = append(leaders, c)
	}
	if len(leaders) == 0 {
		return
	}
	s.m.batchSize.Observe(float64(len(leaders)))
	s.decide(leaders)
	s.m.commit.Observe(time.Since(now).Seconds())
	for _, c := range leaders {
		s.reply(c)
		for _, f := range c.followers {
			f.res = c.res
			f.res.duplicate = c.res.err == nil
			s.reply(f)
		}
	}
}

func (s *Service) reply(c *command) {
	if c.res.err != nil {
		s.replyError(c.req, c.endpoint, c.res.err)
		return
	}
	outcome := outcomeOK
	if c.res.duplicate {
		outcome = outcomeDuplicate
	}
	s.m.requests.WithLabelValues(c.endpoint, outcome).Inc()
	if err := c.req.Respond(c.res.body); err != nil {
		s.log.Debug("sending a reply", zap.String("endpoint", c.endpoint), zap.Error(err))
	}
}

// decide runs cmds in one transaction, retrying it on temporary errors
// until the earliest deadline among them, and sets every command's result.
// A transaction whose outcome is unknown (the error came with or after
// COMMIT) is not retried: its commands are answered unavailable, and a
// client that retries with the same command_id learns the outcome.
func (s *Service) decide(cmds []*command) {
	deadline := cmds[0].deadline
	for _, c := range cmds[1:] {
		if c.deadline.Before(deadline) {
			deadline = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	committing, attempts, err := s.commitRetrying(ctx, cmds, deadline)
	if err == nil {
		for _, c := range cmds {
			if c.res.err == nil && !c.res.duplicate {
				s.m.appended.Inc()
			}
		}
		return
	}
	if unavailable(ctx, err) {
		s.log.Warn("batch failed: database unavailable", zap.Int("commands", len(cmds)),
			zap.Int("attempts", attempts), zap.Bool("outcome_unknown", committing), zap.Error(err))
		for _, c := range cmds {
			c.res = result{err: newError(CodeUnavailable, "the database is unavailable; retry later (with the same command_id)")}
		}
		return
	}
	if len(cmds) > 1 && !committing {
		// An error no command was decided on: isolate the one that
		// causes it by deciding each command in its own transaction.
		s.log.Warn("batch failed; deciding its commands one by one", zap.Int("commands", len(cmds)), zap.Error(err))
		for _, c := range cmds {
			s.decide([]*command{c})
		}
		return
	}
	s.log.Error("command failed", zap.Int("commands", len(cmds)), zap.Error(err))
	for _, c := range cmds {
		c.res = result{err: newError(CodeInternal, "internal error")}
	}
}

// batchRetry is the pause before a batch that failed on a temporary error
// (a lost race, a database that went away) is tried again: 5, 20, 80 ms
// and so on, Config.MaxRetries times at most and only while the earliest
// deadline leaves time for another attempt.
var batchRetry = backoff.Policy{Min: 5 * time.Millisecond, Factor: 4}

// commitRetrying runs tryCommit until it succeeds or fails for good: at
// once again after a redoError, after a batchRetry pause after a
// temporary error whose outcome is known. attempts counts the
// transactions tried (redos aside); committing and err are the last one's.
func (s *Service) commitRetrying(ctx context.Context, cmds []*command, deadline time.Time) (committing bool, attempts int, err error) {
	var last error
	bo := backoff.WithNotify(func(time.Duration) {
		s.m.retries.Inc()
		s.log.Debug("retrying a batch", zap.Int("attempt", attempts), zap.Int("commands", len(cmds)), zap.Error(last))
	}, retry.WithMaxRetries(uint64(s.cfg.MaxRetries), backoff.WithDeadline(deadline, batchRetry.Backoff())))
	skip := map[string]bool{}
	err = retry.Do(ctx, bo, func(ctx context.Context) error {
		attempts++
		for {
			committing, last = s.tryCommit(ctx, cmds, skip)
			var redo *redoError
			if !errors.As(last, &redo) {
				break
			}
			for _, id := range redo.commandIDs {
				skip[id] = true
			}
		}
		if last != nil && unavailable(ctx, last) && !committing {
			return retry.RetryableError(last)
		}
		return last
	})
	return committing, attempts, err
}

// unavailable reports whether a transaction failed for want of the
// database (or of time) rather than because of its commands.
func unavailable(ctx context.Context, err error) bool {
	return store.Temporary(err) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil
}

// redoError asks for a batch to be decided again without creating or
// finalizing for the given command ids: ClaimAll ran their creates or
// finalizes optimistically, but they turned out to be commands seen
// before. Such a create or finalize normally changes nothing (the first
// command already created or finalized that package); it can only succeed
// when a command_id is reused for another package, and then the
// transaction must not keep it.
type redoError struct{ commandIDs []string }

func (e *redoError) Error() string { return "ingest: redo the batch without commands seen before" }

// tryCommit decides cmds in one transaction and appends the events of the
// accepted ones. committing reports whether the error (if any) came with
// or after COMMIT, when the outcome is unknown. Commands whose ids are in
// skip are known to have been seen before: they neither create nor
// finalize.
//
// The transaction is two calls: ClaimAll claims the command ids, records
// the creates' packages and finalizes, all at once; AppendCommands
// releases the claims of rejected commands, appends the accepted ones'
// events, records which event answered which command id, and commits.
// Every transaction takes its row locks in one global order — command ids
// sorted, then (name, version) sorted, then package ids sorted, then the
// log_head row — so concurrent batches (of this instance or others) wait
// for each other but never deadlock.
func (s *Service) tryCommit(ctx context.Context, cmds []*command, skip map[string]bool) (committing bool, err error) {
	err = s.db.InTx(ctx, func(stx store.Tx) error {
		tx := bulk(stx)
		committing = false
		for _, c := range cmds {
			c.claimed, c.res = false, result{}
		}
		byID := filter(cmds, func(c *command) bool { return c.commandID != "" })
		slices.SortFunc(byID, func(a, b *command) int { return cmp.Compare(a.commandID, b.commandID) })
		// Creates: (name, version) is unique; the first of a batch wins.
		creates := filter(cmds, func(c *command) bool { return c.endpoint == endpointCreate && !skip[c.commandID] })
		slices.SortStableFunc(creates, func(a, b *command) int {
			return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.version, b.version))
		})
		// Finalizes: known packages, once; the creates of this batch are
		// known to them.
		finals := filter(cmds, func(c *command) bool { return c.endpoint == endpointFinalize && !skip[c.commandID] })
		slices.SortStableFunc(finals, func(a, b *command) int { return cmp.Compare(a.event.SubjectID, b.event.SubjectID) })
		claimed, created, finalized, exists, err := tx.ClaimAll(ctx,
			keys(byID, func(c *command) string { return c.commandID }),
			keys(byID, func(c *command) []byte { return c.fingerprint }),
			keys(creates, func(c *command) string { return c.event.SubjectID }),
			keys(creates, func(c *command) string { return c.name }),
			keys(creates, func(c *command) string { return c.version }),
			keys(finals, func(c *command) string { return c.event.SubjectID }))
		if err != nil {
			return err
		}
		for i, c := range byID {
			c.claimed = claimed[i]
		}
		seen := func(c *command) bool { return c.commandID != "" && !c.claimed }
		var redo []string
		for i, c := range creates {
			if seen(c) && created[i] {
				redo = append(redo, c.commandID)
			}
		}
		for i, c := range finals {
			if seen(c) && finalized[i] {
				redo = append(redo, c.commandID)
			}
		}
		if len(redo) > 0 {
			return &redoError{commandIDs: redo}
		}
		// Idempotency: a command id seen before gets its first reply, if
		// it was used for the same command.
		if dups := filter(byID, seen); len(dups) > 0 {
			records, err := tx.CommandReplies(ctx, keys(dups, func(c *command) string { return c.commandID }), replyOf)
			if err != nil {
				return err
			}
			for _, c := range dups {
				rec, ok := records[c.commandID]
				switch {
				case !ok:
					c.res.err = newError(CodeUnavailable, "command %s is still being handled; retry", c.commandID)
				case len(rec.Fingerprint) > 0 && !bytes.Equal(rec.Fingerprint, c.fingerprint):
					// (Commands recorded before fingerprints were have
					// none: they keep answering their first reply.)
					c.res.err = errCommandIDReused(c.commandID)
				default:
					c.res = result{body: rec.Reply, duplicate: true}
				}
			}
		}
		for i, c := range creates {
			if !seen(c) && !created[i] {
				c.res.err = newError(CodeConflict, "package %s version %s already exists", c.name, c.version)
			}
		}
		for i, c := range finals {
			switch {
			case seen(c):
			case !exists[i]:
				c.res.err = newError(CodeNotFound, "package %s not found", c.event.SubjectID)
			case !finalized[i]:
				c.res.err = newError(CodeConflict, "package %s is already finalized", c.event.SubjectID)
			}
		}
		// A rejected command keeps nothing, not even its id. The accepted
		// ones' events are appended creates first, so that a package
		// created and finalized in one batch reads in order.
		undecided := func(c *command) bool { return c.res.err == nil && c.res.body == nil }
		rejected := filter(byID, func(c *command) bool { return c.claimed && c.res.err != nil })
		accepted := filter(creates, undecided)
		accepted = append(accepted, filter(finals, undecided)...)
		events := make([]store.Event, len(accepted))
		ids := make([]string, len(accepted))
		for i, c := range accepted {
			events[i] = c.event
			if c.claimed {
				ids[i] = c.commandID
			}
		}
		committing = true
		appended, err := tx.AppendCommands(ctx, keys(rejected, func(c *command) string { return c.commandID }), events, ids, replyOf)
		if err != nil {
			committing = errors.Is(err, store.ErrOutcomeUnknown)
			return err
		}
		for i, c := range accepted {
			if c.res.body, err = replyOf(appended[i]); err != nil {
				return err
			}
		}
		return nil
	})
	return committing, err
}

// replyOf is the reply to the command that appended e.
func replyOf(e store.Event) ([]byte, error) {
	return json.Marshal(CommandReply{Sequence: e.Sequence, EventType: e.Type, PackageID: e.SubjectID, CreatedAt: e.CreatedAt})
}

func filter(cmds []*command, keep func(*command) bool) []*command {
	var out []*command
	for _, c := range cmds {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

func keys[K any](cmds []*command, key func(*command) K) []K {
	out := make([]K, len(cmds))
	for i, c := range cmds {
		out[i] = key(c)
	}
	return out
}
