package loader

import (
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
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
//     refused (/proc/PID/environ, auxv opened by root). Where the kernel has the kfunc
//     bpf_task_from_pid (6.2 and later), kg_file_open decides the opens of /proc/PID/{mem,environ,auxv,
//     pagemap} itself, before the file's own open and its ptrace check (proc_mm_refused); kernels without
//     it (6.1) have no override and the ptrace check decides. The object carries the call as a weak
//     kfunc: where it is missing the loader resolves it to 0 and the verifier drops that code.
//   - ftruncate(2) reaches the file_truncate hook (6.2 and later) or path_truncate (before): kg_file_truncate
//     is left out where the hook is missing, and kg_path_truncate guards ftruncate there.
//   - POSIX ACLs are set and removed through the inode_set_acl/inode_remove_acl hooks (6.2 and later) or
//     as system.posix_acl_* xattrs through inode_setxattr/inode_removexattr (before): the ACL programs are
//     left out where their hooks are missing.
//   - the end of process_vm_readv/writev is traced by fentry/fexit on process_vm_rw(), which every entry
//     (x86-64, ia32 compat, x32) goes through; where it cannot be traced (6.1's x86 trampoline takes six
//     arguments, process_vm_rw has seven), by fexit on every syscall entry function of the two calls:
//     native (__x64_sys_*, __arm64_sys_*), 32-bit compat (__ia32_compat_sys_*, __arm64_compat_sys_*) and
//     x32 (__x64_compat_sys_*); the compat and x32 ones are needed where the kernel has them. A function
//     listed more than once in the BTF with one prototype (6.1 lists __x64_sys_process_vm_readv twice)
//     is traced when /proc/kallsyms has one symbol of that name: the kernel attaches by name, so every
//     entry is the same function (tracingCache keeps one for the loader). Where neither variant can be
//     traced the programs are left out and cfg_vm_rw_tracked is 0: the in-flight wait at key-file open
//     then covers /proc/PID/mem reads only.
//   - executables are trusted by content where the kernel can hash them at exec: the sleepable
//     kg_bprm_committed_creds calls bpf_ima_file_hash (IMA's SHA-256 of the file) for a strict rule's
//     listed executables and keyguard's trusted executable. The helper needs a kernel built with IMA
//     (BTF function ima_file_hash) that knows the helper (enum bpf_func_id BPF_FUNC_ima_file_hash).
//     Without it cfg_digest is 0: strict rules admit no process and keyguard's trust is by inode only.
//     Newer kernels (6.7 and later) also have the kfunc bpf_get_fsverity_digest; it is reported, not
//     used: it answers only for files with fs-verity enabled, and IMA's hash covers every file.
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
	ProcOpenGuardFileOpen = "lsm/file_open+bpf_task_from_pid" // /proc/PID/{mem,environ,auxv,pagemap} decided at file_open
	ProcOpenGuardNone     = "none"                            // no bpf_task_from_pid (and no override in such kernels)
)

// Truncate guard variants.
const (
	TruncateGuardFile = "lsm/file_truncate" // ftruncate has its own hook
	TruncateGuardPath = "lsm/path_truncate" // ftruncate reaches path_truncate (before 6.2)
)

// ACL guard variants.
const (
	ACLGuardHooks = "lsm/inode_set_acl"  // inode_set_acl and inode_remove_acl
	ACLGuardXattr = "lsm/inode_setxattr" // ACLs are system.posix_acl_* xattrs (before 6.2)
)

// process_vm_readv/writev end variants, best first.
const (
	VMRWEndCore  = "fexit/process_vm_rw"        // every entry, compat included
	VMRWEndFexit = "fexit/sys_process_vm_readv" // every syscall entry of both calls (native, compat, x32) ends at its return
	VMRWEndNone  = "none"                       // not traceable: the in-flight wait covers /proc/PID/mem only
)

// Executable digest variants.
const (
	DigestIMA  = "bpf_ima_file_hash" // SHA-256 of the executable by IMA, at exec
	DigestNone = "none"              // no digest checks: strict rules admit nobody, trust is by inode
)

// procOpenGuardKfunc is the kfunc kg_file_open needs to decide /proc mm files itself (weak in the object).
const procOpenGuardKfunc = "bpf_task_from_pid"

// The programs that variants leave out when their hook cannot attach.
const (
	dumpGuardProgram      = "kg_dump_emit"
	fileTruncateProgram   = "kg_file_truncate"
	setACLProgram         = "kg_inode_set_acl"
	removeACLProgram      = "kg_inode_remove_acl"
	vmReadvEndProgram     = "kg_vm_readv_exit"
	vmWritevEndProgram    = "kg_vm_writev_exit"
	vmRWEnterProgram      = "kg_vm_rw_enter"
	vmRWExitProgram       = "kg_vm_rw_exit"
	vmReadvCompatProgram  = "kg_vm_readv_compat_exit"
	vmWritevCompatProgram = "kg_vm_writev_compat_exit"
	vmReadvX32Program     = "kg_vm_readv_x32_exit"
	vmWritevX32Program    = "kg_vm_writev_x32_exit"
)

// vmRWPrograms are the programs of each process_vm_rw end variant; vmRWEnd picks the variant.
var vmRWPrograms = map[string][]string{
	VMRWEndCore:  {vmRWEnterProgram, vmRWExitProgram},
	VMRWEndFexit: {vmReadvEndProgram, vmWritevEndProgram, vmReadvCompatProgram, vmWritevCompatProgram, vmReadvX32Program, vmWritevX32Program},
}

// vmRWEntryPrograms are the programs of the syscall-entry variant that a kernel (or an architecture's
// object) may do without: a kernel without ia32/x32 emulation has no such entry to trace.
var vmRWEntryPrograms = map[string]bool{vmReadvCompatProgram: true, vmWritevCompatProgram: true, vmReadvX32Program: true, vmWritevX32Program: true}

// optionalPrograms maps each program a kernel may lack to the variant chosen when it does.
var optionalPrograms = map[string]func(*Variants){
	dumpGuardProgram:    func(v *Variants) { v.DumpGuard = DumpGuardBlock },
	fileTruncateProgram: func(v *Variants) { v.TruncateGuard = TruncateGuardPath },
	setACLProgram:       func(v *Variants) { v.ACLGuard = ACLGuardXattr },
	removeACLProgram:    func(v *Variants) { v.ACLGuard = ACLGuardXattr },
}

// Variants are the program variants chosen for the running kernel.
type Variants struct {
	// KernfsParent is the kernfs_node field the cgroup walk reads: "__parent" or "parent".
	KernfsParent string `json:"kernfs_parent"`
	// DumpGuard is DumpGuardFentry or DumpGuardBlock.
	DumpGuard string `json:"dump_guard"`
	// ProcOpenGuard is ProcOpenGuardFileOpen or ProcOpenGuardNone.
	ProcOpenGuard string `json:"proc_open_guard"`
	// TruncateGuard is TruncateGuardFile or TruncateGuardPath.
	TruncateGuard string `json:"truncate_guard"`
	// ACLGuard is ACLGuardHooks or ACLGuardXattr.
	ACLGuard string `json:"acl_guard"`
	// VMRWEnd is VMRWEndCore, VMRWEndFexit or VMRWEndNone.
	VMRWEnd string `json:"vm_rw_end"`
	// BPFHookArgs is the number of arguments of the bpf LSM hook (3, or 4 with `kernel`).
	BPFHookArgs int `json:"bpf_hook_args"`
	// Digest is DigestIMA or DigestNone: how executables are hashed at exec.
	Digest string `json:"digest"`
	// FSVerityKfunc is true when the kernel has the bpf_get_fsverity_digest kfunc (reported, unused).
	FSVerityKfunc bool `json:"fsverity_kfunc"`
}

func (v Variants) String() string {
	return fmt.Sprintf("kernfs_node.%s, dump guard %s, proc open guard %s, truncate guard %s, ACL guard %s, process_vm_rw end %s, bpf hook with %d arguments, executable digest %s, fs-verity kfunc %t",
		v.KernfsParent, v.DumpGuard, v.ProcOpenGuard, v.TruncateGuard, v.ACLGuard, v.VMRWEnd, v.BPFHookArgs, v.Digest, v.FSVerityKfunc)
}

// skipped lists the programs the variants leave out.
func (v Variants) skipped() map[string]bool {
	skip := map[string]bool{}
	if v.DumpGuard == DumpGuardBlock {
		skip[dumpGuardProgram] = true
	}
	if v.TruncateGuard == TruncateGuardPath {
		skip[fileTruncateProgram] = true
	}
	if v.ACLGuard == ACLGuardXattr {
		skip[setACLProgram], skip[removeACLProgram] = true, true
	}
	for end, progs := range vmRWPrograms {
		if v.VMRWEnd != end {
			for _, p := range progs {
				skip[p] = true
			}
		}
	}
	return skip
}

// chooseVariants probes the kernel BTF for the variants, and lists what keyguard needs and the kernel
// lacks: attach targets of every program (but the optional ones) and struct fields read without a guard.
func chooseVariants(spec *ebpf.CollectionSpec, kernel *btf.Spec) (Variants, []Missing) {
	return chooseVariantsWith(spec, kernel, func(string) bool { return true })
}

// chooseVariantsWith is chooseVariants where traceable says whether a function with more than six
// arguments can be traced (the running agent asks the kernel: tracingProbe).
func chooseVariantsWith(spec *ebpf.CollectionSpec, kernel *btf.Spec, traceable func(fn string) bool) (Variants, []Missing) {
	v := Variants{KernfsParent: "parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardNone,
		TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: vmRWEnd(spec, kernel, traceable)}
	var taskFromPid *btf.Func
	if kernel.TypeByName(procOpenGuardKfunc, &taskFromPid) == nil {
		v.ProcOpenGuard = ProcOpenGuardFileOpen
	}
	var kn *btf.Struct
	if kernel.TypeByName("kernfs_node", &kn) == nil {
		for _, m := range kn.Members {
			if m.Name == "__parent" {
				v.KernfsParent = "__parent"
			}
		}
	}
	v.Digest, v.FSVerityKfunc = digestVariant(kernel)
	var fn *btf.Func
	if kernel.TypeByName("bpf_lsm_bpf", &fn) == nil {
		if fp, ok := fn.Type.(*btf.FuncProto); ok {
			v.BPFHookArgs = len(fp.Params)
		}
	}
	var missing []Missing
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	vmProgram := map[string]bool{}
	for _, progs := range vmRWPrograms {
		for _, p := range progs {
			vmProgram[p] = true
		}
	}
	for _, name := range names {
		p := spec.Programs[name]
		if vmProgram[name] {
			continue // chosen by vmRWEnd
		}
		if target := attachTarget(p); target != "" && !attachable(kernel, p, target) {
			if choose, ok := optionalPrograms[name]; ok {
				choose(&v)
				continue
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

// digestVariant probes how the kernel can hash an executable at exec: the bpf_ima_file_hash helper (known
// to the kernel's enum bpf_func_id) backed by IMA (the function ima_file_hash, absent without
// CONFIG_IMA). It also says whether the bpf_get_fsverity_digest kfunc is there.
func digestVariant(kernel *btf.Spec) (string, bool) {
	var fv *btf.Func
	fsverity := kernel.TypeByName("bpf_get_fsverity_digest", &fv) == nil
	var ima *btf.Func
	if kernel.TypeByName("ima_file_hash", &ima) != nil {
		return DigestNone, fsverity
	}
	var ids *btf.Enum
	if kernel.TypeByName("bpf_func_id", &ids) != nil {
		return DigestNone, fsverity
	}
	for _, v := range ids.Values {
		if v.Name == "BPF_FUNC_ima_file_hash" {
			return DigestIMA, fsverity
		}
	}
	return DigestNone, fsverity
}

// vmRWEnd is the best process_vm_rw end variant whose programs all attach to this kernel. A function
// with more than six arguments (process_vm_rw has seven) needs a BPF trampoline that passes them, which
// the kernel's BTF does not tell: traceable asks (6.1's x86 trampoline refuses: EOPNOTSUPP at attach).
// traceable also decides functions the BTF lists more than once with one prototype.
func vmRWEnd(spec *ebpf.CollectionSpec, kernel *btf.Spec, traceable func(fn string) bool) string {
	for _, end := range []string{VMRWEndCore, VMRWEndFexit} {
		if vmRWEndTraceable(spec, kernel, end, traceable) {
			return end
		}
	}
	return VMRWEndNone
}

func vmRWEndTraceable(spec *ebpf.CollectionSpec, kernel *btf.Spec, end string, traceable func(fn string) bool) bool {
	for _, name := range vmRWPrograms[end] {
		p := spec.Programs[name]
		if p == nil || funcEntries(kernel, p.AttachTo) == 0 {
			if vmRWEntryPrograms[name] {
				continue // no such entry in this kernel (or architecture): nothing to trace
			}
			return false
		}
		n := funcEntries(kernel, p.AttachTo)
		if n < 0 {
			return false // several functions of that name that differ
		}
		if (n > 1 || funcParams(kernel, p.AttachTo) > 6) && !traceable(p.AttachTo) {
			return false
		}
	}
	return true
}

// absentEntryPrograms are the syscall-entry variant's optional programs whose functions this kernel
// does not have (left out of the load).
func absentEntryPrograms(spec *ebpf.CollectionSpec, kernel *btf.Spec) []string {
	var out []string
	for name := range vmRWEntryPrograms {
		if p := spec.Programs[name]; p != nil && funcEntries(kernel, p.AttachTo) == 0 {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// funcEntries is how many BTF functions named fn the kernel lists: 0 for none, -1 when several
// differ in prototype (then they are different functions).
func funcEntries(kernel *btf.Spec, fn string) int {
	ts, err := kernel.AnyTypesByName(fn)
	if err != nil {
		return 0
	}
	var funcs []*btf.Func
	for _, t := range ts {
		if f, ok := t.(*btf.Func); ok {
			funcs = append(funcs, f)
		}
	}
	for _, f := range funcs[min(1, len(funcs)):] {
		if !sameProto(funcs[0], f) {
			return -1
		}
	}
	return len(funcs)
}

// sameProto reports whether two BTF functions take and return the same types (by kind and name:
// entries of one function from two compilation units do not share type IDs).
func sameProto(a, b *btf.Func) bool {
	pa, ok1 := a.Type.(*btf.FuncProto)
	pb, ok2 := b.Type.(*btf.FuncProto)
	if !ok1 || !ok2 || typeKey(pa.Return) != typeKey(pb.Return) || len(pa.Params) != len(pb.Params) {
		return false
	}
	for i := range pa.Params {
		if typeKey(pa.Params[i].Type) != typeKey(pb.Params[i].Type) {
			return false
		}
	}
	return true
}

// typeKey names a type by its kind and name, through pointers and qualifiers.
func typeKey(t btf.Type) string {
	switch x := t.(type) {
	case nil:
		return "void"
	case *btf.Pointer:
		return "*" + typeKey(x.Target)
	case *btf.Const:
		return "const " + typeKey(x.Type)
	case *btf.Volatile:
		return "volatile " + typeKey(x.Type)
	case *btf.Restrict:
		return "restrict " + typeKey(x.Type)
	}
	return fmt.Sprintf("%T %s", t, t.TypeName())
}

// tracingCache is a kernel BTF cache for loading programs that trace fns: of a function the BTF lists
// more than once with one prototype, all entries but the first are renamed, so the program loads
// against that one (the kernel resolves the attach point by name, and vmRWEnd has made sure
// /proc/kallsyms has a single symbol of it).
func tracingCache(fns []string) (*btf.Cache, error) {
	c := btf.NewCache()
	k, err := c.Kernel()
	if err != nil {
		return nil, fmt.Errorf("read the kernel's BTF: %w (keyguard needs CONFIG_DEBUG_INFO_BTF=y)", err)
	}
	dedupFuncs(k, fns)
	return c, nil
}

// dedupFuncs renames, in k, every BTF entry but the first of each of fns listed more than once with one
// prototype.
func dedupFuncs(k *btf.Spec, fns []string) {
	for _, fn := range fns {
		if funcEntries(k, fn) < 2 {
			continue
		}
		ts, _ := k.AnyTypesByName(fn)
		seen := false
		for _, t := range ts {
			if f, ok := t.(*btf.Func); ok {
				if seen {
					f.Name += ".dup" // AnyTypesByName matches full names: this entry is no longer found
				}
				seen = true
			}
		}
	}
}

// tracingTargets are the functions fentry/fexit programs of spec attach to.
func tracingTargets(spec *ebpf.CollectionSpec) []string {
	var out []string
	for _, p := range spec.Programs {
		if p.Type == ebpf.Tracing && (p.AttachType == ebpf.AttachTraceFEntry || p.AttachType == ebpf.AttachTraceFExit) {
			out = append(out, p.AttachTo)
		}
	}
	sort.Strings(out)
	return out
}

// kallsymsCounts counts the kernel's symbols by name (/proc/kallsyms; empty when unreadable).
func kallsymsCounts() map[string]int {
	counts := map[string]int{}
	b, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		return counts
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			counts[f[2]]++
		}
	}
	return counts
}

// funcParams is the number of parameters of the kernel function fn (0 when unknown).
func funcParams(kernel *btf.Spec, fn string) int {
	var f *btf.Func
	if kernel.TypeByName(fn, &f) != nil {
		return 0
	}
	if fp, ok := f.Type.(*btf.FuncProto); ok {
		return len(fp.Params)
	}
	return 0
}

// tracingProber is the traceable of one variant choice on the running kernel (tracingProbe), reading
// /proc/kallsyms at most once, and only for a function the BTF lists more than once (6.1): under TCG
// the kernel takes seconds to list its symbols.
func tracingProber() func(fn string) bool {
	var counts map[string]int
	return func(fn string) bool {
		return tracingProbe(fn, func(name string) int {
			if counts == nil {
				counts = kallsymsCounts()
			}
			return counts[name]
		})
	}
}

// tracingProbe asks the running kernel whether an fexit program can attach to fn: it loads and attaches
// an empty one and lets it go at once. A function the BTF lists more than once must also be a single
// symbol (symbols: how many /proc/kallsyms lists), else the kernel would attach to whichever it finds first.
func tracingProbe(fn string, symbols func(string) int) bool {
	c := btf.NewCache()
	k, err := c.Kernel()
	if err != nil || funcEntries(k, fn) > 1 && symbols(fn) != 1 {
		return false
	}
	dedupFuncs(k, []string{fn})
	spec := &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"probe": {Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFExit, AttachTo: fn,
		License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}}}}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Cache: c})
	if err != nil {
		return false
	}
	defer coll.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs["probe"]})
	if err != nil {
		return false
	}
	l.Close()
	return true
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

// attachable reports whether the kernel's BTF has p's attach target: any type of that name for LSM
// hooks and raw tracepoints; exactly one function for fentry/fexit, which cannot pick between two BTF
// entries of one name (6.1 lists some syscall functions twice).
func attachable(kernel *btf.Spec, p *ebpf.ProgramSpec, target string) bool {
	ts, err := kernel.AnyTypesByName(target)
	if err != nil || len(ts) == 0 {
		return false
	}
	if p.Type != ebpf.Tracing || p.AttachType == ebpf.AttachTraceRawTp {
		return true
	}
	funcs := 0
	for _, t := range ts {
		if _, ok := t.(*btf.Func); ok {
			funcs++
		}
	}
	return funcs == 1
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
	for name, on := range map[string]bool{"cfg_dump_guard": v.DumpGuard == DumpGuardFentry, "cfg_vm_rw_tracked": v.VMRWEnd != VMRWEndNone,
		"cfg_digest": v.Digest == DigestIMA} {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object has no setting %s", name)
		}
		var val uint32
		if on {
			val = 1
		}
		if err := vs.Set(val); err != nil {
			return err
		}
	}
	return nil
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
	v, missing := chooseVariantsWith(spec, kernel, tracingProber())
	if len(missing) > 0 {
		return v, "", ProbeResult{Kernel: kernelRelease(), Missing: missing}.Err()
	}
	if c.NoDumpGuard {
		v.DumpGuard = DumpGuardBlock
	}
	if err := applyVariants(spec, v); err != nil {
		return v, "", err
	}
	for _, name := range absentEntryPrograms(spec, kernel) {
		delete(spec.Programs, name) // this kernel has no such syscall entry
	}
	if v.DumpGuard != DumpGuardFentry {
		build += "-noguard" // links of the other choice belong to another build
	}
	switch v.VMRWEnd {
	case VMRWEndFexit:
		build += "-vmrwsys"
	case VMRWEndNone:
		build += "-novmrw"
	}
	if v.Digest != DigestIMA {
		build += "-nodigest"
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
	return chooseVariantsWith(spec, kernel, tracingProber())
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
