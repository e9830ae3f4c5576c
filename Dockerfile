# syntax=docker/dockerfile:1
#
# Switchyard container image: the single static `switchyard` binary on a
# distroless base, running as the unprivileged user 65532.
#
#   docker build -t switchyard:dev .
#   docker run --rm switchyard:dev help
#
# The Helm chart (deploy/helm/switchyard) runs this image once per role with
# `switchyard trunk|expert|coordinator <flags>` as the container args.

# GO_VERSION must satisfy the `go` line of go.mod (1.26.8); the 1.26 tag always
# carries the newest 1.26.x patch release.
ARG GO_VERSION=1.26

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
# -trimpath: no build-machine paths in the binary; -s -w: no symbol table or
# DWARF (smaller image; stack traces keep function names and lines).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/switchyard ./cmd/switchyard

# ---- runtime stage -----------------------------------------------------------
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
