package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

var (
	// binary is the artifactstore binary under test.
	binary string
	// natsBinary is a real nats-server built from the module's dependency.
	natsBinary string
	// moduleRoot is the module's directory (for builds of patched copies).
	moduleRoot string
)

// EnvBinary names an artifactstore binary to test instead of building one.
const EnvBinary = "ARTIFACTSTORE_E2E_BINARY"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "artifactstore-e2e-bin-")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		wd, err := os.Getwd()
		if err != nil {
			panic(err)
		}
		moduleRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
		binary = os.Getenv(EnvBinary)
		if binary == "" {
			binary = filepath.Join(dir, "artifactstore")
			if err := goBuild(moduleRoot, binary, "./cmd/artifactstore"); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		natsBinary = filepath.Join(dir, "nats-server")
		if err := goBuild(moduleRoot, natsBinary, "github.com/nats-io/nats-server/v2"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return testenv.Main(m)
	}()
	os.Exit(code)
}

// goBuild builds pkg in module dir into out (no race detector: the suite
// runs seven service processes on a shared 2-core machine).
func goBuild(dir, out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	return nil
}
