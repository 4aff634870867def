package projector

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.MainNoLeaks(m,
		// pgx's and nats-server's background timers wind down asynchronously.
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
	))
}
