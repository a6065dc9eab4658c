package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Missing is a kernel capability keyguard needs and does not have, with what to change.
type Missing struct {
	What string
	Fix  string
}

func (m Missing) String() string { return m.What + ": " + m.Fix }

// ProbeResult says what the running kernel offers. It is read, not inferred from a version number.
type ProbeResult struct {
	Kernel  string
	LSMs    []string
	Missing []Missing
	// Variants are the program variants this kernel gets (zero when its BTF is unreadable).
	Variants Variants
}

// Err returns nil when everything keyguard needs is present, and otherwise one error listing each
// missing piece and how to fix it.
func (p ProbeResult) Err() error {
	if len(p.Missing) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "this kernel (%s) cannot run keyguard:", p.Kernel)
	for _, m := range p.Missing {
		b.WriteString("\n  - " + m.String())
	}
	return errors.New(b.String())
}

// Probe checks for BPF LSM support: `bpf` in the active LSM list, the LSM program type, kernel BTF,
// bpffs, and whether an LSM program can actually be loaded and attached.
func Probe(pinParent string) ProbeResult {
	var r ProbeResult
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	lsm, err := os.ReadFile("/sys/kernel/security/lsm")
	switch {
	case err != nil:
		r.Missing = append(r.Missing, Missing{"securityfs /sys/kernel/security/lsm unreadable (" + err.Error() + ")",
			"mount securityfs (mount -t securityfs securityfs /sys/kernel/security)"})
	default:
		r.LSMs = strings.Split(strings.TrimSpace(string(lsm)), ",")
		found := false
		for _, l := range r.LSMs {
			found = found || l == "bpf"
		}
		if !found {
			r.Missing = append(r.Missing, Missing{"the BPF LSM is not active (active: " + strings.TrimSpace(string(lsm)) + ")",
				"add bpf to the lsm= kernel boot argument, keeping the others, e.g. lsm=" + strings.TrimSpace(string(lsm)) + ",bpf (in GRUB_CMDLINE_LINUX, then update-grub and reboot); the kernel needs CONFIG_BPF_LSM=y"})
		}
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		r.Missing = append(r.Missing, Missing{"kernel BTF (/sys/kernel/btf/vmlinux) is missing",
			"use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's stock kernels are)"})
	} else {
		v, missing := probeVariants()
		r.Variants = v
		r.Missing = append(r.Missing, missing...)
	}
	if err := checkBPFFS(pinParent); err != nil {
		r.Missing = append(r.Missing, Missing{"bpffs not mounted at " + pinParent, "mount -t bpf bpf " + pinParent + " (systemd mounts it by default)"})
	}
	if err := features.HaveProgramType(ebpf.LSM); err != nil {
		r.Missing = append(r.Missing, Missing{"the kernel does not support BPF LSM programs (" + err.Error() + ")",
			"use a kernel built with CONFIG_BPF_LSM=y"})
	} else if len(r.Missing) == 0 {
		if err := tryAttach(); err != nil {
			r.Missing = append(r.Missing, Missing{"loading and attaching a BPF LSM program failed: " + err.Error(),
				"run the agent as root with CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON; check that no security module or seccomp policy refuses bpf()"})
		}
	}
	return r
}

// tryAttach loads and attaches an allow-everything LSM program to a hook keyguard uses, then detaches it.
func tryAttach() error {
	spec := &ebpf.ProgramSpec{
		Type:         ebpf.LSM,
		AttachType:   ebpf.AttachLSMMac,
		AttachTo:     "ptrace_traceme",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := attachLSM(prog)
	if err != nil {
		return err
	}
	return l.Close()
}
