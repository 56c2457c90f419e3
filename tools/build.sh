#!/usr/bin/env bash
# Builds the pinned control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and helm from the Go module proxy into a per-user
# cache, and reuses a build whose stamp matches the wrapper module's go.sum.
#
#   tools/build.sh [etcd|kubernetes|helm]...   (default: all three)
#
# Prints the folder of each component. Go's own build and module caches stay
# in their usual per-user places, so a second machine run is warm too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache_root=${VENTROS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ventros-deploy/bin}

if ! command -v go >/dev/null 2>&1; then
  echo "error: the go command is missing; install Go 1.26 or newer and put it on PATH" >&2
  exit 2
fi
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

build_date=$(date -u -d @0 +'%Y-%m-%dT%H:%M:%SZ')

kubernetes_ldflags() {
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local flags="-s -w" key value
  for pair in "gitVersion=$KUBE_VERSION" "gitMajor=1" "gitMinor=$minor" \
              "gitTreeState=clean" "buildDate=$build_date"; do
    key=${pair%%=*} value=${pair#*=}
    flags+=" -X k8s.io/client-go/pkg/version.$key=$value"
    flags+=" -X k8s.io/component-base/version.$key=$value"
  done
  echo "$flags"
}

helm_ldflags() {
  # An empty metadata clears helm's "unreleased" suffix, as its release build does.
  echo "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "-X helm.sh/helm/v4/internal/version.metadata=" \
    "-X helm.sh/helm/v4/internal/version.gitTreeState=clean"
}

# build NAME VERSION "PKG..." LDFLAGS: go build each package of the wrapper
# module tools/NAME into $cache_root/NAME-VERSION.
build() {
  local name=$1 version=$2 packages=$3 ldflags=$4
  local module="$here/$name" out="$cache_root/$name-$version"
  local stamp
  stamp=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)
  if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
    echo "$name $version: cached in $out"
    return
  fi
  echo "$name $version: building $packages into $out"
  local started=$SECONDS
  mkdir -p "$out.tmp"
  (cd "$module" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" $packages)
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "$stamp" > "$out/.stamp"
  echo "$name $version: built in $((SECONDS - started)) s"
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(etcd kubernetes helm)
for component in "${components[@]}"; do
  case "$component" in
    etcd)
      build etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3" \
        "-s -w" ;;
    kubernetes)
      build kubernetes "$KUBE_VERSION" \
        "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl" \
        "$(kubernetes_ldflags)" ;;
    helm)
      build helm "$HELM_VERSION" "helm.sh/helm/v4/cmd/helm" "$(helm_ldflags)" ;;
    *)
      echo "error: unknown component '$component'; expected etcd, kubernetes or helm" >&2
      exit 2 ;;
  esac
done
