#!/usr/bin/env bash
# Build the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm, and Kueue's manager) from Go modules into ~/.cache/qwenft/k8s/$K8S_VERSION/bin/, and install
# prometheus/promtool from apt. Idempotent: a binary whose version stamp matches is kept, so a
# warm cache finishes in well under a second. Versions live in hack/versions.env.
#
#   bash hack/build-cluster.sh            # build what is missing
#   bash hack/build-cluster.sh kueue      # only the named components (etcd kwok helm kubernetes kueue)
#   QWENFT_K8S_CACHE=/tmp/k8s bash hack/build-cluster.sh   # another cache root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/hack/versions.env"
CACHE="${QWENFT_K8S_CACHE:-$HOME/.cache/qwenft/k8s}"
BIN="$CACHE/$K8S_VERSION/bin"
export GOFLAGS="-trimpath ${GOFLAGS:-}" CGO_ENABLED=0 GOTOOLCHAIN=local
START=$SECONDS

log() { printf '[%s] build-cluster: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# run CMD...: run a command, and on failure name it and exit non-zero.
run() {
  if ! "$@"; then
    log "FAILED ($((SECONDS - START))s): $*"
    exit 1
  fi
}

# fresh NAME VERSION: true when $BIN/NAME exists and was built for VERSION.
fresh() { [[ -x "$BIN/$1" && "$(cat "$BIN/.$1.version" 2>/dev/null)" == "$2" ]]; }

# install_from DIR VERSION NAME...: move built binaries into $BIN and stamp them.
install_from() {
  local dir=$1 version=$2; shift 2
  for name in "$@"; do
    mv -f "$dir/$name" "$BIN/$name"
    echo "$version" > "$BIN/.$name.version"
  done
}

# wrapper_module DIR MODULE VERSION SIBLING_VERSION: (re)generate a wrapper go.mod from the
# upstream go.mod when the pinned version changed, then resolve it with `go mod tidy`.
wrapper_module() {
  local dir=$1 module=$2 version=$3 sibling=$4
  if ! grep -q "from $module@$version;" "$dir/go.mod" 2>/dev/null; then
    log "generating $dir/go.mod for $module@$version (siblings at $sibling)"
    run python3 "$ROOT/hack/k8s/gomod.py" --module "$module" --version "$version" \
      --sibling-version "$sibling" --out "$dir/go.mod"
    rm -f "$dir/go.sum"
  fi
  (cd "$dir" && run go mod tidy)
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl) stale=()
  for n in "${names[@]}"; do fresh "$n" "$K8S_VERSION" || stale+=("$n"); done
  ((${#stale[@]})) || { log "kubernetes $K8S_VERSION: cached"; return; }
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local dir="$ROOT/hack/k8s/kubernetes"
  wrapper_module "$dir" k8s.io/kubernetes "$K8S_VERSION" "v0.${K8S_VERSION#v1.}"
  # What `kubectl version` and /version report. The module proxy knows no commit hash, so
  # gitCommit stays empty; buildDate is the release's publication time (reproducible).
  local date ldflags="-s -w" pkg
  date=$(cd "$dir" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  log "building ${stale[*]} $K8S_VERSION (the first time: about 20 min on 2 cores)"
  local out; out=$(mktemp -d)
  (cd "$dir" && run nice -n 10 go build -ldflags "$ldflags" -o "$out/" \
    "${stale[@]/#/k8s.io/kubernetes/cmd/}")
  install_from "$out" "$K8S_VERSION" "${stale[@]}"
  rmdir "$out"
}

build_etcd() {
  fresh etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION: cached"; return; }
  local dir="$ROOT/hack/k8s/etcd" out
  wrapper_module "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  log "building etcd $ETCD_VERSION"
  out=$(mktemp -d)
  (cd "$dir" && run nice -n 10 go build -ldflags "-s -w" -o "$out/etcd" .)
  install_from "$out" "$ETCD_VERSION" etcd
  rmdir "$out"
}

build_kwok() {
  fresh kwok "$KWOK_VERSION" && { log "kwok $KWOK_VERSION: cached"; return; }
  log "building kwok $KWOK_VERSION"
  local out; out=$(mktemp -d)
  run env GOBIN="$out" nice -n 10 go install \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  install_from "$out" "$KWOK_VERSION" kwok
  rmdir "$out"
}

build_helm() {
  fresh helm "$HELM_VERSION" && { log "helm $HELM_VERSION: cached"; return; }
  # Without these ldflags helm v3 tells charts the cluster is Kubernetes v1.20.
  local minor=${K8S_VERSION#v1.} h=helm.sh/helm/v3 flags="-s -w" out
  minor=${minor%%.*}
  flags+=" -X $h/internal/version.version=$HELM_VERSION -X $h/internal/version.gitTreeState=clean"
  for pkg in $h/pkg/chartutil $h/pkg/lint/rules; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  log "building helm $HELM_VERSION"
  out=$(mktemp -d)
  run env GOBIN="$out" nice -n 10 go install -ldflags "$flags" "$h/cmd/helm@$HELM_VERSION"
  install_from "$out" "$HELM_VERSION" helm
  rmdir "$out"
}

build_kueue() {
  if fresh kueue "$KUEUE_VERSION" && [[ -f "$BIN/kueue-manifests/webhook/manifests.yaml" ]]; then
    log "kueue $KUEUE_VERSION: cached"
    return
  fi
  # The module has no local replaces, so `go install` builds its manager straight from the
  # proxy. Its CRDs and webhook manifests are read from the same module (hack/devcluster/kueue.py).
  local v=sigs.k8s.io/kueue/pkg/version out
  log "building kueue $KUEUE_VERSION (the first time: several minutes on 2 cores)"
  out=$(mktemp -d)
  run env GOBIN="$out" nice -n 10 go install -ldflags "-s -w -X $v.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # The CRDs (with the list of those that convert through the webhook) and the webhook
  # configurations of the same release, which hack/devcluster/kueue.py installs.
  local src
  src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src/config/components" ]] || { log "FAILED: no module source for kueue at '$src'"; exit 1; }
  rm -rf "$BIN/kueue-manifests"
  mkdir -p "$BIN/kueue-manifests/crd" "$BIN/kueue-manifests/webhook"
  cp -r "$src/config/components/crd/bases" "$src/config/components/crd/patches" \
    "$src/config/components/crd/kustomization.yaml" "$BIN/kueue-manifests/crd/"
  cp "$src/config/components/webhook/manifests.yaml" "$BIN/kueue-manifests/webhook/"
  chmod -R u+w "$BIN/kueue-manifests"
  install_from "$out" "$KUEUE_VERSION" kueue
  rmdir "$out"
}

install_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    log "prometheus: installed ($(command -v prometheus))"
    return
  fi
  log "installing prometheus from apt"
  local sudo=(); ((EUID == 0)) || sudo=(sudo)
  run "${sudo[@]}" apt-get update -qq
  run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus
}

mkdir -p "$BIN"
log "cache $BIN"
if (($#)); then
  # Named components only, e.g. `bash hack/build-cluster.sh kueue` (what the e2e fixture runs).
  for component in "$@"; do
    case $component in
      etcd | kwok | helm | kubernetes | kueue) "build_$component" ;;
      *) log "unknown component '$component' (etcd, kwok, helm, kubernetes, kueue)"; exit 2 ;;
    esac
  done
  log "done in $((SECONDS - START))s: $BIN"
  exit 0
fi
build_etcd
build_kwok
build_helm
build_kubernetes
build_kueue
install_prometheus
log "done in $((SECONDS - START))s: $BIN"
