package relay_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

func TestMain(m *testing.M) {
	// Every relay, connection and server the tests started must be gone.
	os.Exit(testenv.MainNoLeaks(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine"),
		// nats-server 2.15.2 leaks the staging store of an atomic batch whose
		// messages arrive while the server shuts down (TestNATSRestart/batch;
		// reproduced with plain nc.PublishMsg batches and Shutdown, no relay
		// involved). A process exits at shutdown; only in-process tests see it.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*msgBlock).flushLoop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1")))
}
