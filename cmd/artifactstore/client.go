package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/store"
)

// Exit codes of the client subcommands, one per error reply code.
const (
	exitError      = 1 // transport failure, internal error
	exitInvalid    = 2 // invalid_argument (and usage errors)
	exitNotFound   = 3 // not_found
	exitConflict   = 4 // conflict
	exitUnavailble = 5 // unavailable, or no service answering
	exitDenied     = 6 // permission_denied
	exitReused     = 7 // command_id_reused
	exitBroken     = 8 // verify, events tail: the history does not verify
)

// cliError carries an exit code and a message without a stack of wrapping.
type cliError struct {
	code int
	msg  string
}

func (e *cliError) Error() string { return e.msg }
func (e *cliError) ExitCode() int { return e.code }
func failf(code int, format string, args ...any) error {
	return &cliError{code, fmt.Sprintf(format, args...)}
}

// clientError turns a request error into a one-line message and exit code.
func clientError(err error) error {
	var e *ingest.Error
	switch {
	case errors.As(err, &e):
		code := map[string]int{ingest.CodeInvalidArgument: exitInvalid, ingest.CodeNotFound: exitNotFound,
			ingest.CodeConflict: exitConflict, ingest.CodeUnavailable: exitUnavailble, ingest.CodePermissionDenied: exitDenied,
			ingest.CodeCommandIDReused: exitReused}[e.Code]
		if code == 0 {
			code = exitError
		}
		return failf(code, "%s: %s", e.Code, e.Message)
	case errors.Is(err, nats.ErrNoResponders):
		return failf(exitUnavailble, "no artifactstore ingest service is answering on this NATS server")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return failf(exitUnavailble, "timed out waiting for the artifactstore service")
	}
	return err
}

// natsDialError explains a failed NATS connection and which flags fix it.
func natsDialError(url string, err error, tlsFlags bool) error {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return fmt.Errorf("NATS at %s refused the credentials (authorization violation: %v); check --nats-user/--nats-password, --nats-token, --nats-nkey or --nats-creds",
			redactURL(url), err)
	case tlsFlags || strings.Contains(url, "tls://") || isTLSError(err):
		return fmt.Errorf("cannot reach NATS at %s over TLS: %v (check --nats-tls-ca, --nats-tls-cert and --nats-tls-key)", redactURL(url), err)
	}
	return fmt.Errorf("cannot reach NATS at %s: %v (set --nats-url or ARTIFACTSTORE_NATS_URL)", redactURL(url), err)
}

// isTLSError reports whether err comes from the TLS handshake or
// certificate checks.
func isTLSError(err error) bool {
	var alert tls.AlertError
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordHeader tls.RecordHeaderError
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" { // crypto/tls reports a peer's alert this way
		return true
	}
	return errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted) ||
		errors.Is(err, nats.ErrClientCertOrRootCAsRequired) ||
		errors.As(err, &alert) || errors.As(err, &verify) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &recordHeader)
}

type clientFlags struct {
	JSON    bool          `env:"ARTIFACTSTORE_JSON" help:"Print JSON instead of a table."`
	Timeout time.Duration `env:"ARTIFACTSTORE_TIMEOUT" default:"5s" help:"How long to wait for the reply."`
}

// dialClient connects for a single request: no reconnect loop, a clear
// error when the server cannot be reached. Its pauses between attempts
// (600 ms in all) are not cut short.
func dialClient(g *globals) (*nats.Conn, error) {
	auth, err := g.options()
	if err != nil {
		return nil, err
	}
	nc, err := dialNATS(context.Background(), g.natsURL(), append(auth, nats.Name("artifactstore-cli"), nats.Timeout(3*time.Second), nats.NoReconnect()))
	if err != nil {
		return nil, failf(exitUnavailble, "%v", natsDialError(g.natsURL(), err, g.usesTLS()))
	}
	return nc, nil
}

func call(ctx context.Context, g *globals, f clientFlags, subject string, req, reply any) error {
	nc, err := dialClient(g)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	if err := ingest.Call(ctx, nc, subject, req, reply); err != nil {
		return clientError(err)
	}
	return nil
}

type packageCmd struct {
	Create   packageCreateCmd   `cmd:"" help:"Create a package."`
	Finalize packageFinalizeCmd `cmd:"" help:"Finalize a package with its manifest digest."`
	Get      packageGetCmd      `cmd:"" help:"Show one package."`
	List     packageListCmd     `cmd:"" help:"List packages."`
}

type packageCreateCmd struct {
	clientFlags
	Actor     string `required:"" env:"ARTIFACTSTORE_ACTOR" help:"Who issues the command."`
	Name      string `required:"" env:"ARTIFACTSTORE_PACKAGE_NAME" help:"Package name."`
	Version   string `required:"" env:"ARTIFACTSTORE_PACKAGE_VERSION" help:"Package version."`
	KeepDays  int    `name:"keep-days" env:"ARTIFACTSTORE_KEEP_DAYS" help:"Keep the package this many days after finalization (default: forever)."`
	CommandID string `name:"command-id" env:"ARTIFACTSTORE_COMMAND_ID" help:"Idempotency key: the same id again returns the first reply."`
}

func (c packageCreateCmd) Run(ctx context.Context, g *globals) error {
	req := ingest.CreateRequest{CommandID: c.CommandID, Actor: c.Actor, Name: c.Name, Version: c.Version}
	if c.KeepDays > 0 {
		req.Retention = &store.RetentionPolicy{Policy: store.RetentionKeepDays, KeepDays: c.KeepDays}
	}
	var reply ingest.CommandReply
	if err := call(ctx, g, c.clientFlags, ingest.SubjectCreate, req, &reply); err != nil {
		return err
	}
	return printCommandReply(c.JSON, reply)
}

type packageFinalizeCmd struct {
	clientFlags
	Actor     string `required:"" env:"ARTIFACTSTORE_ACTOR" help:"Who issues the command."`
	ID        string `arg:"" name:"package-id" help:"The package id create returned."`
	Digest    string `required:"" name:"manifest-digest" env:"ARTIFACTSTORE_MANIFEST_DIGEST" help:"64 lowercase hex characters."`
	CommandID string `name:"command-id" env:"ARTIFACTSTORE_COMMAND_ID" help:"Idempotency key."`
}

func (c packageFinalizeCmd) Run(ctx context.Context, g *globals) error {
	req := ingest.FinalizeRequest{CommandID: c.CommandID, Actor: c.Actor, PackageID: c.ID, ManifestDigest: c.Digest}
	var reply ingest.CommandReply
	if err := call(ctx, g, c.clientFlags, ingest.SubjectFinalize, req, &reply); err != nil {
		return err
	}
	return printCommandReply(c.JSON, reply)
}

func printCommandReply(asJSON bool, r ingest.CommandReply) error {
	if asJSON {
		return json.NewEncoder(os.Stdout).Encode(r)
	}
	fmt.Printf("%s %s (sequence %d, %s)\n", r.EventType, r.PackageID, r.Sequence, r.CreatedAt.Format(time.RFC3339Nano))
	return nil
}

type packageGetCmd struct {
	clientFlags
	ID string `arg:"" name:"package-id" help:"Package id."`
}

func (c packageGetCmd) Run(ctx context.Context, g *globals) error {
	var v store.PackageView
	if err := call(ctx, g, c.clientFlags, ingest.SubjectGet, ingest.GetRequest{PackageID: c.ID}, &v); err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(os.Stdout).Encode(v)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "package_id\t%s\nname\t%s\nversion\t%s\nstatus\t%s\ncreated_by\t%s\ncreated_at\t%s\n",
		v.ID, v.Name, v.Version, v.Status, v.CreatedBy, v.CreatedAt.Format(time.RFC3339Nano))
	if v.FinalizedAt != nil {
		fmt.Fprintf(w, "finalized_by\t%s\nfinalized_at\t%s\n", v.FinalizedBy, v.FinalizedAt.Format(time.RFC3339Nano))
	}
	if v.ManifestDigest != nil {
		fmt.Fprintf(w, "manifest_digest\t%s\n", v.ManifestDigest)
	}
	if v.Retention != nil {
		ret := v.Retention.Policy
		if v.Retention.Policy == store.RetentionKeepDays {
			ret = fmt.Sprintf("%s (%d)", ret, v.Retention.KeepDays)
		}
		if v.Retention.ExpiresAt != nil {
			ret += ", expires " + v.Retention.ExpiresAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "retention\t%s\n", ret)
	}
	fmt.Fprintf(w, "last_sequence\t%d\n", v.LastSequence)
	return w.Flush()
}

type packageListCmd struct {
	clientFlags
	Name   string `env:"ARTIFACTSTORE_PACKAGE_NAME" help:"Only packages of this name."`
	Status string `enum:"open,finalized," default:"" env:"ARTIFACTSTORE_PACKAGE_STATUS" help:"Only packages in this status (open, finalized)."`
	After  string `env:"ARTIFACTSTORE_AFTER" help:"Paging cursor (the next value of the previous page)."`
	Limit  int    `env:"ARTIFACTSTORE_LIMIT" help:"Page size (default 100, at most 1000)."`
}

func (c packageListCmd) Run(ctx context.Context, g *globals) error {
	var reply ingest.ListReply
	req := ingest.ListRequest{Name: c.Name, Status: c.Status, After: c.After, Limit: c.Limit}
	if err := call(ctx, g, c.clientFlags, ingest.SubjectList, req, &reply); err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(os.Stdout).Encode(reply)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PACKAGE_ID\tNAME\tVERSION\tSTATUS\tCREATED_AT")
	for _, p := range reply.Packages {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.ID, p.Name, p.Version, p.Status, p.CreatedAt.Format(time.RFC3339))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if reply.Next != "" {
		fmt.Fprintf(os.Stderr, "more: --after %s\n", strings.TrimSpace(reply.Next))
	}
	return nil
}
