# walship — build, test, demo and benchmark.
#
#   make demo    archive a live PostgreSQL into ./demo/archive and restore it
#   make test    everything: lint, unit, storage conformance (MinIO), end to end
#   make bench   speed, memory and requests against baselines measured in the same run
#   make fuzz    every fuzz target for FUZZTIME (default 5m) each, one after the other

GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
BIN       := bin/walship
export PATH := $(GOBIN):$(PATH)

.PHONY: all build deps bench-deps lint test test-short fuzz demo bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/walship

deps:
	@bash scripts/install-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

# All tests, with the race detector. Installs PostgreSQL and MinIO first
# when they are missing.
test: deps build lint
	$(GO) test -race -timeout 35m ./...
	FUZZTIME=10s FUZZMINIMIZE=2s FUZZ_JOBS=2 FUZZ_PARALLEL=1 FUZZ_SAVE=0 bash scripts/fuzz.sh

# Unit tests only: no PostgreSQL, no MinIO.
test-short: build
	$(GO) test -race -short ./...

# Every fuzz target for FUZZTIME each (Go fuzzes one target per run); new
# interesting inputs are saved in each package's testdata/fuzz.
FUZZTIME ?= 5m
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

demo: deps build
	@bash scripts/demo.sh

# What make deps installs, plus pgBackRest for the benchmark's comparison.
bench-deps:
	@WALSHIP_DEPS_PGBACKREST=1 bash scripts/install-deps.sh

bench: bench-deps build
	WALSHIP_BENCH=1 $(GO) test -count=1 -timeout 30m -run 'TestBench' -v ./internal/bench

clean:
	rm -rf bin demo
