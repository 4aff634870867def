package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestDialNATSRetriesAHandshakeHiccup: the first connection gets a PING
// where the handshake's PONG belongs (what a server busy authenticating
// does); a plain connect fails on it, dialNATS connects on its next
// attempt, to the real server behind.
func TestDialNATSRetriesAHandshakeHiccup(t *testing.T) {
	t.Parallel()
	target := strings.TrimPrefix(testenv.NATS(t).URL(), "nats://")

	addr, wait := hiccupServer(t, target)
	_, err := nats.Connect("nats://"+addr, nats.NoReconnect())
	require.ErrorContains(t, err, "expected 'PONG', got 'PING'", "a plain connect fails on the hiccup")
	wait()

	addr, wait = hiccupServer(t, target)
	nc, err := dialNATS(context.Background(), "nats://"+addr, []nats.Option{nats.NoReconnect(), nats.Timeout(3 * time.Second)})
	require.NoError(t, err, "dialNATS connects on its second attempt")
	require.True(t, nc.IsConnected())
	nc.Close()
	wait()
}

// TestDialNATSGivesUp: a server that drops every connection is tried
// dialAttempts times; one that refuses the credentials only once (trying
// again cannot help); a cancelled context ends the pause at once.
func TestDialNATSGivesUp(t *testing.T) {
	t.Parallel()
	opts := []nats.Option{nats.NoReconnect(), nats.Timeout(3 * time.Second)}

	addr, accepted := countingServer(t, "")
	_, err := dialNATS(context.Background(), "nats://"+addr, opts)
	require.Error(t, err)
	require.EqualValues(t, dialAttempts, accepted())

	srv := testenv.NATSWith(t, func(o *server.Options) { o.Username, o.Password = "u", "right" })
	addr, accepted = countingServer(t, strings.TrimPrefix(srv.URL(), "nats://"))
	_, err = dialNATS(context.Background(), "nats://"+addr, append(opts, nats.UserInfo("u", "wrong")))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	require.EqualValues(t, 1, accepted(), "refused credentials are not tried again")

	ctx, cancel := context.WithCancel(context.Background())
	addr, accepted = countingServer(t, "", cancel)
	_, err = dialNATS(ctx, "nats://"+addr, opts)
	require.ErrorIs(t, err, context.Canceled)
	require.EqualValues(t, 1, accepted(), "no attempt after the cancel")
}

// countingServer listens on a free port and counts the connections it
// accepts, calling each of onAccept for each: each is forwarded to target,
// or closed at once when target is "". At cleanup it closes the listener
// and every connection and waits for its goroutines.
func countingServer(t *testing.T, target string, onAccept ...func()) (addr string, accepted func() int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var n atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	forward := func(c net.Conn) {
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		mu.Lock()
		conns = append(conns, c, up)
		mu.Unlock()
		wg.Add(2)
		go func() { defer wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
		go func() { defer wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			for _, f := range onAccept {
				f()
			}
			if target == "" {
				c.Close()
				continue
			}
			forward(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), n.Load
}

// hiccupServer listens on a free port: its first connection gets INFO and,
// for the client's handshake PING, a PING; its second is forwarded to
// target. wait closes the listener and waits for its goroutines.
func hiccupServer(t *testing.T, target string) (addr string, wait func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		first, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = first.Write([]byte(`INFO {"server_id":"fake","version":"2.15.2","proto":1,"max_payload":1048576}` + "\r\n"))
		r := bufio.NewReader(first)
		for line, err := r.ReadString('\n'); err == nil && line != "PING\r\n"; line, err = r.ReadString('\n') {
		}
		_, _ = first.Write([]byte("PING\r\n"))
		first.Close()
		second, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			second.Close()
			return
		}
		go func() { _, _ = io.Copy(up, second); up.Close() }()
		_, _ = io.Copy(second, up)
		second.Close()
	}()
	return ln.Addr().String(), func() { ln.Close(); <-done }
}
