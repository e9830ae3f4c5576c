# Switchyard build, test and benchmark targets. See README.md.
GO        ?= go
BIN       ?= bin/switchyard
PKGS      := ./...
# Packages that must stay pure (no gRPC, etcd, memberlist or OpenTelemetry).
PURE_PKGS := ./model/... ./placement/...
FORBIDDEN := google.golang.org/grpc|go.etcd.io|github.com/hashicorp/memberlist|go.opentelemetry.io

IMAGE     ?= switchyard
IMAGE_TAG ?= dev

# The release version stamped into the binary (switchyard version, switchyard_build_info).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X github.com/switchyard-serving/switchyard/internal/telemetry.version=$(VERSION) \
	-X github.com/switchyard-serving/switchyard/internal/telemetry.revision=$(REVISION)

# The GPU binary: purego loader for CUDA (dynamically linked; see docs/gpu.md).
BIN_CUDA  ?= bin/switchyard-cuda

.PHONY: test-race all build build-cuda gpu-bundle image-cuda verify-ptx verify-asm test test-short bench run lint verify verify-deps verify-lint verify-proto proto fmt generate clean image helm-test

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/switchyard

build-cuda:
	CGO_ENABLED=0 $(GO) build -tags cuda -ldflags '$(LDFLAGS)' -o $(BIN_CUDA) ./cmd/switchyard

# Everything scripts/gpu-check.sh needs on a GPU machine without Go: stripped
# binaries (the CLI and the GPU test binaries) and the shared fixture.
gpu-bundle:
	bash scripts/gpu-bundle.sh

test:
	$(GO) test -count=1 -timeout 15m $(PKGS)
	# The model again on the AVX2 kernels (what AVX2-only CPUs run; a no-op
	# level change on machines without AVX-512).
	SWITCHYARD_KERNELS=avx2 $(GO) test -count=1 ./model/kernels/ ./model/hybrid/ ./model/engine/
	CGO_ENABLED=0 $(GO) test -count=1 -tags cuda ./internal/gpu/... ./expert-node/...
	$(MAKE) helm-test

# Chart lint/render, strict manifest validation, Dockerfile checks (own module in deploy/helm/test).
helm-test:
	bash scripts/helm-test.sh

# Container image with the single switchyard binary (needs Docker with BuildKit).
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE):$(IMAGE_TAG) .

# The GPU expert image (the Dockerfile's cuda target), tagged as the chart expects.
image-cuda:
	docker build --target cuda -t $(IMAGE):$(IMAGE_TAG)-cuda --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) .

# The race detector over the shell: the lifecycle, the rollout, the roles and the
# in-process cluster harness (the model and kernel packages are left out: they
# start no goroutines of their own beyond pools tested in make test).
RACE_PKGS := ./internal/cluster/... ./internal/agent/... ./internal/rollout/... ./internal/membership/... \
	./internal/cli/localcluster/... ./trunk-node/... ./expert-node/... ./coordinator/...
test-race:
	$(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

# Benchmarks: kernel and engine throughput with ratios to the machine's measured
# memory bandwidth and FMA peak. BENCH_MODEL overrides the synthesized model.
bench: build
	bash scripts/bench.sh

# Starts a whole local cluster with the built-in small model.
run: build
	$(BIN) up

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

lint: verify

verify: verify-deps verify-lint verify-proto verify-ptx verify-asm
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags cuda ./internal/gpu/... ./expert-node/... ./internal/cli/...
	# The kernels without their assembly: pure Go builds and other architectures.
	$(GO) vet -tags purego ./model/...
	GOARCH=arm64 $(GO) vet ./model/...
	$(GO) mod tidy -diff
	cd deploy/helm/test && $(GO) vet ./... && $(GO) mod tidy -diff

verify-deps:
	@for p in $$($(GO) list $(PURE_PKGS) 2>/dev/null); do \
	  if $(GO) list -deps $$p | grep -E -q '$(FORBIDDEN)'; then echo "$$p imports a forbidden I/O dependency"; exit 1; fi; \
	done; echo "verify-deps: model/ and placement/ are pure"

# Import rules (.golangci.yml: depguard, importas, gci) with the golangci-lint pinned in
# tools/lint/go.mod, built once into bin/golangci-lint.
verify-lint:
	GO=$(GO) bash scripts/lint.sh

proto:
	bash scripts/genproto.sh

verify-proto:
	bash scripts/genproto.sh --check

verify-ptx:
	bash scripts/genptx.sh --check

verify-asm:
	GO=$(GO) bash scripts/genasm.sh --check

# Regenerates the assembly kernels (avo lives in its own module) and the GPU PTX.
generate:
	GO=$(GO) bash scripts/genasm.sh
	bash scripts/genptx.sh

clean:
	rm -rf bin
