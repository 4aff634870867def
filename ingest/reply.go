package ingest

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"
)

// Reasons (the reason label of artifactstore_ingest_rejected_replies_total)
// for dropping a request without looking at it.
const (
	// reasonNotInbox: the reply subject is outside every allowed inbox
	// prefix, so answering would publish where the requester chose (the
	// events stream, a KV bucket, the JetStream API ...) with ingest's
	// permissions.
	reasonNotInbox = "not_inbox"
	// reasonNoReply: there is no reply subject, so nobody could learn the
	// outcome; the request is not acted on either.
	reasonNoReply = "no_reply"
)

// rejectedLogInterval is the least time between two logged drops. A client
// can send tens of thousands of such requests a second; one log line each
// would cost more than dropping them and flood the logs, while the counter
// keeps the exact number and the next line says how many were not logged.
const rejectedLogInterval = time.Second

// guard wraps an endpoint's handler: a request whose reply subject is not
// in an allowed inbox namespace is dropped before it is decoded, counted
// and (rate-limited) logged. It covers the replies every later step sends,
// detached ones included, since they all go to req.Reply().
func (s *Service) guard(endpoint string, h micro.HandlerFunc) micro.HandlerFunc {
	return func(req micro.Request) {
		reply := req.Reply()
		switch {
		case reply == "":
			s.reject(endpoint, req.Subject(), reply, reasonNoReply)
		case !replyAllowed(s.cfg.ReplyPrefixes, reply):
			s.reject(endpoint, req.Subject(), reply, reasonNotInbox)
		default:
			h(req)
		}
	}
}

func (s *Service) reject(endpoint, subject, reply, reason string) {
	s.m.rejectedReplies.WithLabelValues(endpoint, reason).Inc()
	if suppressed, ok := s.rejectLog.allow(time.Now()); ok {
		s.log.Warn("dropped a request whose reply subject is not an inbox",
			zap.String("endpoint", endpoint), zap.String("subject", subject),
			zap.String("reply", truncate(reply, 128)), zap.String("reason", reason),
			zap.Strings("allowed_prefixes", s.cfg.ReplyPrefixes), zap.Int64("suppressed", suppressed))
	}
}

// replyAllowed reports whether reply is a literal subject below one of
// prefixes (each ending with '.').
func replyAllowed(prefixes []string, reply string) bool {
	if !validSubject(reply) {
		return false
	}
	for _, p := range prefixes {
		if len(reply) > len(p) && strings.HasPrefix(reply, p) {
			return true
		}
	}
	return false
}

// validSubject reports whether s is a literal subject: dot-separated
// non-empty tokens of printable ASCII without wildcards.
func validSubject(s string) bool {
	return subjectSafe(s) && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..")
}

// validateReplyPrefix checks one allowed reply prefix.
func validateReplyPrefix(p string) error {
	switch {
	case !strings.HasSuffix(p, "."):
		return fmt.Errorf("does not end with '.'")
	case !validSubject(strings.TrimSuffix(p, ".")):
		return fmt.Errorf("is not subject tokens without wildcards")
	case strings.HasPrefix(p, "$"):
		return fmt.Errorf("is in a system namespace ($JS, $KV, $SYS ...)")
	case strings.HasPrefix(p, "artifactstore."):
		return fmt.Errorf("is in artifactstore's own namespace (commands, queries, events)")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// logLimiter lets one event through per interval and counts the others.
type logLimiter struct {
	interval time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int64
}

// allow reports whether an event at now may be logged and, if so, how many
// were suppressed since the last one that was.
func (l *logLimiter) allow(now time.Time) (suppressed int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		l.suppressed++
		return 0, false
	}
	suppressed, l.last, l.suppressed = l.suppressed, now, 0
	return suppressed, true
}
