package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBPFLoaders(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	good := "version: 1\nbpf_loaders:\n  - executable: " + exe + "\n    uid: 0\nrules:\n  - name: r\n    match:\n      executables: [" + exe + "]\n"
	p, err := Parse("p.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.BPFLoaders) != 1 || p.BPFLoaders[0].Executable != exe || p.BPFLoaders[0].UID != 0 {
		t.Fatalf("BPFLoaders = %+v", p.BPFLoaders)
	}
	res := Resolve(p, "")
	m := res.Maps()
	n := 0
	for k := range m.Allow {
		if k.RuleID == BPFLoaderRule {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("allow entries for the BPF loader pseudo rule: %d, want 1 (%+v)", n, m.Allow)
	}

	d := t.TempDir()
	path := filepath.Join(d, "p.yaml")
	bad := strings.Replace(good, exe+"\n    uid", "/nonexistent/loader\n    uid", 1)
	os.WriteFile(path, []byte(bad), 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "p.yaml:3:") || !strings.Contains(err.Error(), "bpf_loaders[0].executable") {
		t.Fatalf("missing loader executable: %v", err)
	}
	if _, err := Parse("p.yaml", []byte("version: 1\nbpf_loaders:\n  - uid: 0\nrules:\n  - name: r\n    match:\n      executables: [/bin/x]\n")); err == nil || !strings.Contains(err.Error(), "bpf_loaders[0]") {
		t.Fatalf("loader without executable: %v", err)
	}
}

// Each side-door allow list lands in the kernel's allow map under its own pseudo rule id, and a missing
// executable is an error at its line.
func TestSideDoorAllowLists(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		rule uint32
	}{{"bpf_loaders", BPFLoaderRule}, {"sysctl_writers", SysctlWriterRule}, {"kernel_memory_readers", KernelMemoryRule}} {
		t.Run(tc.key, func(t *testing.T) {
			y := "version: 1\n" + tc.key + ":\n  - executable: " + exe + "\n    uid: any\nrules:\n  - name: r\n    match:\n      executables: [/bin/sh]\n"
			p, err := Parse("p.yaml", []byte(y))
			if err != nil {
				t.Fatal(err)
			}
			m := Resolve(p, "").Maps()
			got := map[uint32]int{}
			for k := range m.Allow {
				got[k.RuleID]++
				if k.RuleID == tc.rule && k.UID != AnyUID {
					t.Errorf("uid %d, want any", k.UID)
				}
			}
			if len(got) != 1 || got[tc.rule] != 1 {
				t.Fatalf("allow entries by rule id %v, want one under %#x", got, tc.rule)
			}
			path := filepath.Join(t.TempDir(), "p.yaml")
			os.WriteFile(path, []byte(strings.Replace(y, exe, "/nonexistent/tool", 1)), 0o644)
			if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "p.yaml:3:") || !strings.Contains(err.Error(), tc.key+"[0].executable") {
				t.Fatalf("missing executable: %v", err)
			}
		})
	}
}
