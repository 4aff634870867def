package projector_test

import (
	"fmt"

	"github.com/artifactstore/artifactstore/projector"
)

// Partition tells which partition (and so which worker) applies a subject's
// events; it matches the derived stream's {{partition(N,4)}} transform.
func ExamplePartition() {
	for _, id := range []string{"pkg-000001", "pkg-000002", "0193f1c2-7c1e-7000-8000-000000000001"} {
		fmt.Println(id, projector.Partition(id, 8))
	}
	fmt.Println(projector.DerivedStream(projector.DefaultStream, 8))
	// Output:
	// pkg-000001 7
	// pkg-000002 2
	// 0193f1c2-7c1e-7000-8000-000000000001 2
	// ARTIFACTSTORE_EVENTS_P8
}
