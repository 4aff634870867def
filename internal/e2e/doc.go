// Package e2e holds the proof that artifactstore keeps its guarantees under
// load and faults: an end-to-end benchmark (BenchmarkEndToEnd) and a chaos
// suite (TestChaos) that run the real binary as separate processes (ingest
// ×2, relay ×2, projector ×3) against a throwaway PostgreSQL cluster and
// real nats-server processes (one, or a 3-node JetStream cluster), all on
// 127.0.0.1.
//
// # Harness
//
// TestMain builds bin/artifactstore and nats-server once into a temp dir
// (ARTIFACTSTORE_E2E_BINARY overrides the artifactstore binary, which is how
// a deliberately broken build is put under test). A supervisor restarts any
// process that is meant to be up and has exited, as an orchestrator would;
// faults take a process out of supervision, SIGKILL or SIGSTOP it, and hand
// it back after a random delay. Every wait is bounded.
//
// # Oracles
//
// After each scenario the load stops, every process is brought back, the
// pipeline is awaited until the relay and every projection partition have
// reached the log head, and three checks run, reported in Jepsen's terms:
//
//   - acks: every acknowledged command is in the log (by sequence, type
//     and package id); an unacknowledged command found in the log is
//     "recovered"; a log event no client attempted is "unexpected"; one
//     command appended twice is "duplicated".
//   - O1: the stream holds every committed event exactly once, in sequence
//     order, with every header and digest correct (wire.Decode on every
//     message, compared field by field with store.DB.Fetch), each in its
//     partition (Artifactstore-Partition is wire.Partition of its subject
//     id among the log's P) and naming its partition's previous event in
//     the log (Artifactstore-Partition-Previous).
//   - O2: the views the projectors built are byte-identical to a replay of
//     the log (store.DB.DumpViews before and after store.Replay with Reset
//     on the same database, projectors stopped).
//
// Pass is lost 0, duplicated 0, unexpected 0 in every check.
//
// # Projector tests
//
// Four tests put the projectors' guarantees to real processes, each
// asserting what it names: TestRelayOutageLargeBacklog (a backlog larger
// than any in-memory window committed with the relay down; every
// partition's checkpoint reaches the head, every package is in the views,
// O1 and O2), TestProjectorKilledForGood (reply → view lag of every
// command issued after one of three projectors is SIGKILLed for good stays
// under 5s), TestProjectorJoinsUnderLoad (a joining projector holds
// partitions within 3s of starting) and TestProjectorsSurviveRestartsAndPauses
// (nats-server and PostgreSQL restarts and a SIGSTOP longer than the lease
// TTL; nothing parked, O1 and O2).
//
// # Modes
//
// TestChaos runs its short mode (a bounded subset, well under three minutes)
// unless ARTIFACTSTORE_CHAOS=long, which `make chaos` sets; `make test` and
// CI therefore run the short mode. The backlog test commits 120,000 events
// in the short mode and 250,000 in the long one. BenchmarkEndToEnd runs
// only with -bench (`make bench-e2e`).
package e2e
