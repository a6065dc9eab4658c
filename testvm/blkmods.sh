#!/usr/bin/env bash
# Usage: bash testvm/blkmods.sh CACHE SERIES
# Debian's kernels (amd64 and arm64) build loop, mtd and romfs as modules; the raw-disk VM test (a key file on a
# romfs image attached to a loop device) needs them. This extracts them from the pinned kernel's .deb
# (testvm/kernels.txt; the modules package for split 7.x kernels), uncompressed, into
# CACHE/kernels/SERIES/blk/ (once), with blk/order listing the load order (dependencies first).
# vmtest appends them to that kernel's initramfs and the guest's init loads them before any suite.
set -euo pipefail
cache=${1:?usage: blkmods.sh CACHE SERIES}
series=${2:?usage: blkmods.sh CACHE SERIES}
dir=$cache/kernels/$series
out=$dir/blk
[ -s "$out/order" ] && exit 0
read -r pkg ver suites <"$dir/modules" 2>/dev/null || read -r pkg ver suites <"$dir/package" || {
	echo "blkmods.sh: $dir/package missing: run make deps (testvm/setup.sh) first" >&2
	exit 1
}
aptd=$cache/apt/${suites:-}
case $series in *-arm64) aptd=$aptd@arm64 ;; esac # setup.sh's private apt folder for a foreign architecture
aptc=()
[ -n "${suites:-}" ] && aptc=(env "APT_CONFIG=$aptd/apt.conf")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "blkmods.sh: apt-get download $pkg=$ver for loop, mtd and romfs (once)" >&2
fetch() { (cd "$tmp" && "${aptc[@]}" apt-get download -qq "$pkg=$ver" 2>&1 | grep -v unsandboxed >&2 || true); ls "$tmp"/*.deb 2>/dev/null | head -n1; }
deb=$(fetch)
if [ -z "$deb" ] && { [ "$(id -u)" -eq 0 ] || [ ${#aptc[@]} -gt 0 ]; }; then
	"${aptc[@]}" apt-get update -qq && deb=$(fetch)
fi
[ -n "$deb" ] || { echo "blkmods.sh: apt-get download $pkg=$ver produced no .deb (apt-get update?)" >&2; exit 1; }
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards \
	'./lib/modules/*/kernel/drivers/block/loop.ko*' './usr/lib/modules/*/kernel/drivers/block/loop.ko*' \
	'./lib/modules/*/kernel/drivers/mtd/mtd.ko*' './usr/lib/modules/*/kernel/drivers/mtd/mtd.ko*' \
	'./lib/modules/*/kernel/fs/romfs/romfs.ko*' './usr/lib/modules/*/kernel/fs/romfs/romfs.ko*' 2>/dev/null || true
mkdir -p "$tmp/blk"
for m in loop mtd romfs; do
	f=$(find "$tmp" -path "$tmp/blk" -prune -o -name "$m.ko*" -print | head -n1)
	[ -n "$f" ] || { echo "blkmods.sh: $m.ko is not in $pkg=$ver (built in? then leave it out of blk/order)" >&2; exit 1; }
	case $f in
	*.xz) xz -dc "$f" >"$tmp/blk/$m.ko" ;;
	*.zst) zstd -qdc "$f" >"$tmp/blk/$m.ko" ;;
	*) cp "$f" "$tmp/blk/$m.ko" ;;
	esac
	echo "$m.ko" >>"$tmp/blk/order"
done
rm -rf "$out"
mv "$tmp/blk" "$out"
echo "blkmods.sh: $out: $(tr '\n' ' ' <"$out/order")" >&2
