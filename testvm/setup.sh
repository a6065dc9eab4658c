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
# newest_of SERIES: newest linux-image-<series>.*-amd64-unsigned (no cloud/rt flavours) in the archive.
newest_of() {
	local re="^linux-image-${1//./\\.}\\.[0-9]+[-+][0-9a-z+]*-amd64-unsigned\$"
	apt-cache search --names-only "$re" | awk '{print $1}' | grep -E "$re" | sort -V | tail -n1
}
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

while read -r series pkg _; do
	dir=$cache/kernels/$series
	if [ -s "$dir/vmlinuz" ] && [ -f "$dir/package" ] && [ "$(awk '{print $1; exit}' "$dir/package")" = "$pkg" ]; then
		continue
	fi
	ver=$(candidate "$pkg")
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		apt_update
		ver=$(candidate "$pkg")
	fi
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		newest=$(newest_of "$series")
		if [ -z "$newest" ]; then
			echo "setup.sh: ERROR: $pkg is not in the apt archive and no other $series amd64 kernel is either;" >&2
			echo "setup.sh: check /etc/apt/sources.list (bookworm and bookworm-security) and testvm/kernels.txt" >&2
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
	echo "setup.sh: fetching $pkg $ver into $dir" >&2
	tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -qq "$pkg=$ver" 2>&1 | grep -v 'unsandboxed' >&2 || true)
	deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
	if [ -z "$deb" ]; then
		echo "setup.sh: ERROR: apt-get download $pkg=$ver produced no .deb" >&2
		exit 1
	fi
	# Only boot/vmlinuz-* is needed; extracting just that skips writing the ~400 MB module tree.
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
	mkdir -p "$tmp/out"
	mv "$tmp"/boot/vmlinuz-* "$tmp/out/vmlinuz"
	printf '%s %s\n' "$pkg" "$ver" >"$tmp/out/package"
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir")"
	mv "$tmp/out" "$dir"
	rm -rf "$tmp"
	trap - EXIT
	echo "setup.sh: $series: $(cat "$dir/package") ($(du -h "$dir/vmlinuz" | cut -f1))" >&2
done < <(entries "$root/testvm/kernels.txt")

# 3. The systemd VM's root file system.
"${sudo[@]}" bash "$root/testvm/rootfs.sh" "$cache"
