# walship — build, test, demo and benchmark.
#
#   make demo    archive a live PostgreSQL into ./demo/archive and restore it
#   make test    everything: lint, unit, storage conformance (MinIO), end to end
#   make bench   speed, memory and requests against baselines measured in the same run

GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
BIN       := bin/walship
export PATH := $(GOBIN):$(PATH)

.PHONY: all build deps lint test test-short demo bench clean

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

# Unit tests only: no PostgreSQL, no MinIO.
test-short: build
	$(GO) test -race -short ./...

demo: deps build
	@bash scripts/demo.sh

bench: deps build
	WALSHIP_BENCH=1 $(GO) test -count=1 -timeout 30m -run 'TestBench' -v ./internal/bench

clean:
	rm -rf bin demo
