package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// commitLoop is one committer: it takes a batch off the queue, decides and
// commits it in one transaction, replies, and repeats until the queue is
// closed and empty.
func (s *Service) commitLoop() {
	for {
		first, ok := <-s.queue
		if !ok {
			return
		}
		s.commit(s.fill([]*command{first}))
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
			// give every copy the first one's reply.
			if l, ok := byID[c.commandID]; ok {
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
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		committing, err := s.tryCommit(ctx, cmds)
		if err == nil {
			for _, c := range cmds {
				if c.res.err == nil && !c.res.duplicate {
					s.m.appended.Inc()
				}
			}
			return
		}
		temporary := store.Temporary(err) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil
		if temporary && !committing && attempt < s.cfg.MaxRetries && time.Until(deadline) > 2*backoff {
			s.m.retries.Inc()
			s.log.Debug("retrying a batch", zap.Int("attempt", attempt+1), zap.Int("commands", len(cmds)), zap.Error(err))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			backoff *= 4
			continue
		}
		if temporary {
			s.log.Warn("batch failed: database unavailable", zap.Int("commands", len(cmds)),
				zap.Int("attempts", attempt+1), zap.Bool("outcome_unknown", committing), zap.Error(err))
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
		return
	}
}

// tryCommit decides cmds in one transaction and appends the events of the
// accepted ones. committing reports whether the error (if any) came from
// COMMIT, when the outcome is unknown.
//
// Every transaction takes its row locks in one global order — command ids
// sorted, then (name, version) sorted, then package ids sorted, then the
// log_head row in Append — so concurrent batches (of this instance or
// others) wait for each other but never deadlock.
func (s *Service) tryCommit(ctx context.Context, cmds []*command) (committing bool, err error) {
	err = s.db.InTx(ctx, func(stx store.Tx) error {
		tx := bulk(stx)
		for _, c := range cmds {
			c.claimed, c.res = false, result{}
		}
		// 1. Idempotency: claim command ids; a seen id gets its first reply.
		byID := filter(cmds, func(c *command) bool { return c.commandID != "" })
		slices.SortFunc(byID, func(a, b *command) int { return cmp.Compare(a.commandID, b.commandID) })
		if len(byID) > 0 {
			claimed, err := tx.ClaimCommands(ctx, keys(byID, func(c *command) string { return c.commandID }))
			if err != nil {
				return err
			}
			var seen []*command
			for i, c := range byID {
				c.claimed = claimed[i]
				if !c.claimed {
					seen = append(seen, c)
				}
			}
			if len(seen) > 0 {
				replies, err := tx.CommandReplies(ctx, keys(seen, func(c *command) string { return c.commandID }))
				if err != nil {
					return err
				}
				for _, c := range seen {
					if body, ok := replies[c.commandID]; ok {
						c.res = result{body: body, duplicate: true}
					} else {
						c.res.err = newError(CodeUnavailable, "command %s is still being handled; retry", c.commandID)
					}
				}
			}
		}
		undecided := func(c *command) bool { return c.res.err == nil && c.res.body == nil }
		// 2. Creates: (name, version) is unique; the first of a batch wins.
		creates := filter(cmds, func(c *command) bool { return undecided(c) && c.endpoint == endpointCreate })
		slices.SortStableFunc(creates, func(a, b *command) int {
			return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.version, b.version))
		})
		if len(creates) > 0 {
			ok, err := tx.ClaimPackages(ctx, keys(creates, func(c *command) string { return c.event.SubjectID }),
				keys(creates, func(c *command) string { return c.name }), keys(creates, func(c *command) string { return c.version }))
			if err != nil {
				return err
			}
			for i, c := range creates {
				if !ok[i] {
					c.res.err = newError(CodeConflict, "package %s version %s already exists", c.name, c.version)
				}
			}
		}
		// 3. Finalizes: known packages, once. Creates of this batch are
		// already in the index, so finalizing one of them works.
		finals := filter(cmds, func(c *command) bool { return undecided(c) && c.endpoint == endpointFinalize })
		slices.SortStableFunc(finals, func(a, b *command) int { return cmp.Compare(a.event.SubjectID, b.event.SubjectID) })
		if len(finals) > 0 {
			ok, exists, err := tx.FinalizePackages(ctx, keys(finals, func(c *command) string { return c.event.SubjectID }))
			if err != nil {
				return err
			}
			for i, c := range finals {
				switch {
				case !exists[i]:
					c.res.err = newError(CodeNotFound, "package %s not found", c.event.SubjectID)
				case !ok[i]:
					c.res.err = newError(CodeConflict, "package %s is already finalized", c.event.SubjectID)
				}
			}
		}
		// 4. A rejected command keeps nothing, not even its id.
		if rejected := filter(byID, func(c *command) bool { return c.claimed && c.res.err != nil }); len(rejected) > 0 {
			if err := tx.ReleaseCommands(ctx, keys(rejected, func(c *command) string { return c.commandID })); err != nil {
				return err
			}
		}
		// 5. Append the accepted commands' events, creates first so that a
		// package created and finalized in one batch reads in order.
		accepted := filter(cmds, func(c *command) bool { return undecided(c) && c.endpoint == endpointCreate })
		accepted = append(accepted, filter(cmds, func(c *command) bool { return undecided(c) && c.endpoint == endpointFinalize })...)
		if len(accepted) == 0 {
			committing = true
			return nil
		}
		events := make([]store.Event, len(accepted))
		for i, c := range accepted {
			events[i] = c.event
		}
		appended, err := stx.Append(ctx, events...)
		if err != nil {
			return err
		}
		var ids []string
		var seqs []int64
		var replies [][]byte
		for i, c := range accepted {
			e := appended[i]
			c.res.body, err = json.Marshal(CommandReply{Sequence: e.Sequence, EventType: e.Type, PackageID: e.SubjectID, CreatedAt: e.CreatedAt})
			if err != nil {
				return err
			}
			if c.claimed {
				ids, seqs, replies = append(ids, c.commandID), append(seqs, e.Sequence), append(replies, c.res.body)
			}
		}
		// 6. Remember the replies of idempotent commands.
		if len(ids) > 0 {
			if err := tx.CompleteCommands(ctx, ids, seqs, replies); err != nil {
				return err
			}
		}
		committing = true
		return nil
	})
	return committing, err
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

func keys(cmds []*command, key func(*command) string) []string {
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i] = key(c)
	}
	return out
}
