package main

import (
	"slices"
	"strings"
	"testing"
)

// An arm64 series boots qemu-system-aarch64's virt machine with the PL011 console; amd64 keeps the PC
// machine and ttyS0.
func TestQEMUPerArch(t *testing.T) {
	for _, c := range []struct {
		series, arch, binary, console string
		machine                       []string
	}{
		{"6.12", "amd64", "qemu-system-x86_64", "console=ttyS0", nil},
		{"6.12-arm64", "arm64", "qemu-system-aarch64", "console=ttyAMA0", []string{"-M", "virt", "-cpu", "max,pauth-impdef=on"}},
	} {
		t.Run(c.series, func(t *testing.T) {
			if got := archOf(c.series); got != c.arch {
				t.Fatalf("archOf(%q) = %s, want %s", c.series, got, c.arch)
			}
			cfg := &config{arch: c.arch}
			args := qemuArgs(cfg, &image{path: "initrd"}, &vmResult{series: c.series, vmlinuz: "vmlinuz"})
			if q := qemuFor(c.arch); q.binary != c.binary {
				t.Errorf("binary %s, want %s", q.binary, c.binary)
			}
			if len(c.machine) > 0 && !slices.Equal(args[:len(c.machine)], c.machine) {
				t.Errorf("args %q, want them to start with %q", args, c.machine)
			}
			if c.machine == nil && slices.Contains(args, "-M") {
				t.Errorf("amd64 args %q name a machine", args)
			}
			i := slices.Index(args, "-append")
			if i < 0 || !strings.Contains(" "+args[i+1]+" ", " "+c.console+" ") {
				t.Errorf("args %q: cmdline lacks %s", args, c.console)
			}
		})
	}
}

// One vmtest run builds one image, so its kernels must share an architecture; arm64 has no systemd root.
func TestCheckArch(t *testing.T) {
	for _, c := range []struct {
		kernels []string
		systemd bool
		arch    string // "" when refused
	}{
		{[]string{"6.1", "6.12"}, false, "amd64"},
		{[]string{"6.12-arm64"}, false, "arm64"},
		{[]string{"6.12", "6.12-arm64"}, false, ""},
		{[]string{"6.12-arm64"}, true, ""},
		{[]string{"6.12-riscv64"}, false, ""},
	} {
		cfg := &config{kernels: c.kernels, systemd: c.systemd, compress: "none", parallel: 1, cache: t.TempDir()}
		err := cfg.check("")
		if (err == nil) != (c.arch != "") {
			t.Errorf("%v systemd=%v: err %v, want refused=%v", c.kernels, c.systemd, err, c.arch == "")
			continue
		}
		if err == nil && cfg.arch != c.arch {
			t.Errorf("%v: arch %s, want %s", c.kernels, cfg.arch, c.arch)
		}
	}
}
