# artifactstore — run `make help` for the targets.
GO        ?= go
PKGS      ?= ./...
STATICCHECK_VERSION ?= v0.8.2
UPLOT_VERSION ?= 1.6.32

.PHONY: help run test chromium bench lint fuzz migrate-fresh tidy build bench-e2e chaos chaos-short fuzz-short uplot

help: ## show this help
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

run: ## run everything on embedded defaults (in-process NATS on 127.0.0.1:4222, SQLite in ./data)
	$(GO) run ./cmd/artifactstore dev

build: ## build bin/artifactstore
	$(GO) build -o bin/artifactstore ./cmd/artifactstore

test: chromium ## run the tests with -race (PostgreSQL: ARTIFACTSTORE_TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

bench: ## run every benchmark; each measures its raw baseline in the same run and prints the ratio (~25 min)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./store/... ./projector/ ./projection/
	$(GO) test -run '^$$' -bench . -benchtime 3s -timeout 30m ./ingest/
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 30m ./relay/
	$(MAKE) --no-print-directory bench-e2e

fuzz: ## run each fuzz target briefly (FUZZTIME, default 10s)
	@$(GO) list -f '{{.ImportPath}} {{.Dir}}' $(PKGS) | while read pkg dir; do \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-10s} $$pkg || exit 1; \
		done; \
	done

lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)

migrate-fresh: ## drop and recreate the schema at ARTIFACTSTORE_DATABASE_URL (default ./data/artifactstore.db)
	$(GO) run ./cmd/artifactstore migrate fresh --yes

tidy: ## go mod tidy
	$(GO) mod tidy

bench-e2e: ## end-to-end benchmark: real processes, 64 clients, raw baselines and ratios (ARTIFACTSTORE_BENCH_COMMANDS, default 20000)
	$(GO) test -run '^$$' -bench '^BenchmarkEndToEnd$$' -benchtime 1x -timeout 30m -v ./internal/e2e

chaos: ## chaos suite, long mode: every scenario, more faults, broken-relay builds must be caught, projector failover, a 250,000-event relay outage (~20 min)
	ARTIFACTSTORE_CHAOS=long $(GO) test -count=1 -run '^(TestChaos|TestChaosCatchesBrokenRelay|TestOraclesBite|TestRelayOutageLargeBacklog|TestProjector.*)$$' -timeout 60m -v ./internal/e2e

chaos-short: ## chaos suite, short mode (what make test and CI run, < 3 min)
	ARTIFACTSTORE_CHAOS=short $(GO) test -count=1 -run '^(TestChaos|TestOraclesBite)$$' -timeout 10m -v ./internal/e2e

fuzz-short: ## run every Fuzz target for 3s each (CI)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=3s

uplot: ## re-fetch the status page's vendored uPlot (UPLOT_VERSION) from the npm registry into cmd/artifactstore/web/uplot
	cmd/artifactstore/web/fetch-uplot.sh $(UPLOT_VERSION)

chromium: ## make sure a headless Chromium is installed for the status page's browser test (installs Debian's chromium when root)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "make: installing chromium for the status page's browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "make: chromium is missing; the status page's browser test needs it: sudo apt-get update && sudo apt-get install -y chromium" >&2; \
			exit 1; \
		fi; }
