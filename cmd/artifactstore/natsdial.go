package main

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// dialAttempts is how many times dialNATS tries to connect.
const dialAttempts = 3

// dialNATS connects, trying again twice after a failure that is not about
// credentials: a server busy authenticating (bcrypt) may send its first
// keepalive PING before the PONG that completes the handshake, which the
// client reports as a failed connect (nats-server issue 1174), and a
// server that is restarting refuses for a moment.
func dialNATS(url string, opts []nats.Option) (*nats.Conn, error) {
	var err error
	for attempt := 1; ; attempt++ {
		var nc *nats.Conn
		if nc, err = nats.Connect(url, opts...); err == nil {
			return nc, nil
		}
		if attempt == dialAttempts || refusedCredentials(err) {
			return nil, err
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
}

// refusedCredentials reports whether the server refused who we are:
// trying again cannot help.
func refusedCredentials(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}
