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
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine")))
}
