package relay_test

import (
	"fmt"
	"slices"
	"time"

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
	m := relay.Encode("log-a", e)
	fmt.Println(m.Subject)
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k != relay.HeaderPayloadDigest {
			fmt.Printf("%s: %s\n", k, m.Header.Get(k))
		}
	}
	// Output:
	// artifactstore.events.v1.package.created.pkg-1
	// Artifactstore-Actor: ci-bot
	// Artifactstore-Created-At: 2026-11-27T07:00:00.000005000Z
	// Artifactstore-Event-Type: v1.package.created
	// Artifactstore-Log-Id: log-a
	// Artifactstore-Sequence: 17
	// Artifactstore-Subject-Id: pkg-1
	// Artifactstore-Subject-Kind: package
	// Nats-Msg-Id: log-a-17
}
