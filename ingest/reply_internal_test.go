package ingest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestReplyAllowed(t *testing.T) {
	prefixes := []string{"_INBOX.", "_INBOX_client."}
	for reply, want := range map[string]bool{
		"_INBOX.abc":                          true,
		"_INBOX.abc.1":                        true,
		"_INBOX_client.xyz.2":                 true,
		"_INBOX.":                             false,
		"_INBOX":                              false,
		"_INBOX..a":                           false,
		"_INBOX.a.":                           false,
		"_INBOX.*":                            false,
		"_INBOX.>":                            false,
		"_INBOX.a b":                          false,
		"_INBOX_clientx.a":                    false,
		"_INBOX_other.a":                      false,
		"":                                    false,
		"artifactstore.events.v1.package.x":   false,
		"$KV.ARTIFACTSTORE_PROJECTORS.r.evil": false,
		"$JS.API.STREAM.DELETE.X":             false,
		"$SYS.REQ.SERVER.PING":                false,
		"artifactstore.cmd.package.create":    false,
	} {
		assert.Equal(t, want, replyAllowed(prefixes, reply), "reply %q", reply)
	}
}

// TestLogLimiter: one drop per interval is logged, and the next logged one
// says how many were not.
func TestLogLimiter(t *testing.T) {
	l := logLimiter{interval: time.Second}
	t0 := time.Unix(1000, 0)
	n, ok := l.allow(t0)
	assert.True(t, ok)
	assert.Zero(t, n)
	for i := range 5 {
		_, ok = l.allow(t0.Add(time.Duration(i) * 100 * time.Millisecond))
		assert.False(t, ok)
	}
	n, ok = l.allow(t0.Add(time.Second))
	assert.True(t, ok)
	assert.EqualValues(t, 5, n)
	n, ok = l.allow(t0.Add(3 * time.Second))
	assert.True(t, ok)
	assert.Zero(t, n)
}
