package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// Program variants. Kernels between 6.1 and the newest Debian kernel differ in the interfaces keyguard
// uses; the choice is made by probing the running kernel's BTF, never by its version number:
//
//   - kernfs_node's parent pointer (the cgroup ancestry walk) is `parent` before 6.15 and `__parent`
//     after. The object carries both reads; CO-RE keeps the one the kernel has (bpf_core_field_exists).
//   - the dump destination guard is fentry/dump_emit. Where dump_emit cannot be traced, the program is
//     left out and `dumps: redact` is enforced as `dumps: block` by cred_prepare (cfg_dump_guard = 0):
//     without the guard nothing could keep a protected dump from a foreign destination.
//   - mm_access() of newer kernels lets a CAP_PERFMON caller read an mm that ptrace_access_check
//     refused (/proc/PID/environ, auxv opened by root). Where the file_post_open hook exists,
//     kg_file_post_open refuses such an open; kernels without the hook (6.1) have no override.
//   - the ends of process_vm_readv/writev are fexit programs on the architecture's syscall entry
//     functions (__x64_sys_* on amd64, __arm64_sys_* on arm64, named by the object built for it). They
//     attach only where each has exactly one BTF entry (6.1's vmlinux BTF has two of each, which fexit
//     cannot tell apart); elsewhere they are left out and the in-flight wait covers /proc/PID/mem only.
//   - the bpf LSM hook gained a fourth argument (`kernel`) and task_alloc's clone_flags became u64;
//     keyguard's programs read neither difference, so they need no variant (reported for the record).
//
// Every other hook, tracepoint and struct field keyguard uses must exist: when one is missing, the
// kernel is refused at start with what is missing (Probe).

// Dump guard variants.
const (
	DumpGuardFentry = "fentry/dump_emit" // every dump write is checked against keyguard's handler pipes
	DumpGuardBlock  = "block"            // no guard: redact rules are enforced as block
)

// Proc open guard variants.
const (
	ProcOpenGuardPostOpen = "lsm/file_post_open" // a /proc open let through by mm_access's override is refused
	ProcOpenGuardNone     = "none"               // no file_post_open hook (and no override in such kernels)
)

// VMReadEndNone: the ends of process_vm_readv/writev are not traced (otherwise VMReadEnd is the fexit
// target of the process_vm_readv end, e.g. "fexit/__arm64_sys_process_vm_readv").
const VMReadEndNone = "none"

// The programs that variants leave out when their hook cannot attach.
const (
	dumpGuardProgram     = "kg_dump_emit"
	procOpenGuardProgram = "kg_file_post_open"
)

// vmReadEndPrograms are the fexit programs on the ends of process_vm_readv and process_vm_writev.
var vmReadEndPrograms = []string{"kg_vm_readv_exit", "kg_vm_writev_exit"}

// Variants are the program variants chosen for the running kernel.
type Variants struct {
	// KernfsParent is the kernfs_node field the cgroup walk reads: "__parent" or "parent".
	KernfsParent string `json:"kernfs_parent"`
	// DumpGuard is DumpGuardFentry or DumpGuardBlock.
	DumpGuard string `json:"dump_guard"`
	// ProcOpenGuard is ProcOpenGuardPostOpen or ProcOpenGuardNone.
	ProcOpenGuard string `json:"proc_open_guard"`
	// BPFHookArgs is the number of arguments of the bpf LSM hook (3, or 4 with `kernel`).
	BPFHookArgs int `json:"bpf_hook_args"`
	// VMReadEnd is "fexit/<syscall entry of process_vm_readv>" or VMReadEndNone.
	VMReadEnd string `json:"vm_read_end"`
}

func (v Variants) String() string {
	return fmt.Sprintf("kernfs_node.%s, dump guard %s, proc open guard %s, bpf hook with %d arguments, process_vm_readv end %s",
		v.KernfsParent, v.DumpGuard, v.ProcOpenGuard, v.BPFHookArgs, v.VMReadEnd)
}

// skipped lists the programs the variants leave out.
func (v Variants) skipped() map[string]bool {
	skip := map[string]bool{}
	if v.DumpGuard == DumpGuardBlock {
		skip[dumpGuardProgram] = true
	}
	if v.ProcOpenGuard == ProcOpenGuardNone {
		skip[procOpenGuardProgram] = true
	}
	if v.VMReadEnd == VMReadEndNone {
		for _, p := range vmReadEndPrograms {
			skip[p] = true
		}
	}
	return skip
}

// chooseVariants probes the kernel BTF for the variants, and lists what keyguard needs and the kernel
// lacks: attach targets of every program (but the dump guard's) and struct fields read without a guard.
func chooseVariants(spec *ebpf.CollectionSpec, kernel *btf.Spec) (Variants, []Missing) {
	v := Variants{KernfsParent: "parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardPostOpen}
	var kn *btf.Struct
	if kernel.TypeByName("kernfs_node", &kn) == nil {
		for _, m := range kn.Members {
			if m.Name == "__parent" {
				v.KernfsParent = "__parent"
			}
		}
	}
	var fn *btf.Func
	if kernel.TypeByName("bpf_lsm_bpf", &fn) == nil {
		if fp, ok := fn.Type.(*btf.FuncProto); ok {
			v.BPFHookArgs = len(fp.Params)
		}
	}
	v.VMReadEnd = vmReadEnd(spec, kernel)
	var missing []Missing
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := spec.Programs[name]
		if target := attachTarget(p); target != "" && !hasType(kernel, target) {
			switch name {
			case dumpGuardProgram:
				v.DumpGuard = DumpGuardBlock
				continue
			case procOpenGuardProgram:
				v.ProcOpenGuard = ProcOpenGuardNone
				continue
			case vmReadEndPrograms[0], vmReadEndPrograms[1]:
				continue // VMReadEnd is none
			}
			missing = append(missing, Missing{fmt.Sprintf("%s (program %s) is not in this kernel", target, name),
				"use a kernel that has it (Debian's stock 6.1, 6.12 and 7.3 do) and report the kernel version to keyguard"})
		}
	}
	for _, g := range coreGaps(spec, kernel, v.skipped()) {
		missing = append(missing, Missing{g, "use a kernel that has it (Debian's stock 6.1, 6.12 and 7.3 do) and report the kernel version to keyguard"})
	}
	return v, missing
}

// vmReadEnd is the process_vm_readv end's fexit target when both ends' targets (the syscall entry
// functions the object names) each have exactly one BTF function in kernel, else VMReadEndNone.
func vmReadEnd(spec *ebpf.CollectionSpec, kernel *btf.Spec) string {
	for _, name := range vmReadEndPrograms {
		p, ok := spec.Programs[name]
		if !ok {
			return VMReadEndNone
		}
		var fns int
		ts, _ := kernel.AnyTypesByName(p.AttachTo)
		for _, t := range ts {
			if _, ok := t.(*btf.Func); ok {
				fns++
			}
		}
		if fns != 1 {
			return VMReadEndNone
		}
	}
	return "fexit/" + spec.Programs[vmReadEndPrograms[0]].AttachTo
}

// attachTarget is the kernel BTF name a program attaches to.
func attachTarget(p *ebpf.ProgramSpec) string {
	switch {
	case p.Type == ebpf.LSM:
		return "bpf_lsm_" + p.AttachTo
	case p.Type == ebpf.Tracing && p.AttachType == ebpf.AttachTraceRawTp:
		return "btf_trace_" + p.AttachTo
	case p.Type == ebpf.Tracing:
		return p.AttachTo
	}
	return ""
}

func hasType(kernel *btf.Spec, name string) bool {
	ts, err := kernel.AnyTypesByName(name)
	return err == nil && len(ts) > 0
}

var reloRE = regexp.MustCompile(`^CORERelocation\(([a-z_]+), [A-Za-z]+:"([A-Za-z0-9_]+)"\[([0-9:]*)\]`)

// coreGaps lists struct fields the programs read (CO-RE) that this kernel does not have. Reads through
// a flavour type (name___flavour) are guarded by bpf_core_field_exists and left out.
func coreGaps(spec *ebpf.CollectionSpec, kernel *btf.Spec, skip map[string]bool) []string {
	seen := map[string][]string{}
	for name, p := range spec.Programs {
		if skip[name] {
			continue
		}
		var relos []*btf.CORERelocation
		for i := range p.Instructions {
			if r := btf.CORERelocationMetadata(&p.Instructions[i]); r != nil {
				relos = append(relos, r)
			}
		}
		if len(relos) == 0 {
			continue
		}
		fixups, err := btf.CORERelocate(relos, []*btf.Spec{kernel}, binary.LittleEndian, func(btf.Type) (btf.TypeID, error) { return 0, nil })
		if err != nil {
			seen["CO-RE relocation against this kernel's BTF failed: "+err.Error()] = append(seen[err.Error()], name)
			continue
		}
		for i, f := range fixups {
			if !strings.HasSuffix(f.String(), "=poison") {
				continue
			}
			m := reloRE.FindStringSubmatch(relos[i].String())
			if m == nil || strings.Contains(m[2], "___") {
				continue
			}
			what := "struct " + m[2] + " field " + fieldPath(spec.Types, m[2], m[3])
			seen[what] = append(seen[what], name)
		}
	}
	var out []string
	for what, progs := range seen {
		sort.Strings(progs)
		out = append(out, fmt.Sprintf("%s is not in this kernel (read by %s)", what, strings.Join(dedup(progs), ", ")))
	}
	sort.Strings(out)
	return out
}

// fieldPath names the member of local struct typ at CO-RE accessor acc ("0:2:1").
func fieldPath(local *btf.Spec, typ, acc string) string {
	var s *btf.Struct
	parts := strings.Split(acc, ":")
	if local == nil || local.TypeByName(typ, &s) != nil || len(parts) < 2 {
		return acc
	}
	var names []string
	var t btf.Type = s
	for _, p := range parts[1:] {
		i, err := strconv.Atoi(p)
		if err != nil {
			return acc
		}
		var members []btf.Member
		switch c := btf.UnderlyingType(t).(type) {
		case *btf.Struct:
			members = c.Members
		case *btf.Union:
			members = c.Members
		}
		if i >= len(members) {
			return acc
		}
		if members[i].Name != "" {
			names = append(names, members[i].Name)
		}
		t = members[i].Type
	}
	return strings.Join(names, ".")
}

func dedup(s []string) []string {
	var out []string
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// applyVariants sets the object's settings for the variants.
func applyVariants(spec *ebpf.CollectionSpec, v Variants) error {
	vs, ok := spec.Variables["cfg_dump_guard"]
	if !ok {
		return errors.New("BPF object has no setting cfg_dump_guard")
	}
	var guard uint32
	if v.DumpGuard == DumpGuardFentry {
		guard = 1
	}
	return vs.Set(guard)
}

// withVariants returns spec without the programs the variants leave out (a copy when any are).
func withVariants(spec *ebpf.CollectionSpec, v Variants) *ebpf.CollectionSpec {
	skip := v.skipped()
	if len(skip) == 0 {
		return spec
	}
	spec = spec.Copy()
	for name := range skip {
		delete(spec.Programs, name)
	}
	return spec
}

// variants probes the running kernel, applies the variants to spec and returns the build name that
// includes them (links of another variant choice are another build).
func (c Config) variants(spec *ebpf.CollectionSpec, build string) (Variants, string, error) {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return Variants{}, "", fmt.Errorf("read the kernel's BTF: %w (keyguard needs CONFIG_DEBUG_INFO_BTF=y)", err)
	}
	v, missing := chooseVariants(spec, kernel)
	if len(missing) > 0 {
		return v, "", ProbeResult{Kernel: kernelRelease(), Missing: missing}.Err()
	}
	if c.NoDumpGuard {
		v.DumpGuard = DumpGuardBlock
	}
	if err := applyVariants(spec, v); err != nil {
		return v, "", err
	}
	if v.DumpGuard != DumpGuardFentry {
		build += "-noguard" // links of the other choice belong to another build
	}
	return v, build, nil
}

// probeVariants chooses the variants for the running kernel and lists what it lacks.
func probeVariants() (Variants, []Missing) {
	spec, err := kgbpf.LoadKeyguard()
	if err != nil {
		return Variants{}, []Missing{{"keyguard's embedded BPF object is unreadable: " + err.Error(), "reinstall keyguard"}}
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return Variants{}, []Missing{{"the kernel's BTF is unreadable: " + err.Error(), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"}}
	}
	return chooseVariants(spec, kernel)
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
