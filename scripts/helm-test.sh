#!/usr/bin/env bash
# Validates the deployment artifacts without a cluster or a Docker engine:
#
#   1. installs a pinned helm from the Go module proxy into a cache folder
#      ($SWITCHYARD_TOOLS_CACHE, default ~/.cache/switchyard-tools) unless it is
#      already there (a cold install takes a few minutes; later runs reuse it);
#   2. runs `helm lint --strict` and `helm template` over the default values and
#      every variant in deploy/helm/test/values/, and checks that bad values are
#      rejected by values.schema.json;
#   3. builds the switchyard binary with the Dockerfile's build-stage flags and
#      runs the Go validator module deploy/helm/test (its own go.mod, so
#      k8s.io/api and BuildKit's parser stay out of the main module): strict
#      decoding into the Kubernetes API types, chart assertions, container args
#      (the `switchyard download` ones too) checked against the binary's own
#      flag sets, the README's `helm install` commands rendered verbatim with
#      their install notes checked, alert rules validated (promtool when it is
#      installed), schema negative tests, and the Dockerfile/.dockerignore checks.
#
# Exits non-zero on any failure. Skips (exit 0) only when there is no Go
# toolchain. Usage: scripts/helm-test.sh [go test flags, e.g. -run TestVariants -v]
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.22.0
# Kubernetes version the chart is rendered for (the chart needs >= 1.30; a
# helm built with `go install` has no default of its own beyond v1.20).
KUBE_VERSION=1.34.0
CHART=deploy/helm/switchyard

if ! command -v go >/dev/null 2>&1; then
  echo "helm-test: SKIP: the Go toolchain (go) is not installed; the chart checks need it"
  exit 0
fi

start=$(date +%s)
step() { printf 'helm-test: [%3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
fail() { echo "helm-test: FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. helm, pinned and cached.
cache="${SWITCHYARD_TOOLS_CACHE:-$HOME/.cache/switchyard-tools}"
helm_dir="$cache/helm-$HELM_VERSION"
HELM="$helm_dir/helm"
if [ ! -x "$HELM" ]; then
  step "installing helm $HELM_VERSION into $helm_dir (first run only, takes minutes)"
  mkdir -p "$helm_dir"
  # Install into a scratch folder and move the binary into place, so an
  # interrupted install never leaves a broken cached helm behind.
  GOFLAGS="${GOFLAGS:-} -mod=mod" GOBIN="$tmp/gobin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    || fail "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv -f "$tmp/gobin/helm" "$HELM.partial" && mv -f "$HELM.partial" "$HELM"
fi
step "helm: $("$HELM" version --short 2>/dev/null || echo "$HELM")"

# 2. lint and render every variant.
variants=(default)
for f in deploy/helm/test/values/*.yaml; do variants+=("$f"); done
for v in "${variants[@]}"; do
  args=()
  name=default
  if [ "$v" != default ]; then
    args=(-f "$v")
    name=$(basename "$v" .yaml)
  fi
  "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >"$tmp/lint-$name.log" 2>&1 \
    || { cat "$tmp/lint-$name.log" >&2; fail "helm lint --strict ($name)"; }
  "$HELM" template sy "$CHART" --namespace switchyard-test --kube-version "$KUBE_VERSION" "${args[@]}" \
    >"$tmp/rendered-$name.yaml" 2>"$tmp/template-$name.log" \
    || { cat "$tmp/template-$name.log" >&2; fail "helm template ($name)"; }
  step "lint + template OK: $name ($(grep -c '^kind:' "$tmp/rendered-$name.yaml") objects)"
done

# Bad values must fail through the schema (the Go tests cover many more).
expect_reject() {
  local what=$1; shift
  if "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "$@" >"$tmp/bad.log" 2>&1; then
    fail "helm lint accepted bad values: $what"
  fi
  grep -q schema "$tmp/bad.log" || { cat "$tmp/bad.log" >&2; fail "bad values ($what) failed, but not through the schema"; }
  if "$HELM" template sy "$CHART" --kube-version "$KUBE_VERSION" "$@" >"$tmp/bad.log" 2>&1; then
    fail "helm template accepted bad values: $what"
  fi
}
printf 'experts:\n  replicas: two\n' >"$tmp/bad-type.yaml"
printf 'replicaCount: 3\n' >"$tmp/bad-key.yaml"
expect_reject 'experts.replicas: "two"' -f "$tmp/bad-type.yaml"
expect_reject 'unknown key replicaCount' -f "$tmp/bad-key.yaml"
expect_reject 'gpu.count=0' --set gpu.count=0
# The Python/pip downloader is gone: its keys must fail instead of doing nothing.
expect_reject 'model.download.pipPackages' --set 'model.download.pipPackages={huggingface_hub}'
step "schema rejects bad values"

# 3. the binary (built as the Dockerfile's build stage builds it) and the Go validator.
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/switchyard" ./cmd/switchyard \
  || fail "go build ./cmd/switchyard"
step "built switchyard"
(
  cd deploy/helm/test
  HELM="$HELM" SWITCHYARD_BIN="$tmp/switchyard" \
    go test -count=1 -timeout 20m "$@" ./...
) || fail "Go validator (deploy/helm/test)"
step "PASS"
