package loader

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// kernelBTF reads this machine's kernel BTF and rewrites it with edit applied to every type; edit returns
// false to drop a type. Reading the BTF needs no BPF privileges, so this runs on any Linux host with BTF.
func kernelBTF(t *testing.T, edit func(btf.Type) bool) *btf.Spec {
	t.Helper()
	f, err := os.Open("/sys/kernel/btf/vmlinux")
	if err != nil {
		t.Skipf("no kernel BTF on this host: %v", err)
	}
	defer f.Close()
	spec, err := btf.LoadSpecFromReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return spec
	}
	var types []btf.Type
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		if edit(typ) {
			types = append(types, typ)
		}
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func dropFunc(name string) func(btf.Type) bool {
	return func(typ btf.Type) bool {
		fn, ok := typ.(*btf.Func)
		return !ok || fn.Name != name
	}
}

// renameMember renames a member of a struct in place (the types are this test's own copy).
func renameMember(strct, from, to string) func(btf.Type) bool {
	return func(typ btf.Type) bool {
		if s, ok := typ.(*btf.Struct); ok && s.Name == strct {
			for i := range s.Members {
				if s.Members[i].Name == from {
					s.Members[i].Name = to
				}
			}
		}
		return true
	}
}

// Each kernel interface that differs between the kernels keyguard supports has a case here: the probe
// must pick the variant the kernel's BTF calls for, and a missing mandatory hook must refuse the kernel.
func TestChooseVariants(t *testing.T) {
	cases := []struct {
		name        string
		edit        func(btf.Type) bool
		kernfs      string // "" when the host decides (checked against its BTF below)
		dumpGuard   string
		procGuard   string
		missing     string // substring of a Missing entry, "" for none
		wantRefused bool
	}{
		{name: "host", dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardFileOpen},
		{name: "no dump_emit", edit: dropFunc("dump_emit"), dumpGuard: DumpGuardBlock, procGuard: ProcOpenGuardFileOpen},
		{name: "no bpf_task_from_pid kfunc (6.1)", edit: dropFunc("bpf_task_from_pid"), dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardNone},
		{name: "kernfs parent (before 6.15)", edit: renameMember("kernfs_node", "__parent", "parent"), kernfs: "parent", dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardFileOpen},
		{name: "kernfs __parent (6.15 and later)", edit: renameMember("kernfs_node", "parent", "__parent"), kernfs: "__parent", dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardFileOpen},
		{name: "no ptrace_access_check hook", edit: dropFunc("bpf_lsm_ptrace_access_check"), dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardFileOpen,
			missing: "bpf_lsm_ptrace_access_check (program kg_ptrace_access_check) is not in this kernel", wantRefused: true},
		{name: "no perf_event.attr", edit: renameMember("perf_event", "attr", "attr_renamed"), dumpGuard: DumpGuardFentry, procGuard: ProcOpenGuardFileOpen,
			missing: "struct perf_event field attr", wantRefused: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec, err := kgbpf.LoadKeyguard()
			if err != nil {
				t.Fatal(err)
			}
			kernel := kernelBTF(t, c.edit)
			v, missing := chooseVariants(spec, kernel)
			if v.DumpGuard != c.dumpGuard || v.ProcOpenGuard != c.procGuard {
				t.Errorf("variants %v, want dump guard %s, proc open guard %s", v, c.dumpGuard, c.procGuard)
			}
			if c.kernfs != "" && v.KernfsParent != c.kernfs {
				t.Errorf("kernfs_node.%s chosen, want %s", v.KernfsParent, c.kernfs)
			}
			if (len(missing) > 0) != c.wantRefused {
				t.Fatalf("missing %v, want refused=%v", missing, c.wantRefused)
			}
			if c.missing != "" {
				var all []string
				for _, m := range missing {
					all = append(all, m.What)
				}
				if !strings.Contains(strings.Join(all, "\n"), c.missing) {
					t.Errorf("missing %q, want one saying %q", all, c.missing)
				}
			}
		})
	}
}

func TestSkippedPrograms(t *testing.T) {
	spec, err := kgbpf.LoadKeyguard()
	if err != nil {
		t.Fatal(err)
	}
	// One process_vm_rw end variant is always left out: its two programs are not counted.
	all := len(spec.Programs) - len(vmRWPrograms[VMRWEndFexit])
	v := Variants{DumpGuard: DumpGuardBlock, ProcOpenGuard: ProcOpenGuardNone, VMRWEnd: VMRWEndCore}
	names := programs(withVariants(spec, v))
	for _, n := range names {
		if n == dumpGuardProgram {
			t.Errorf("%s is active with %v", n, v)
		}
	}
	if len(names) != all-1 {
		t.Errorf("%d active programs, want %d", len(names), all-1)
	}
	if len(spec.Programs) != all+len(vmRWPrograms[VMRWEndFexit]) {
		t.Errorf("withVariants changed the spec it was given: %d programs, want %d", len(spec.Programs), all)
	}
	if got := programs(withVariants(spec, Variants{DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardFileOpen, VMRWEnd: VMRWEndCore})); len(got) != all {
		t.Errorf("%d active programs with every hook present, want %d", len(got), all)
	}
}

// Where process_vm_rw cannot be traced, the ends of process_vm_readv/writev attach to the syscall entry
// functions the object names for its architecture; a kernel without them (or an object of the other
// architecture) leaves them out instead of refusing the kernel.
func TestVMRWEndArchitectures(t *testing.T) {
	amd64, err := ebpf.LoadCollectionSpec("../../../bpf/keyguard_x86_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	arm64, err := ebpf.LoadCollectionSpec("../../../bpf/keyguard_arm64_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the cases read this amd64 host's BTF")
	}
	noCore := dropFunc("process_vm_rw")
	noCoreNoWritev := func(typ btf.Type) bool {
		return noCore(typ) && dropFunc("__x64_sys_process_vm_writev")(typ)
	}
	cases := []struct {
		name string
		spec *ebpf.CollectionSpec
		edit func(btf.Type) bool
		want string
	}{
		{"amd64 object, host kernel", amd64, nil, VMRWEndCore},
		{"amd64 object, no process_vm_rw", amd64, noCore, VMRWEndFexit},
		{"amd64 object, no process_vm_rw, no __x64_sys_process_vm_writev", amd64, noCoreNoWritev, VMRWEndNone},
		{"arm64 object on an amd64 kernel", arm64, nil, VMRWEndCore},
		{"arm64 object on an amd64 kernel without process_vm_rw", arm64, noCore, VMRWEndNone},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, missing := chooseVariants(c.spec.Copy(), kernelBTF(t, c.edit))
			if v.VMRWEnd != c.want {
				t.Errorf("process_vm_rw end %s, want %s", v.VMRWEnd, c.want)
			}
			for _, m := range missing {
				if strings.Contains(m.What, "process_vm_") {
					t.Errorf("refused for %s; the variant should leave the program out", m.What)
				}
			}
			skip := v.skipped()
			if (c.want == VMRWEndNone) != (skip["kg_vm_readv_exit"] && skip["kg_vm_rw_exit"]) {
				t.Errorf("skipped %v with process_vm_rw end %s", skip, v.VMRWEnd)
			}
		})
	}
}
