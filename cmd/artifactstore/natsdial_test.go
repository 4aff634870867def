package main

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

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
	nc, err := dialNATS("nats://"+addr, []nats.Option{nats.NoReconnect(), nats.Timeout(3 * time.Second)})
	require.NoError(t, err, "dialNATS connects on its second attempt")
	require.True(t, nc.IsConnected())
	nc.Close()
	wait()
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
