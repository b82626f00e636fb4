# perfpipe: `make run` starts everything on an embedded NATS server;
# `make test` runs vet and every test against real NATS and Redis servers.

GO      ?= go
BIN     := bin/perfpipe
PKGS    := ./...
STORE   ?= data/nats

.PHONY: all build run test vet fmt bench e2e clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/perfpipe

run: build
	./$(BIN) up --store-dir $(STORE) --csv-data-dir testdata/prices

vet:
	$(GO) vet $(PKGS)
	@unformatted=$$(gofmt -l cmd internal pkg services test); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

test: vet
	$(GO) test -race -count=1 -timeout 14m $(PKGS)

e2e: build
	$(GO) test -count=1 -run TestEndToEnd -v ./test/e2e/

bench: build
	./$(BIN) bench
	$(GO) test -run '^$$' -bench BenchmarkRecord -benchmem ./pkg/timing/ ./services/aggregator/

fmt:
	gofmt -w cmd internal pkg services test

clean:
	rm -rf bin data
