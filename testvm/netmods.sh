#!/usr/bin/env bash
# Usage: bash testvm/netmods.sh CACHE SERIES
# Debian's kernels build virtio-net as a module; the systemd demo VM (make demo-systemd) needs it for
# QEMU user networking. This extracts failover, net_failover and virtio_net of the pinned kernel
# (testvm/kernels.txt) from its .deb, uncompressed, into CACHE/kernels/SERIES/net/ (once).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${1:?usage: netmods.sh CACHE SERIES}
series=${2:?usage: netmods.sh CACHE SERIES}
dir=$cache/kernels/$series
out=$dir/net
[ -s "$out/virtio_net.ko" ] && exit 0
pkg=$(cut -d' ' -f1 "$dir/package" 2>/dev/null || true)
ver=$(cut -d' ' -f2 "$dir/package" 2>/dev/null || true)
# setup.sh records where the modules are: "<package> <version> [<suites>]" (split packages since 7.x,
# read through setup.sh's private apt folder for those suites).
aptc=()
if [ -s "$dir/modules" ]; then
	read -r pkg ver suites <"$dir/modules" || true
	if [ -n "${suites:-}" ]; then
		aptc=(env "APT_CONFIG=$cache/apt/$suites/apt.conf")
	fi
fi
if [ -z "$pkg" ] || [ -z "$ver" ]; then
	echo "netmods.sh: $dir/package missing: run make deps (testvm/setup.sh) first" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "netmods.sh: apt-get download $pkg=$ver for virtio-net (once)" >&2
fetch() { (cd "$tmp" && "${aptc[@]}" apt-get download -qq "$pkg=$ver" 2>&1 | grep -v unsandboxed >&2 || true); ls "$tmp"/*.deb 2>/dev/null | head -n1; }
deb=$(fetch)
if [ -z "$deb" ] && { [ "$(id -u)" -eq 0 ] || [ ${#aptc[@]} -gt 0 ]; }; then
	"${aptc[@]}" apt-get update -qq && deb=$(fetch)
fi
[ -n "$deb" ] || { echo "netmods.sh: apt-get download $pkg=$ver produced no .deb (apt-get update?)" >&2; exit 1; }
# bookworm packages keep modules in ./lib/modules, the split 7.x packages in ./usr/lib/modules.
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards \
	'./lib/modules/*/kernel/net/core/failover.ko*' \
	'./lib/modules/*/kernel/drivers/net/net_failover.ko*' \
	'./lib/modules/*/kernel/drivers/net/virtio_net.ko*' \
	'./usr/lib/modules/*/kernel/net/core/failover.ko*' \
	'./usr/lib/modules/*/kernel/drivers/net/net_failover.ko*' \
	'./usr/lib/modules/*/kernel/drivers/net/virtio_net.ko*' 2>/dev/null || true
mkdir -p "$tmp/net"
for m in failover net_failover virtio_net; do
	f=$(find "$tmp" -path "$tmp/net" -prune -o -name "$m.ko*" -print | head -n1)
	[ -n "$f" ] || { echo "netmods.sh: $m.ko is not in $pkg=$ver" >&2; exit 1; }
	case $f in
	*.xz) xz -dc "$f" >"$tmp/net/$m.ko" ;;
	*.zst) zstd -qdc "$f" >"$tmp/net/$m.ko" ;;
	*) cp "$f" "$tmp/net/$m.ko" ;;
	esac
done
rm -rf "$out"
mv "$tmp/net" "$out"
echo "netmods.sh: $out: $(ls "$out" | tr '\n' ' ')" >&2
