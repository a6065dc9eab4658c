package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/keyguard/keyguard/deploy/deb"
	"github.com/keyguard/keyguard/testvm/initramfs"
)

// The systemd image (-systemd): Debian 12 with systemd as PID 1, booted from the cached root
// (testvm/rootfs.sh) with an overlay appended to the same initrd. The kernel unpacks concatenated
// cpio archives one after the other into its tmpfs root, so the overlay adds files to Debian's tree.
//
//	/opt/keyguard-test/runner                       the guest init, run as keyguard-vmtest.service
//	/opt/keyguard-test/tests/<suite>/...            suites (+ testdata) and tests/manifest
//	/opt/keyguard-test/bin/<name>                   systemd-bins.txt
//	/opt/keyguard-test/debs/<pkg>_<ver>_amd64.deb   keyguard's packages, versions debVersions
const (
	rootfsFile     = "rootfs/debian12-systemd.cpio.zst"
	serviceRoot    = "opt/keyguard-test"
	serviceUnit    = "keyguard-vmtest.service"
	serviceUnitDef = `[Unit]
Description=keyguard VM tests (testvm/cmd/vmtest -systemd)
After=multi-user.target

[Service]
Type=exec
ExecStart=/opt/keyguard-test/runner
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
`
)

// netModules are the kernel modules for virtio-net, in load order (-demo only).
var netModules = []string{"failover", "net_failover", "virtio_net"}

// demoNetwork: QEMU user networking's fixed guest address, where hostfwd delivers.
const demoNetwork = `[Match]
Driver=virtio_net

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
`

// packagedBinaries are built for the .deb packages in the systemd image.
var packagedBinaries = []string{
	"github.com/keyguard/keyguard/agent/cmd/keyguard-agent",
	"github.com/keyguard/keyguard/agent/cmd/keyguard",
	"github.com/keyguard/keyguard/collector/cmd/keyguard-collector",
}

// debVersions: the first is installed, the second upgrades it.
var debVersions = []string{"1.0", "1.1"}

// systemdWords are the extra kernel command-line words for the systemd image.
func systemdWords(cfg *config) string {
	if !cfg.systemd {
		return ""
	}
	return "systemd.show_status=0"
}

// writeSystemdImage writes img.path: the cached root, zero padding to 4 bytes, then the overlay.
func writeSystemdImage(cfg *config, img *image, dir string) (err error) {
	base := filepath.Join(cfg.cache, rootfsFile)
	src, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("the systemd VM root is not in the cache (%w): run `bash testvm/rootfs.sh %s` (make deps) first", err, cfg.cache)
	}
	defer src.Close()
	debDir := filepath.Join(dir, "debs")
	for _, v := range debVersions {
		if _, err := deb.Build(deb.Config{Version: v, BinDir: filepath.Join(dir, "pkgbin"), SystemdDir: filepath.Join(cfg.root, "deploy/systemd"),
			PolicyFile: filepath.Join(cfg.root, "agent/internal/policy/testdata/example.yaml"), OutDir: debDir, MTime: time.Now()}); err != nil {
			return fmt.Errorf("building the .deb packages: %w", err)
		}
	}

	f, err := os.Create(img.path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	n, err := io.Copy(f, src)
	if err != nil {
		return err
	}
	// The kernel looks for the next archive at a 4-byte boundary and skips zeros.
	if _, err := f.Write(make([]byte, (4-n%4)%4)); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w := initramfs.NewWriter(bw)
	add := []error{
		w.CopyFile(path.Join(serviceRoot, "runner"), filepath.Join(dir, "init")),
		w.Dir(path.Join(serviceRoot, "bin"), 0o755),
		w.File("etc/systemd/system/"+serviceUnit, 0o644, []byte(serviceUnitDef)),
		w.Symlink("etc/systemd/system/multi-user.target.wants/"+serviceUnit, "/etc/systemd/system/"+serviceUnit),
	}
	if cfg.demo {
		// virtio-net is a module in Debian's kernels (testvm/netmods.sh extracts it); the demo
		// binary loads it, and systemd-networkd gives it QEMU user networking's guest address.
		series := cfg.kernels[len(cfg.kernels)-1]
		if _, err := os.Stat(filepath.Join(cfg.cache, "kernels", series, "net", "virtio_net.ko")); err != nil {
			return fmt.Errorf("the demo needs virtio-net for kernel %s (%w): run `bash testvm/netmods.sh %s %s` (make demo-systemd does)", series, err, cfg.cache, series)
		}
		for _, m := range netModules {
			add = append(add, w.CopyFile(path.Join(serviceRoot, "modules", m+".ko"), filepath.Join(cfg.cache, "kernels", series, "net", m+".ko")))
		}
		add = append(add, w.File("etc/systemd/network/10-keyguard-demo.network", 0o644, []byte(demoNetwork)))
	}
	for _, b := range img.bins {
		add = append(add, w.CopyFile(path.Join(serviceRoot, "bin", b), filepath.Join(dir, "bin", b)))
	}
	debs, err := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if err != nil || len(debs) != len(debVersions)*3 {
		return fmt.Errorf("expected %d .deb files in %s, found %v (%v)", len(debVersions)*3, debDir, debs, err)
	}
	for _, d := range debs {
		add = append(add, w.CopyFile(path.Join(serviceRoot, "debs", filepath.Base(d)), d))
	}
	manifest := "# suites in run order, written by testvm/cmd/vmtest -systemd\n"
	for _, s := range img.suites {
		manifest += s.name + "\n"
		add = append(add, w.CopyFile(path.Join(serviceRoot, "tests", s.name, s.name+".test"), filepath.Join(dir, "tests", s.name+".test")))
		if td := filepath.Join(s.pkg.Dir, "testdata"); isDir(td) {
			add = append(add, w.CopyTree(path.Join(serviceRoot, "tests", s.name, "testdata"), td))
		}
	}
	add = append(add, w.File(path.Join(serviceRoot, "tests/manifest"), 0o644, []byte(manifest)), w.Close())
	if err := errors.Join(add...); err != nil {
		return fmt.Errorf("writing the systemd image overlay: %w", err)
	}
	return bw.Flush()
}
