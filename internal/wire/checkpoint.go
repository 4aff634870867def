package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

// CheckpointBucket is the JetStream key-value bucket the relay puts signed
// checkpoints in, under the log id as key. Only the relay writes it.
const CheckpointBucket = "ARTIFACTSTORE_CHECKPOINTS"

// checkpointDomain starts the bytes a checkpoint signature covers, so that
// a signature over anything else is never a valid checkpoint.
const checkpointDomain = "artifactstore checkpoint v1\n"

// Checkpoint pins a log's history: the relay signs, with its ed25519 key,
// that the log LogID held, at Sequence, the event whose chain digest is
// ChainDigest (and so, through the chain, every event before it), and that
// the events stream held it. A party that keeps a checkpoint can later
// prove the log still extends it — a rewrite changes ChainDigest, a
// dropped tail loses Sequence — which the chain alone cannot show for the
// newest events.
type Checkpoint struct {
	LogID       string       `json:"log_id"`
	Sequence    int64        `json:"sequence"`
	ChainDigest store.Digest `json:"chain_digest"`
	// SignedAt is when the relay signed it (informational, not signed).
	SignedAt time.Time `json:"signed_at"`
	// PublicKey is the signer's ed25519 public key (informational: check
	// the signature with a key you trust, not with this one).
	PublicKey []byte `json:"public_key"`
	// Signature is ed25519 over SignedBytes.
	Signature []byte `json:"signature"`
}

// SignedBytes returns what the signature covers:
// "artifactstore checkpoint v1\n<log id>\n<sequence>\n<chain digest hex>\n".
func (c Checkpoint) SignedBytes() []byte {
	return []byte(checkpointDomain + c.LogID + "\n" + strconv.FormatInt(c.Sequence, 10) + "\n" + c.ChainDigest.String() + "\n")
}

// SignCheckpoint returns the checkpoint of head in the log logID, signed
// with key at the time at.
func SignCheckpoint(key ed25519.PrivateKey, logID string, head store.ChainHead, at time.Time) Checkpoint {
	c := Checkpoint{LogID: logID, Sequence: head.Sequence, ChainDigest: head.Digest, SignedAt: at.UTC(),
		PublicKey: key.Public().(ed25519.PublicKey)}
	c.Signature = ed25519.Sign(key, c.SignedBytes())
	return c
}

// ErrCheckpointSignature is returned by Checkpoint.Verify when the
// signature is not the given key's over the checkpoint.
var ErrCheckpointSignature = errors.New("wire: checkpoint signature does not verify")

// Verify checks c's signature with pub.
func (c Checkpoint) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, c.SignedBytes(), c.Signature) {
		return fmt.Errorf("%w with the given key (log %s, sequence %d)", ErrCheckpointSignature, c.LogID, c.Sequence)
	}
	return nil
}

// ErrInvalidCheckpoint is wrapped by DecodeCheckpoint's errors.
var ErrInvalidCheckpoint = errors.New("wire: invalid checkpoint")

// DecodeCheckpoint parses a checkpoint as EncodeCheckpoint writes it:
// one JSON object, unknown fields refused. It does not check the
// signature (Verify does).
func DecodeCheckpoint(data []byte) (Checkpoint, error) {
	var c Checkpoint
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrInvalidCheckpoint, err)
	}
	if dec.More() {
		return Checkpoint{}, fmt.Errorf("%w: data after the JSON object", ErrInvalidCheckpoint)
	}
	switch {
	case c.LogID == "":
		return Checkpoint{}, fmt.Errorf("%w: no log_id", ErrInvalidCheckpoint)
	case c.Sequence < 1:
		return Checkpoint{}, fmt.Errorf("%w: sequence %d", ErrInvalidCheckpoint, c.Sequence)
	case len(c.Signature) != ed25519.SignatureSize:
		return Checkpoint{}, fmt.Errorf("%w: no ed25519 signature", ErrInvalidCheckpoint)
	}
	return c, nil
}

// EncodeCheckpoint returns c as indented JSON with a final newline.
func EncodeCheckpoint(c Checkpoint) []byte {
	b, _ := json.MarshalIndent(c, "", "  ") // no field can fail to marshal
	return append(b, '\n')
}
