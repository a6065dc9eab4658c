package loader

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// kernelBTFDup is kernelBTF with a second copy of each named function added.
func kernelBTFDup(t *testing.T, names ...string) *btf.Spec {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var dups []*btf.Func
	spec := kernelBTF(t, func(typ btf.Type) bool {
		if fn, ok := typ.(*btf.Func); ok && want[fn.Name] {
			cp := *fn
			dups = append(dups, &cp)
		}
		return true
	})
	if len(dups) != len(names) {
		t.Fatalf("host BTF has %d of the functions %v", len(dups), names)
	}
	var types []btf.Type
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, typ)
	}
	for _, d := range dups {
		types = append(types, d)
	}
	return rebuild(t, types)
}

// dropFrom is spec without the named functions.
func dropFrom(t *testing.T, spec *btf.Spec, names ...string) *btf.Spec {
	t.Helper()
	var types []btf.Type
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		keep := true
		for _, n := range names {
			keep = keep && dropFunc(n)(typ)
		}
		if keep {
			types = append(types, typ)
		}
	}
	return rebuild(t, types)
}

// Functions listed more than once count as one only when their prototypes agree (funcEntries).
func TestFuncEntries(t *testing.T) {
	long := &btf.Int{Name: "long", Size: 8, Encoding: btf.Signed}
	ptr := &btf.Pointer{Target: long}
	one := &btf.FuncProto{Return: long, Params: []btf.FuncParam{{Name: "regs", Type: ptr}}}
	other := &btf.FuncProto{Return: long, Params: []btf.FuncParam{{Name: "__unused", Type: ptr}}}
	differs := &btf.FuncProto{Return: long, Params: []btf.FuncParam{{Name: "a", Type: long}}}
	spec := rebuild(t, []btf.Type{
		&btf.Func{Name: "single", Type: one}, &btf.Func{Name: "twice", Type: one}, &btf.Func{Name: "twice", Type: other},
		&btf.Func{Name: "clash", Type: one}, &btf.Func{Name: "clash", Type: differs},
	})
	for fn, want := range map[string]int{"single": 1, "twice": 2, "clash": -1, "absent": 0} {
		if got := funcEntries(spec, fn); got != want {
			t.Errorf("funcEntries(%s) = %d, want %d", fn, got, want)
		}
	}
}

func rebuild(t *testing.T, types []btf.Type) *btf.Spec {
	t.Helper()
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

// The hooks that appeared in 6.2 (file_truncate, inode_set_acl/inode_remove_acl) and the ends of
// process_vm_readv/writev: the probe must pick the variant the BTF calls for, leave exactly the programs
// of the other variants out, and set cfg_vm_rw_tracked to match.
func TestOptionalHookVariants(t *testing.T) {
	sys := []string{vmReadvEndProgram, vmWritevEndProgram, vmReadvCompatProgram, vmWritevCompatProgram, vmReadvX32Program, vmWritevX32Program}
	core := []string{vmRWEnterProgram, vmRWExitProgram}
	both := append(append([]string{}, sys...), core...)
	drop := func(names ...string) func(t *testing.T) *btf.Spec {
		return func(t *testing.T) *btf.Spec {
			return kernelBTF(t, func(typ btf.Type) bool {
				for _, n := range names {
					if !dropFunc(n)(typ) {
						return false
					}
				}
				return true
			})
		}
	}
	dup := func(names ...string) func(t *testing.T) *btf.Spec {
		return func(t *testing.T) *btf.Spec { return kernelBTFDup(t, names...) }
	}
	cases := []struct {
		name    string
		kernel  func(t *testing.T) *btf.Spec
		want    Variants
		skipped []string
	}{
		{"host (6.18)", drop(), Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore}, sys},
		{"no file_truncate hook (6.1)", drop("bpf_lsm_file_truncate"),
			Variants{TruncateGuard: TruncateGuardPath, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore}, append([]string{fileTruncateProgram}, sys...)},
		{"no ACL hooks (6.1)", drop("bpf_lsm_inode_set_acl", "bpf_lsm_inode_remove_acl"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardXattr, VMRWEnd: VMRWEndCore}, append([]string{setACLProgram, removeACLProgram}, sys...)},
		{"no inode_remove_acl only", drop("bpf_lsm_inode_remove_acl"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardXattr, VMRWEnd: VMRWEndCore}, append([]string{setACLProgram, removeACLProgram}, sys...)},
		{"syscall functions listed twice (6.1): process_vm_rw", dup("__x64_sys_process_vm_readv", "__x64_sys_process_vm_writev"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore}, sys},
		{"no process_vm_rw: syscall fexit", drop("process_vm_rw"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndFexit}, core},
		{"process_vm_rw listed twice with one prototype: traced by name", dup("process_vm_rw"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore}, sys},
		{"no process_vm_rw, the 6.1 duplicates: syscall fexit", func(t *testing.T) *btf.Spec {
			return dropFrom(t, kernelBTFDup(t, "__x64_sys_process_vm_readv", "__x64_sys_process_vm_writev"), "process_vm_rw")
		}, Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndFexit}, core},
		{"no process_vm_rw, duplicates not traceable (two symbols)", func(t *testing.T) *btf.Spec {
			return dropFrom(t, kernelBTFDup(t, "__x64_sys_process_vm_readv"), "process_vm_rw")
		}, Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndNone}, both},
		{"process_vm_rw not traceable (7 arguments, 6.1's trampoline)", func(t *testing.T) *btf.Spec { return kernelBTF(t, nil) },
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndFexit}, core},
		{"no process_vm_rw, no process_vm_readv function", drop("process_vm_rw", "__x64_sys_process_vm_readv"),
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndNone}, both},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec, err := kgbpf.LoadKeyguard()
			if err != nil {
				t.Fatal(err)
			}
			traceable := func(fn string) bool {
				switch {
				case strings.Contains(c.name, "two symbols"):
					return false
				}
				return !strings.Contains(c.name, "not traceable")
			}
			v, missing := chooseVariantsWith(spec, c.kernel(t), traceable)
			if len(missing) > 0 {
				t.Fatalf("kernel refused: %v", missing)
			}
			if v.TruncateGuard != c.want.TruncateGuard || v.ACLGuard != c.want.ACLGuard || v.VMRWEnd != c.want.VMRWEnd {
				t.Errorf("variants %v, want truncate %s, ACL %s, vm_rw end %s", v, c.want.TruncateGuard, c.want.ACLGuard, c.want.VMRWEnd)
			}
			active := programs(withVariants(spec, v))
			if len(active) != len(spec.Programs)-len(c.skipped) {
				t.Errorf("%d active programs, want %d (%v left out)", len(active), len(spec.Programs)-len(c.skipped), c.skipped)
			}
			for _, n := range active {
				for _, s := range c.skipped {
					if n == s {
						t.Errorf("%s is active with %v", n, v)
					}
				}
			}
			if err := applyVariants(spec, v); err != nil {
				t.Fatal(err)
			}
			var tracked uint32
			if err := spec.Variables["cfg_vm_rw_tracked"].Get(&tracked); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]uint32{true: 1}[v.VMRWEnd != VMRWEndNone]; tracked != want {
				t.Errorf("cfg_vm_rw_tracked %d with vm_rw end %s, want %d", tracked, v.VMRWEnd, want)
			}
		})
	}
}

// The executable digest variant: bpf_ima_file_hash needs the IMA function ima_file_hash in the kernel
// (no CONFIG_IMA: none), and cfg_digest follows it; the fs-verity kfunc is only reported.
func TestDigestVariant(t *testing.T) {
	host := kernelBTF(t, nil)
	var fn *btf.Func
	if host.TypeByName("ima_file_hash", &fn) != nil {
		// The host kernel has no IMA: use the pinned 6.12 kernel's BTF (testvm cache), which has.
		cache := os.Getenv("KEYGUARD_CACHE")
		if cache == "" {
			t.Skip("the host kernel has no IMA (ima_file_hash) and KEYGUARD_CACHE is not set (the testvm cache)")
		}
		host = btfOfVmlinuz(t, filepath.Join(cache, "kernels", "6.12", "vmlinuz"))
	}
	without := func(name string) *btf.Spec {
		var types []btf.Type
		for typ, err := range host.All() {
			if err != nil {
				t.Fatal(err)
			}
			if dropFunc(name)(typ) {
				types = append(types, typ)
			}
		}
		return rebuild(t, types)
	}
	noIMA, noVerity := without("ima_file_hash"), without("bpf_get_fsverity_digest")
	for _, c := range []struct {
		name     string
		kernel   *btf.Spec
		want     string
		fsverity bool
	}{
		{"host", host, DigestIMA, host.TypeByName("bpf_get_fsverity_digest", &fn) == nil},
		{"no IMA", noIMA, DigestNone, host.TypeByName("bpf_get_fsverity_digest", &fn) == nil},
		{"no fs-verity kfunc", noVerity, DigestIMA, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec, err := kgbpf.LoadKeyguard()
			if err != nil {
				t.Fatal(err)
			}
			v, missing := chooseVariantsWith(spec, c.kernel, func(string) bool { return true })
			if len(missing) > 0 {
				t.Fatalf("kernel refused: %v", missing)
			}
			if v.Digest != c.want || v.FSVerityKfunc != c.fsverity {
				t.Errorf("digest %s, fs-verity kfunc %v; want %s, %v", v.Digest, v.FSVerityKfunc, c.want, c.fsverity)
			}
			if err := applyVariants(spec, v); err != nil {
				t.Fatal(err)
			}
			var on uint32
			if err := spec.Variables["cfg_digest"].Get(&on); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]uint32{true: 1}[c.want == DigestIMA]; on != want {
				t.Errorf("cfg_digest %d, want %d", on, want)
			}
		})
	}
}
