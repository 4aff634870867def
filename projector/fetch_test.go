package projector

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// latencyProxy forwards TCP connections to target and delivers every byte
// delay after it was read, in each direction, in order: a network link
// with that one-way latency.
func latencyProxy(t testing.TB, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			b  []byte
			at time.Time
		}
		ch := make(chan chunk, 4096)
		wg.Go(func() {
			defer close(ch)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					ch <- chunk{buf[:n], time.Now().Add(delay)}
				}
				if err != nil {
					return
				}
			}
		})
		wg.Go(func() {
			defer func() {
				_ = dst.Close()
				_ = src.Close()
				for range ch {
				}
			}()
			for c := range ch {
				time.Sleep(time.Until(c.at)) // the link's latency
				if _, err := dst.Write(c.b); err != nil {
					return
				}
			}
		})
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			pipe(s, c)
			pipe(c, s)
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "nats://" + ln.Addr().String()
}

// TestFetchKeepsWhatTheServerSent: messages the server sends right before
// a pull request expires reach the worker a link's latency later. They
// must be applied, not dropped: a dropped message comes back only after
// AckWait (a minute here), and its partition waits that long. A pull
// request that ends on a client deadline (FetchContext: the server's
// expiry plus 10 %) drops them whenever the latency exceeds that margin.
func TestFetchKeepsWhatTheServerSent(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	url := latencyProxy(t, strings.TrimPrefix(e.srv.URL(), "nats://"), 40*time.Millisecond)
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	cfg := fastConfig("slow-link", n)
	cfg.AckWait = time.Minute
	cfg.FetchWait = 200 * time.Millisecond
	cfg.PinnedTTL = 5 * time.Second
	cfg.MemberTTL = 5 * time.Second
	r := e.startConn(t, cfg, nc)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return r.metric(t, "artifactstore_projector_owned_partitions", nil) == n
	}, "the worker to own every partition")

	// A steady trickle, so that messages are in flight whenever a pull
	// request expires.
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i += 4 {
		appendPackages(t, e.db, i, i+4)
		e.relay(t)
		time.Sleep(7 * time.Millisecond) // pacing the load
	}
	want := expected(t, e.db, n)
	testenv.Eventually(t, 15*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) },
		"every partition to reach its last event well within AckWait")
	require.Zero(t, r.metric(t, "artifactstore_projector_redelivered_total", nil), "nothing had to come again")
	requireReplayEqual(t, e.db, n)
	require.NoError(t, r.stop())
	if err := nc.LastError(); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("nats: %v", err)
	}
}
