package postgres_test

import (
	"os"
	"testing"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.DB { return testenv.Postgres(t) })
}
