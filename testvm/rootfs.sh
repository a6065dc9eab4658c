#!/usr/bin/env bash
# Usage: bash testvm/rootfs.sh CACHE
# Builds the systemd test VM's root file system once and caches it as
#   CACHE/rootfs/debian12-systemd.cpio.zst   (newc cpio, zstd; booted as the whole initramfs)
#   CACHE/rootfs/debian12-systemd.recipe     (sha256 of this script: a changed recipe rebuilds)
# Debian 12 minbase from debootstrap with systemd as /init, systemd-coredump, no docs, serial getty
# masked (it hangs up ttyS0, where the test results travel). Needs root and the Debian mirror
# (KEYGUARD_DEBIAN_MIRROR, default: the first one apt uses). ~40 s debootstrap + ~5 s packing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${1:-${KEYGUARD_CACHE:-$root/.cache}}
mkdir -p "$cache/rootfs"
cache=$(cd "$cache" && pwd)
out=$cache/rootfs/debian12-systemd.cpio.zst
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [ -s "$out" ] && [ "$(cat "$cache/rootfs/debian12-systemd.recipe" 2>/dev/null)" = "$recipe" ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "rootfs.sh: building the systemd VM root needs root (debootstrap chroots and makes device nodes)" >&2
	exit 1
fi
for tool in debootstrap cpio zstd; do
	command -v "$tool" >/dev/null || { echo "rootfs.sh: $tool missing: run make deps (.ci/packages.txt)" >&2; exit 1; }
done

mirror=${KEYGUARD_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
		awk '{print $2}' | grep -v security | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

tmp=$(mktemp -d "$cache/rootfs/.build.XXXXXX")
r=$tmp/root
# debootstrap mounts proc and sys in the target while it runs; never let rm descend into them.
cleanup() {
	for m in proc sys dev/pts dev; do umount -l "$r/$m" 2>/dev/null || true; done
	rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
start=$(date +%s)
echo "rootfs.sh: debootstrap bookworm from $mirror (about 40 s)" >&2
debootstrap --variant=minbase \
	--include=systemd,systemd-sysv,systemd-coredump,dbus,udev,kmod,procps \
	bookworm "$r" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
	tail -n 30 "$tmp/debootstrap.log" >&2
	echo "rootfs.sh: debootstrap failed (log above)" >&2
	exit 1
}
boot=$(date +%s)

# Smaller: no docs, man pages, locales, apt caches or hwdb (and none from later dpkg -i either).
rm -rf "$r"/usr/share/{doc,man,info,locale,lintian} "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* \
	"$r"/etc/udev/hwdb.bin "$r"/usr/lib/udev/hwdb.bin
mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
cat >"$r/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF

# Identity and console.
echo keyguard-vm >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost keyguard-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
: >"$r/etc/machine-id" # a fresh id every boot
chroot "$r" passwd -d root >/dev/null
chroot "$r" useradd -u 1000 -U -d /tmp -s /usr/sbin/nologin kguser
for unit in serial-getty@ttyS0.service getty@tty1.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer; do
	ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
# The whole root is the initramfs: the kernel runs /init on its tmpfs and systemd boots normally.
ln -s /lib/systemd/systemd "$r/init"

(cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | zstd -q -1 -T0 >"$tmp/rootfs.cpio.zst"
mv "$tmp/rootfs.cpio.zst" "$out"
echo "$recipe" >"$cache/rootfs/debian12-systemd.recipe"
grep -E '^ii' <(chroot "$r" dpkg -l) | awk '{print $2, $3}' >"$cache/rootfs/debian12-systemd.packages"
echo "rootfs.sh: $out: $(du -h "$out" | cut -f1), debootstrap $((boot - start)) s, total $(($(date +%s) - start)) s" >&2
