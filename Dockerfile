# syntax=docker/dockerfile:1
#
# Switchyard container images, both running as the unprivileged user 65532:
#   - the default target: the static `switchyard` binary on distroless/static
#     (every role; expert nodes compute on the CPU);
#   - the `cuda` target: the same program built with -tags cuda (it opens the
#     NVIDIA driver and cuBLAS at run time, so it links glibc dynamically) on an
#     NVIDIA CUDA runtime base that carries cuBLAS; the driver comes from the
#     node (NVIDIA container toolkit). The chart runs it for GPU expert nodes.
#
#   docker build -t switchyard:dev .
#   docker build --target cuda -t switchyard:dev-cuda .
#   docker run --rm switchyard:dev help
#
# The Helm chart (deploy/helm/switchyard) runs this image once per role with
# `switchyard trunk|expert|coordinator <flags>` as the container args, and
# downloads the model with it too (`switchyard download`: a Job and init
# containers; the static binary carries its own HTTPS client and distroless
# the CA certificates, so nothing is installed at pod start).

# GO_VERSION must satisfy the `go` line of go.mod (1.26.8); the 1.26 tag always
# carries the newest 1.26.x patch release.
ARG GO_VERSION=1.26
# The GPU image's base (the `cuda` target).
ARG CUDA_BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---- build stage -------------------------------------------------------------
# BUILDPLATFORM lets buildx cross-compile natively instead of under emulation;
# the binary is pure Go (CGO_ENABLED=0), so any GOOS/GOARCH works.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src

# Module downloads are cached in their own layer: they change only with go.sum.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
# VERSION and REVISION are stamped into the binary (switchyard version,
# switchyard_build_info); make image passes them from git.
ARG VERSION=dev
ARG REVISION=
# -trimpath: no build-machine paths in the binary; -s -w: no symbol table or
# DWARF (smaller image; stack traces keep function names and lines).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X github.com/switchyard-serving/switchyard/internal/telemetry.version=${VERSION} -X github.com/switchyard-serving/switchyard/internal/telemetry.revision=${REVISION}" -o /out/switchyard ./cmd/switchyard

# ---- GPU build stage -----------------------------------------------------------
# -tags cuda adds the purego loader for libcuda and cuBLAS: still no cgo and no
# CUDA toolkit at build time, but the binary needs glibc's dynamic loader.
FROM build AS build-cuda
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
ARG REVISION=
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -tags cuda -trimpath -ldflags="-s -w -X github.com/switchyard-serving/switchyard/internal/telemetry.version=${VERSION} -X github.com/switchyard-serving/switchyard/internal/telemetry.revision=${REVISION}" -o /out/switchyard ./cmd/switchyard

# ---- GPU runtime stage (docker build --target cuda) -------------------------------
# CUDA_BASE (a global ARG above): a CUDA 13 runtime image (cudart and cuBLAS 13,
# glibc); the NVIDIA driver (libcuda.so.1) is mounted from the node by the
# container toolkit.
FROM ${CUDA_BASE} AS cuda

LABEL org.opencontainers.image.title="switchyard-cuda" \
      org.opencontainers.image.description="Switchyard expert nodes on NVIDIA GPUs (CUDA driver API and cuBLAS from pure Go)" \
      org.opencontainers.image.source="https://github.com/switchyard-serving/switchyard"

COPY --from=build-cuda /out/switchyard /switchyard

# Numeric so runAsNonRoot can verify it; the GPU is reached through device files
# the container toolkit grants to the pod, not through the user.
USER 65532:65532

EXPOSE 7070 7071

ENTRYPOINT ["/switchyard"]

# ---- runtime stage (the default target) ----------------------------------------
# distroless/static: CA certificates, tzdata and /etc/passwd entries for
# nonroot, no shell and no package manager.
FROM gcr.io/distroless/static:nonroot

LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Disaggregated MoE serving for IBM Granite 4.0-H: trunk, expert and coordinator roles in one binary" \
      org.opencontainers.image.source="https://github.com/switchyard-serving/switchyard"

COPY --from=build /out/switchyard /switchyard

# 65532 is "nonroot" in distroless; numeric so runAsNonRoot can verify it.
USER 65532:65532

# trunk public gRPC API (7070) and expert node service (7071); both serve
# grpc.health.v1 on the same port.
EXPOSE 7070 7071

ENTRYPOINT ["/switchyard"]
