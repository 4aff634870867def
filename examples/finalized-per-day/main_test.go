package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// exampleBin is this program, artifactstoreBin the artifactstore binary
// (its projector runs beside the example), both built once for the tests.
var exampleBin, artifactstoreBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "finalized-per-day-bin-")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		exampleBin, artifactstoreBin = filepath.Join(dir, "finalized-per-day"), filepath.Join(dir, "artifactstore")
		for out, pkg := range map[string]string{exampleBin: ".", artifactstoreBin: "../../cmd/artifactstore"} {
			// No race detector in the children: the tests run several of
			// them on a shared 2-core machine.
			if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		return testenv.MainNoLeaks(m,
			goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
			goleak.IgnoreTopFunction("time.Sleep"),
			goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine"),
			goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
			goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*msgBlock).flushLoop"),
			goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
		)
	}()
	os.Exit(code)
}
