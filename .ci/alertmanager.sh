#!/usr/bin/env bash
# Build a real Alertmanager from its Go module (pinned) for collector/internal/alert's TestRealAlertmanager,
# once, into CACHE/alertmanager/VERSION/alertmanager; prints the binary's path. Not a keyguard dependency:
# it is built in a copy of the module outside keyguard's go.mod.
#
# The module zip lacks the web UI's built files (ui/app/dist, made by npm in Alertmanager's release
# build) that package ui embeds: a placeholder page stands in for them; the v2 API does not use them.
set -euo pipefail
cache=${1:?usage: alertmanager.sh CACHE}
version=v0.35.0
bin=$cache/alertmanager/$version/alertmanager
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/prometheus/alertmanager@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "alertmanager.sh: could not download github.com/prometheus/alertmanager@$version from the Go module proxy" >&2; exit 1; }
src=$(mktemp -d)
trap 'chmod -R u+w "$src"; rm -rf "$src"' EXIT
cp -r "$dir"/. "$src"
chmod -R u+w "$src"
for ui in elm mantine; do
	mkdir -p "$src/ui/app/dist/$ui"
	echo '<!doctype html><title>Alertmanager</title><p>UI not built (keyguard test build); use /api/v2.' >"$src/ui/app/dist/$ui/index.html"
done
mkdir -p "$(dirname "$bin")"
(cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$bin.tmp" ./cmd/alertmanager)
mv "$bin.tmp" "$bin"
echo "alertmanager.sh: built Alertmanager $version in $(( $(date +%s) - start )) s" >&2
echo "$bin"
