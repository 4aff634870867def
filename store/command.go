package store

// CommandRecord is what the log keeps of a completed command, by its
// command_id: the reply it was answered with and the fingerprint of its
// parameters, so that a retry is answered the same and a command_id
// reused for another command is recognised. Fingerprint is nil for
// commands recorded before fingerprints were (migration 00005).
type CommandRecord struct {
	Reply       []byte
	Fingerprint []byte
}
