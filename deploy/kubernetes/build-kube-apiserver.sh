#!/bin/sh
# Builds a real kube-apiserver for tests of the TokenReview enrollment path (not built yet; see
# deploy/README.md) into $KEYGUARD_CACHE/kube-apiserver/VERSION/kube-apiserver, once: later runs reuse it.
# k8s.io/kubernetes' module zip lacks staging/, so a throw-away module requires it and replaces each
# staging module with its published k8s.io/* v0.MINOR.PATCH. etcd: Debian's etcd-server (3.4) serves it.
# Measured on the project's shared 2-core machine: about 60 min wall under load, 9 min CPU; 140 MB.
set -eu
version=${1:-v1.34.4}
out=${KEYGUARD_CACHE:?set KEYGUARD_CACHE}/kube-apiserver/$version
[ -x "$out/kube-apiserver" ] && { echo "$out/kube-apiserver"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
staging=v0.${version#v1.}
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
{
	printf 'module kubeapiserverbuild\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$version"
	sed -n '/^replace (/,/^)/p' "$gomod" | awk -v v="$staging" '/=>/ { printf "\t%s => %s %s\n", $1, $1, v }'
	printf ')\n'
} > "$work/go.mod"
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' > "$work/main.go"
mkdir -p "$out"
(cd "$work" && go mod tidy && go build -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
echo "$out/kube-apiserver"
