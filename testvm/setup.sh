#!/usr/bin/env bash
# Usage: bash testvm/setup.sh CACHE
# Idempotent and fast when everything is present:
#  1. installs the Debian packages listed in .ci/packages.txt that are missing;
#  2. fetches the stock kernels pinned in testvm/kernels.txt into CACHE/kernels/<series>/{vmlinuz,package};
#  3. builds the systemd VM's Debian 12 root (testvm/rootfs.sh) into CACHE/rootfs/ when it is absent
#     or its recipe changed (~1 min, needs root and the Debian mirror).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${1:-${KEYGUARD_CACHE:-$root/.cache}}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then sudo=(sudo -E); else
		echo "setup.sh: not root and no sudo: install the packages in .ci/packages.txt by hand" >&2
	fi
fi

# Lines of a list file without comments and blank lines.
entries() { sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$1" | grep -v '^$' || true; }

apt_updated=
apt_update() {
	if [ -z "$apt_updated" ]; then
		echo "setup.sh: apt-get update" >&2
		"${sudo[@]}" apt-get update -qq
		apt_updated=1
	fi
}

# 1. Debian packages.
mapfile -t wanted < <(entries "$root/.ci/packages.txt")
missing=()
for p in "${wanted[@]}"; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup.sh: installing ${missing[*]}" >&2
	apt_update
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. Kernels.
# A kernels.txt line may name the apt suites it comes from (third field, comma-separated). Those are
# read through a private apt folder, CACHE/apt/<suites>/, with its own sources entry: the machine's
# sources (bookworm) stay untouched. Without a third field the machine's apt is used.
mirror=${KEYGUARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
aptc=() # the apt-get/apt-cache prefix for the current line
private_apt() { # SUITES (comma-separated) [force] -> sets aptc for $arch; apt-get update once per run
	local suites=$1 d=$cache/apt/$1
	[ "$arch" = amd64 ] || d=$cache/apt/$1@$arch
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources" "$d/preferences"
	cat >"$d/sources/kernels.sources" <<-EOF
		Types: deb
		URIs: $mirror
		Suites: ${suites//,/ }
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	cat >"$d/apt.conf" <<-EOF
		Dir::Etc::SourceList "/dev/null";
		Dir::Etc::SourceParts "$d/sources";
		Dir::Etc::Preferences "/dev/null";
		Dir::Etc::PreferencesParts "$d/preferences";
		Dir::State::Lists "$d/lists";
		Dir::State::status "/dev/null";
		Dir::Cache "$d/cache";
		APT::Architecture "$arch";
		APT::Architectures { "$arch"; };
	EOF
	aptc=(env "APT_CONFIG=$d/apt.conf")
	if [ -z "${private_updated[$d]:-}" ] && { [ ! -f "$d/updated" ] || [ "${2:-}" = force ]; }; then
		echo "setup.sh: apt-get update for $suites (private apt folder $d)" >&2
		"${aptc[@]}" apt-get update -qq
		touch "$d/updated"
		private_updated[$d]=1
	fi
}
declare -A private_updated=()
# update SUITES: refresh the lists the current line reads.
update() { if [ -n "$1" ]; then private_apt "$1" force; else apt_update; fi; }

# newest_of SERIES: newest kernel image of the series (no cloud/rt flavours) in the archive:
# linux-image-<series>.*-<arch>-unsigned (bookworm) or linux-image-<series>.*-<arch> (split packages).
newest_of() {
	local v=${1%-arm64}
	local re="^linux-image-${v//./\\.}\\.[0-9]+[-+][0-9a-z+]*-$arch(-unsigned)?\$"
	"${aptc[@]}" apt-cache search --names-only "$re" | awk '{print $1}' | grep -E "$re" | sort -V | tail -n1
}
candidate() { "${aptc[@]}" apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
# image_pkg PKG VER: the package holding the vmlinuz. Since Debian's 7.x kernels, linux-image-X is a
# small metapackage and the image is in linux-binary-X (signed) or linux-binary-unsigned-X; the
# modules are in linux-modules-X.
image_pkg() {
	local pkg=$1 bin=${1/linux-image-/linux-binary-unsigned-}
	local deps
	deps=$("${aptc[@]}" apt-cache show "$pkg=$2" 2>/dev/null | sed -n 's/^Depends: //p' || true)
	if [[ $deps == *linux-binary-* ]]; then
		if [ -n "$(candidate "$bin")" ] && [ "$(candidate "$bin")" != "(none)" ]; then echo "$bin"; else echo "${1/linux-image-/linux-binary-}"; fi
	else
		echo "$pkg"
	fi
}

# fetch_busybox DIR: Debian's busybox-static for $arch from the current apt into DIR/busybox (the guest
# /bin/busybox of a foreign-architecture VM; amd64 guests get the host's).
fetch_busybox() {
	local t
	t=$(mktemp -d "$cache/.fetch.XXXXXX")
	(cd "$t" && "${aptc[@]}" apt-get download -qq busybox-static 2>&1 | grep -v 'unsandboxed' >&2 || true)
	dpkg-deb --fsys-tarfile "$t"/busybox-static_*.deb | tar -x -C "$t" ./bin/busybox ./usr/bin/busybox 2>/dev/null || true
	local b
	b=$(find "$t" -name busybox -type f | head -n1)
	[ -n "$b" ] || { echo "setup.sh: ERROR: no busybox in busybox-static for $arch" >&2; rm -rf "$t"; exit 1; }
	mv "$b" "$1/busybox"
	rm -rf "$t"
}

while read -r series pkg suites _; do
	dir=$cache/kernels/$series
	# The architecture is in the package name (…-arm64[-unsigned]); a foreign one needs the suites field.
	arch=amd64
	[[ $pkg != *-arm64* ]] || arch=arm64
	if [ "$arch" != amd64 ] && [ -z "${suites:-}" ]; then
		echo "setup.sh: ERROR: $series ($arch) needs its apt suites in testvm/kernels.txt (third field)" >&2
		exit 1
	fi
	if [ -s "$dir/vmlinuz" ] && [ -f "$dir/package" ] && [ "$(awk '{print $1; exit}' "$dir/package")" = "$pkg" ] &&
		{ [ "$arch" = amd64 ] || [ -s "$dir/busybox" ]; }; then
		continue
	fi
	aptc=()
	[ -z "${suites:-}" ] || private_apt "$suites"
	ver=$(candidate "$pkg")
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		update "${suites:-}"
		ver=$(candidate "$pkg")
	fi
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		newest=$(newest_of "$series")
		if [ -z "$newest" ]; then
			echo "setup.sh: ERROR: $pkg is not in the apt archive and no other $series $arch kernel is either;" >&2
			echo "setup.sh: check the suites (${suites:-/etc/apt/sources.list: bookworm and bookworm-security}) and testvm/kernels.txt" >&2
			exit 1
		fi
		if [ -s "$dir/vmlinuz" ] && [ "$(awk '{print $1; exit}' "$dir/package" 2>/dev/null)" = "$newest" ]; then
			echo "setup.sh: WARNING: pinned $pkg is gone from the archive; using cached $newest" >&2
			continue
		fi
		{
			echo "################################################################################"
			echo "setup.sh: WARNING: pinned kernel $pkg is GONE from the apt archive."
			echo "setup.sh: WARNING: using the newest $series kernel instead: $newest"
			echo "setup.sh: WARNING: update testvm/kernels.txt to pin it."
			echo "################################################################################"
		} >&2
		pkg=$newest
		ver=$(candidate "$pkg")
	fi
	img=$(image_pkg "$pkg" "$ver")
	echo "setup.sh: fetching $img $ver (for $pkg) into $dir" >&2
	tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && "${aptc[@]}" apt-get download -qq "$img=$ver" 2>&1 | grep -v 'unsandboxed' >&2 || true)
	deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
	if [ -z "$deb" ]; then
		echo "setup.sh: ERROR: apt-get download $img=$ver produced no .deb" >&2
		exit 1
	fi
	# Only the vmlinuz is needed; extracting just that skips writing the ~400 MB module tree.
	# bookworm: ./boot/vmlinuz-*; split packages: ./usr/lib/modules/*/vmlinuz*.
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards --no-wildcards-match-slash \
		'./boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz*' 2>/dev/null || true
	mkdir -p "$tmp/out"
	k=$(find "$tmp" -path "$tmp/out" -prune -o -name 'vmlinuz*' -type f -print | head -n1)
	if [ -z "$k" ]; then
		echo "setup.sh: ERROR: $img=$ver holds no vmlinuz (boot/ or usr/lib/modules/)" >&2
		exit 1
	fi
	mv "$k" "$tmp/out/vmlinuz"
	printf '%s %s\n' "$pkg" "$ver" >"$tmp/out/package"
	# Where netmods.sh finds the modules: "<modules package> <version> <suites>".
	mods=$pkg
	[ "$img" = "$pkg" ] || mods=${pkg/linux-image-/linux-modules-}
	printf '%s %s %s\n' "$mods" "$ver" "${suites:-}" >"$tmp/out/modules"
	[ "$arch" = amd64 ] || fetch_busybox "$tmp/out"
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir")"
	mv "$tmp/out" "$dir"
	rm -rf "$tmp"
	trap - EXIT
	echo "setup.sh: $series: $(cat "$dir/package") ($(du -h "$dir/vmlinuz" | cut -f1))" >&2
done < <(entries "$root/testvm/kernels.txt")

# 2b. loop, mtd and romfs of each kernel (the raw-disk VM test; once per kernel).
while read -r series _; do
	bash "$root/testvm/blkmods.sh" "$cache" "$series"
done < <(entries "$root/testvm/kernels.txt")

# 3. The systemd VM's root file system.
"${sudo[@]}" bash "$root/testvm/rootfs.sh" "$cache"
