# tablecast — developer entry points. `make run` and `make test` are the two
# commands a fresh machine needs (Debian with Go); everything else is optional.

GO      ?= go
BIN     := bin/tablecast
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# `make test` runs every fuzz target's seed corpus (they are tests); `make
# fuzz` fuzzes each for FUZZTIME, and `make soak` runs it too.
FUZZTIME ?= 30s

.PHONY: build run test vet fuzz bench soak pg-start pg-stop clean

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/tablecast

# Local PostgreSQL (installed from Debian's packages when missing, run as the
# postgres user in .data/pg on port 54329) and tablecast with embedded NATS.
run: build
	@scripts/pg.sh start >/dev/null
	@scripts/pg.sh psql -q -f scripts/demo.sql >/dev/null
	@echo
	@echo "tablecast is starting; in another terminal:"
	@echo "  database:       export TABLECAST_DATABASE_URL='$${TABLECAST_DATABASE_URL:-$$(scripts/pg.sh url)}'"
	@echo "  watch events:   $(BIN) tail public.orders"
	@echo "  make a change:  scripts/pg.sh psql -c \"INSERT INTO orders (status, total) VALUES ('open', 19.90)\""
	@echo "  check:          $(BIN) doctor; $(BIN) slot status; $(BIN) snapshot public.orders"
	@echo "  health/metrics: curl -s localhost:8080/healthz; curl -s localhost:8080/metrics"
	@echo
	TABLECAST_DATABASE_URL="$${TABLECAST_DATABASE_URL:-$$(scripts/pg.sh url)}" \
	TABLECAST_DATA_DIR="$${TABLECAST_DATA_DIR:-.data/nats}" \
		exec $(BIN) run

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Every test, with the race detector, against real PostgreSQL clusters (each
# test package starts its own) and in-process NATS servers. TESTP packages at
# a time. Many tests wait on timers and servers, and two at a time left the
# two cores 40% idle: on 2026-12-06 the same tree took 9 min 46 s and
# 10 min 10 s with two, 7 min 56 s with three. (On 2026-12-05, when the
# packages were slower, three had not helped: 13 min against 12.5.)
TESTP ?= 3
test: vet
	@scripts/pg.sh install
	@scripts/test-tools.sh install
	$(GO) test -race -count=1 -p $(TESTP) -timeout 12m ./...
	cd scripts/tracescan && $(GO) vet . && $(GO) test -race -count=1 .

fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) scripts/fuzz.sh

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./internal/jsonx ./schema ./stream ./cdc ./internal/query ./internal/auth ./wsgate
	scripts/bench-cdc.sh

# Long chaos and soak runs, run before resolving pipeline changes.
# TestLiveViews at its soak size (100 views, an unpaced writer, a restart)
# is a load test and runs without the race detector: race-built, the process
# and the clients cannot catch up on 2 cores. Its 20-client size runs with
# -race in make test.
soak:
	TABLECAST_SOAK=1 $(GO) test -race -count=1 -timeout 60m -run 'Soak|Crash|FullDisk|LiveView|ReaderFailoverPausedLeader|WebhookSurvivesSIGKILL' -skip 'TestLiveViews$$' -v ./cmd/tablecast
	TABLECAST_SOAK=1 $(GO) test -count=1 -timeout 20m -run 'TestLiveViews$$' -v ./cmd/tablecast
	TABLECAST_SOAK=1 $(GO) test -race -count=1 -timeout 60m -run 'Soak' -v ./wsgate
	TABLECAST_SOAK=1 $(GO) test -race -count=1 -timeout 20m -run 'TestWithoutBatches|Soak' -v ./internal/rowstate
	TABLECAST_SOAK=1 $(GO) test -race -count=1 -timeout 20m -run 'Soak' -v ./cdc
	@$(MAKE) --no-print-directory fuzz

pg-start:
	scripts/pg.sh start
pg-stop:
	scripts/pg.sh stop

clean:
	rm -rf bin
