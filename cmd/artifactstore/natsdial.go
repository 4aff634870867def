package main

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sethvargo/go-retry"

	"github.com/artifactstore/artifactstore/internal/backoff"
)

// dialAttempts is how many times dialNATS tries to connect.
const dialAttempts = 3

// dialRetry is the pause between dialNATS's attempts: 200 ms, then 400 ms.
var dialRetry = backoff.Policy{Min: 200 * time.Millisecond}

// dialNATS connects, trying again twice after a failure that is not about
// credentials: a server busy authenticating (bcrypt) may send its first
// keepalive PING before the PONG that completes the handshake, which the
// client reports as a failed connect (nats-server issue 1174), and a
// server that is restarting refuses for a moment. ctx ends the pause
// between attempts; its error is then returned.
func dialNATS(ctx context.Context, url string, opts []nats.Option) (*nats.Conn, error) {
	return retry.DoValue(ctx, retry.WithMaxRetries(dialAttempts-1, dialRetry.Backoff()), func(context.Context) (*nats.Conn, error) {
		nc, err := nats.Connect(url, opts...)
		if err != nil && !refusedCredentials(err) {
			return nil, retry.RetryableError(err)
		}
		return nc, err
	})
}

// refusedCredentials reports whether the server refused who we are:
// trying again cannot help.
func refusedCredentials(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}
