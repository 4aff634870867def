package relay_test

import (
	"context"
	"fmt"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

func ExampleEncode() {
	e, err := store.NewEvent("v1.package.created", "package", "pkg-1", "ci-bot", []byte(`{"package_id":"pkg-1"}`))
	if err != nil {
		panic(err)
	}
	e.Sequence = 17
	e.CreatedAt = time.Date(2026, 11, 27, 7, 0, 0, 5000, time.UTC)
	m := relay.Encode("log-a", e, 16, 9)
	fmt.Println(m.Subject)
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k != wire.HeaderPayloadDigest {
			fmt.Printf("%s: %s\n", k, m.Header.Get(k))
		}
	}
	// Output:
	// artifactstore.events.v1.package.created.pkg-1.15
	// Artifactstore-Actor: ci-bot
	// Artifactstore-Created-At: 2026-11-27T07:00:00.000005000Z
	// Artifactstore-Event-Type: v1.package.created
	// Artifactstore-Log-Id: log-a
	// Artifactstore-Partition: 15
	// Artifactstore-Partition-Previous: 9
	// Artifactstore-Sequence: 17
	// Artifactstore-Subject-Id: pkg-1
	// Artifactstore-Subject-Kind: package
	// Nats-Msg-Id: log-a-17
}

// How cmd wires a relay: a store, a JetStream context, a config; Run until
// a signal.
func ExampleNew() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var db store.DB // postgres.Open(ctx, postgres.Config{URL: ...})
	nc, err := nats.Connect(nats.DefaultURL, nats.MaxReconnects(-1))
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	r, err := relay.New(db, js, relay.Config{
		Replicas:   3,
		Logger:     zap.NewExample(),
		Registerer: prometheus.DefaultRegisterer,
	})
	if err != nil {
		panic(err)
	}
	if err := r.Run(ctx); err != nil {
		panic(err) // the stream conflicts or belongs to another log
	}
}

// How the status command reads the relay's position and lag without a
// running relay.
func ExampleReadStatus() {
	ctx := context.Background()
	var db store.DB
	var js jetstream.JetStream
	st, err := relay.ReadStatus(ctx, db, js, relay.DefaultStream)
	if err != nil {
		panic(err)
	}
	fmt.Printf("log head %d, relay position %d, lag %d\n", st.Head, st.Sequence, st.Lag)
}
