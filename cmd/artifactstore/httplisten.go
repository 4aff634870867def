package main

// Default --http-listen addresses, one per subcommand, so that the
// README's deployment (ingest, relay and projector side by side) binds on
// one host without flags. A second process of the same subcommand finds
// its default taken and serves on a free port it logs instead.
const (
	defaultIngestHTTP    = "127.0.0.1:9090"
	defaultRelayHTTP     = "127.0.0.1:9091"
	defaultProjectorHTTP = "127.0.0.1:9092"
	defaultDevHTTP       = "127.0.0.1:8080"
)

// httpFlag is --http-listen. It has no kong default so that "not given"
// (nil: the subcommand's default, a free port when that is taken) differs
// from an address given on the command line or in the environment, which
// must be bound as given; an empty one serves nothing. The embedding field
// sets ${http_listen} for the help text.
type httpFlag struct {
	HTTPListen *string `name:"http-listen" env:"ARTIFACTSTORE_HTTP_LISTEN" placeholder:"ADDR" help:"Address for /metrics, /healthz, /readyz and the status page (default ${http_listen}, or a free port when that is taken; empty: none)."`
}

// httpListen is where a service's ops server listens.
type httpListen struct {
	addr string
	// freePort: the address is the default and may be replaced by a free
	// port when taken.
	freePort bool
}

func (f httpFlag) listen(def string) httpListen {
	if f.HTTPListen == nil {
		return httpListen{addr: def, freePort: true}
	}
	return httpListen{addr: *f.HTTPListen}
}
