package projector

import (
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/artifactstore/artifactstore/store"
)

// publicSubjects is the public stream's subject pattern the derived stream
// sources: artifactstore.events.<3-token event type>.<subject id>.
const publicSubjects = "artifactstore.events.*.*.*.*"

// partitionedPrefix starts every subject of the derived stream:
// artifactstore.partitioned.<partition>.<event type>.<subject id>.
const partitionedPrefix = "artifactstore.partitioned."

// Partition returns the partition of subjectID among n partitions. It is
// exactly what the derived stream's subject transform {{partition(n,4)}}
// computes on the server (FNV-1a 32 of the subject id token, modulo n), so
// the projector can place log events it reads from PostgreSQL in the same
// partition the stream put them in.
func Partition(subjectID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subjectID))
	return int(h.Sum32() % uint32(n))
}

// Partitioner returns the function store.ReplayOptions.PartitionOf needs
// for a projection with n partitions.
func Partitioner(n int) func(store.Event) int {
	return func(e store.Event) int { return Partition(e.SubjectID, n) }
}

// DerivedStream names the partitioned stream the projector derives from
// stream for n partitions.
func DerivedStream(stream string, n int) string { return fmt.Sprintf("%s_P%d", stream, n) }

// consumerName names the durable consumer of one partition of a projection.
func consumerName(projection string, partition int) string {
	return projection + "-p" + strconv.Itoa(partition)
}

func partitionFilter(partition int) string {
	return partitionedPrefix + strconv.Itoa(partition) + ".>"
}

func partitionTransform(n int) string {
	return fmt.Sprintf("%s{{partition(%d,4)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{wildcard(4)}}", partitionedPrefix, n)
}
