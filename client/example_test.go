package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc/pool"

	"github.com/artifactstore/artifactstore/client"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store/sqlite"
)

// startDemo runs a whole artifactstore (in-process NATS, SQLite, ingest,
// relay, projector) in a temp dir and returns a connection to it and a
// stop function.
func startDemo() (*nats.Conn, func()) {
	dir, err := os.MkdirTemp("", "artifactstore-example-")
	if err != nil {
		panic(err)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		panic("nats-server did not start")
	}
	ctx, cancel := context.WithCancel(context.Background())
	db, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "log.db")})
	if err != nil {
		panic(err)
	}
	if _, err := db.Migrate(ctx); err != nil {
		panic(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		panic(err)
	}
	js, _ := jetstream.New(nc)
	svc, _ := ingest.New(db, nc, ingest.Config{})
	r, _ := relay.New(db, js, relay.Config{})
	w, _ := projector.New(db, js, projector.Config{})
	p := pool.New().WithContext(ctx)
	p.Go(svc.Run)
	p.Go(r.Run)
	p.Go(w.Run)
	// Wait until the service answers and the relay created the stream.
	for {
		_, err := nc.Request("$SRV.PING.artifactstore", nil, time.Second)
		_, serr := js.Stream(ctx, "ARTIFACTSTORE_EVENTS")
		if err == nil && serr == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nc, func() {
		cancel()
		_ = p.Wait()
		nc.Close()
		db.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
		os.RemoveAll(dir)
	}
}

func Example() {
	nc, stop := startDemo()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := client.New(nc)
	if err != nil {
		panic(err)
	}
	created, err := c.CreatePackage(ctx, client.CreateRequest{Actor: "ci@example.com", Name: "web", Version: "1.4.0",
		Retention: &client.RetentionPolicy{Policy: "keep_days", KeepDays: 30}})
	if err != nil {
		panic(err)
	}
	fmt.Println(created.EventType, created.Sequence)

	_, err = c.CreatePackage(ctx, client.CreateRequest{Actor: "ci@example.com", Name: "web", Version: "1.4.0"})
	fmt.Println("again:", errors.Is(err, client.ErrConflict))

	digest := strings.Repeat("0f", 32)
	fin, err := c.FinalizePackage(ctx, client.FinalizeRequest{Actor: "ci@example.com", PackageID: created.PackageID, ManifestDigest: digest})
	if err != nil {
		panic(err)
	}
	fmt.Println(fin.EventType, fin.Sequence)

	// The views are eventually consistent: wait until the projector applied it.
	for {
		p, err := c.GetPackage(ctx, created.PackageID)
		if err == nil && p.Status == "finalized" {
			fmt.Println(p.Name, p.Version, p.Status, p.ManifestDigest.String() == digest, p.Retention.Policy)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A downstream consumer: every event, in order, digest verified.
	n := 0
	for ev, err := range c.Events(ctx, client.EventsOptions{}) {
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.Sequence, ev.Type, ev.Actor)
		if n++; n == 2 {
			break
		}
	}
	// Output:
	// v1.package.created 1
	// again: true
	// v1.package.finalized 2
	// web 1.4.0 finalized true keep_days
	// 1 v1.package.created ci@example.com
	// 2 v1.package.finalized ci@example.com
}
