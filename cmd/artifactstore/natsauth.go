package main

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// natsAuth are the NATS authentication and TLS flags every subcommand that
// talks to NATS accepts; they map one to one onto nats.go's options.
type natsAuth struct {
	NATSCreds    string `name:"nats-creds" env:"ARTIFACTSTORE_NATS_CREDS" type:"existingfile" help:"NATS .creds file (JWT and NKey seed)."`
	NATSNKey     string `name:"nats-nkey" env:"ARTIFACTSTORE_NATS_NKEY" type:"existingfile" help:"NATS NKey seed file."`
	NATSUser     string `name:"nats-user" env:"ARTIFACTSTORE_NATS_USER" help:"NATS user name."`
	NATSPassword string `name:"nats-password" env:"ARTIFACTSTORE_NATS_PASSWORD" help:"NATS password (prefer the environment variable)."`
	NATSToken    string `name:"nats-token" env:"ARTIFACTSTORE_NATS_TOKEN" help:"NATS token (prefer the environment variable)."`
	NATSTLSCA    string `name:"nats-tls-ca" env:"ARTIFACTSTORE_NATS_TLS_CA" type:"existingfile" help:"CA certificate(s) to verify the NATS server."`
	NATSTLSCert  string `name:"nats-tls-cert" env:"ARTIFACTSTORE_NATS_TLS_CERT" type:"existingfile" help:"Client certificate for NATS mutual TLS."`
	NATSTLSKey   string `name:"nats-tls-key" env:"ARTIFACTSTORE_NATS_TLS_KEY" type:"existingfile" help:"Client key for NATS mutual TLS."`
	NATSInbox    string `name:"nats-inbox-prefix" env:"ARTIFACTSTORE_NATS_INBOX_PREFIX" help:"Prefix of this process's reply subjects (default _INBOX). Give each NATS user its own and allow it to subscribe to that prefix only, so that no user can read another's replies."`
}

// options returns the nats.go options the flags ask for.
func (a natsAuth) options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(a.NATSCreds))
	}
	if a.NATSNKey != "" {
		o, err := nats.NkeyOptionFromSeed(a.NATSNKey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if a.NATSUser != "" || a.NATSPassword != "" {
		opts = append(opts, nats.UserInfo(a.NATSUser, a.NATSPassword))
	}
	if a.NATSToken != "" {
		opts = append(opts, nats.Token(a.NATSToken))
	}
	if a.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(a.NATSTLSCA))
	}
	if (a.NATSTLSCert == "") != (a.NATSTLSKey == "") {
		return nil, fmt.Errorf("--nats-tls-cert and --nats-tls-key go together")
	}
	if a.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(a.NATSTLSCert, a.NATSTLSKey))
	}
	if a.NATSInbox != "" {
		if a.NATSInbox != strings.TrimSpace(a.NATSInbox) || strings.ContainsAny(a.NATSInbox, "*> \t") || strings.HasSuffix(a.NATSInbox, ".") {
			return nil, fmt.Errorf("--nats-inbox-prefix %q: want subject tokens without wildcards or a trailing dot, such as _INBOX_ingest", a.NATSInbox)
		}
		opts = append(opts, nats.CustomInboxPrefix(a.NATSInbox))
	}
	return opts, nil
}

// usesTLS reports whether any TLS flag is set.
func (a natsAuth) usesTLS() bool {
	return a.NATSTLSCA != "" || a.NATSTLSCert != "" || a.NATSTLSKey != ""
}
