package loader

import (
	"bytes"
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

// The hooks that appeared in 6.2 (file_truncate, inode_set_acl/inode_remove_acl) and the fexit ends of
// process_vm_readv/writev: the probe must pick the variant the BTF calls for, leave exactly the programs
// of the missing hooks out, and set cfg_vm_rw_tracked to match.
func TestOptionalHookVariants(t *testing.T) {
	full := Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndFexit}
	cases := []struct {
		name    string
		kernel  func(t *testing.T) *btf.Spec
		want    Variants
		skipped []string
	}{
		{"host (6.18)", func(t *testing.T) *btf.Spec { return kernelBTF(t, nil) }, full, nil},
		{"no file_truncate hook (6.1)", func(t *testing.T) *btf.Spec { return kernelBTF(t, dropFunc("bpf_lsm_file_truncate")) },
			Variants{TruncateGuard: TruncateGuardPath, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndFexit}, []string{fileTruncateProgram}},
		{"no ACL hooks (6.1)", func(t *testing.T) *btf.Spec {
			return kernelBTF(t, func(typ btf.Type) bool {
				return dropFunc("bpf_lsm_inode_set_acl")(typ) && dropFunc("bpf_lsm_inode_remove_acl")(typ)
			})
		}, Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardXattr, VMRWEnd: VMRWEndFexit}, []string{setACLProgram, removeACLProgram}},
		{"no inode_remove_acl only", func(t *testing.T) *btf.Spec { return kernelBTF(t, dropFunc("bpf_lsm_inode_remove_acl")) },
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardXattr, VMRWEnd: VMRWEndFexit}, []string{setACLProgram, removeACLProgram}},
		{"process_vm_readv/writev listed twice (6.1)", func(t *testing.T) *btf.Spec {
			return kernelBTFDup(t, "__x64_sys_process_vm_readv", "__x64_sys_process_vm_writev")
		}, Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndNone}, []string{vmReadvEndProgram, vmWritevEndProgram}},
		{"process_vm_writev listed twice", func(t *testing.T) *btf.Spec { return kernelBTFDup(t, "__x64_sys_process_vm_writev") },
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndNone}, []string{vmReadvEndProgram, vmWritevEndProgram}},
		{"no process_vm_readv function", func(t *testing.T) *btf.Spec { return kernelBTF(t, dropFunc("__x64_sys_process_vm_readv")) },
			Variants{TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndNone}, []string{vmReadvEndProgram, vmWritevEndProgram}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec, err := kgbpf.LoadKeyguard()
			if err != nil {
				t.Fatal(err)
			}
			v, missing := chooseVariants(spec, c.kernel(t))
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
			if want := map[bool]uint32{true: 1}[v.VMRWEnd == VMRWEndFexit]; tracked != want {
				t.Errorf("cfg_vm_rw_tracked %d with vm_rw end %s, want %d", tracked, v.VMRWEnd, want)
			}
		})
	}
}
