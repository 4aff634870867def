package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
)

type checkpointCmd struct {
	Keygen checkpointKeygenCmd `cmd:"" help:"Make an ed25519 key pair for signing checkpoints (relay --checkpoint-key) and checking them (--checkpoint-pubkey)."`
	Get    checkpointGetCmd    `cmd:"" help:"Fetch the latest signed checkpoint the relay published, to keep it and later run 'verify --checkpoint FILE'."`
}

type checkpointKeygenCmd struct {
	Out string `default:"checkpoint.pem" type:"path" help:"The private key file (mode 0600); the public key goes to the same name with .pub.pem."`
}

func (c checkpointKeygenCmd) Run() error {
	pubPath := strings.TrimSuffix(c.Out, ".pem") + ".pub.pem"
	if _, err := writeKeyPair(c.Out, pubPath); err != nil {
		return failf(exitInvalid, "checkpoint keygen: %v", err)
	}
	fmt.Printf("private key: %s (give it to the relay: --checkpoint-key)\npublic key:  %s (give it to whoever verifies: --checkpoint-pubkey)\n", c.Out, pubPath)
	return nil
}

type checkpointGetCmd struct {
	LogID            string `name:"log-id" env:"ARTIFACTSTORE_LOG_ID" help:"Log whose checkpoint to fetch (default: the only one in the bucket)."`
	Out              string `type:"path" help:"Write the checkpoint to this file instead of standard output."`
	CheckpointPubkey string `name:"checkpoint-pubkey" env:"ARTIFACTSTORE_CHECKPOINT_PUBKEY" type:"path" help:"Check the signature with this ed25519 public key (PEM) before keeping it."`
}

func (c checkpointGetCmd) Run(ctx context.Context, g *globals) error {
	nc, err := dialClient(g)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	logID := c.LogID
	if logID == "" {
		if logID, err = onlyLog(ctx, js); err != nil {
			return err
		}
	}
	cp, err := relay.ReadCheckpoint(ctx, js, logID)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrKeyNotFound):
		return failf(exitNotFound, "no checkpoint of log %s (does a relay run with --checkpoint-key?): %v", logID, err)
	case err != nil:
		return failf(exitUnavailble, "%v", err)
	}
	if c.CheckpointPubkey != "" {
		pub, err := readPublicKey(c.CheckpointPubkey)
		if err != nil {
			return failf(exitInvalid, "--checkpoint-pubkey: %v", err)
		}
		if err := cp.Verify(pub); err != nil {
			return failf(exitBroken, "%v", err)
		}
	}
	if c.Out == "" {
		_, err = os.Stdout.Write(wire.EncodeCheckpoint(cp))
		return err
	}
	return os.WriteFile(c.Out, wire.EncodeCheckpoint(cp), 0o644)
}

// onlyLog returns the log id of the bucket's only key.
func onlyLog(ctx context.Context, js jetstream.JetStream) (string, error) {
	kv, err := js.KeyValue(ctx, wire.CheckpointBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return "", failf(exitNotFound, "no checkpoint bucket %s (does a relay run with --checkpoint-key?)", wire.CheckpointBucket)
	}
	if err != nil {
		return "", failf(exitUnavailble, "%v", err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return "", failf(exitUnavailble, "%v", err)
	}
	var ids []string
	for k := range keys.Keys() {
		ids = append(ids, k)
	}
	switch len(ids) {
	case 0:
		return "", failf(exitNotFound, "no checkpoint in %s yet", wire.CheckpointBucket)
	case 1:
		return ids[0], nil
	}
	return "", failf(exitInvalid, "%s holds checkpoints of several logs (%s): choose one with --log-id", wire.CheckpointBucket, strings.Join(ids, ", "))
}
