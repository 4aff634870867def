package projector_test

import (
	"fmt"

	"github.com/artifactstore/artifactstore/projector"
)

// Partition tells which partition (and so which worker) applies a subject's
// events, and which subject filter reads them: FNV-1a-32 of the subject id
// modulo the log's partition count, as nats-server's partition() mapping.
func ExamplePartition() {
	for _, id := range []string{"pkg-000001", "pkg-000002", "0193f1c2-7c1e-7000-8000-000000000001"} {
		fmt.Println(id, projector.Partition(id, 16))
	}
	// Output:
	// pkg-000001 7
	// pkg-000002 10
	// 0193f1c2-7c1e-7000-8000-000000000001 10
}
