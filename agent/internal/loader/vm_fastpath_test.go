package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	kgbpf "github.com/keyguard/keyguard/bpf"
	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// The fast paths skip every lookup whose filter slot is 0, so the running agent's filter must cover
// every listed executable, key file, trusted executable and cgroup, and nobody but keyguard may write
// it (a cleared slot would switch a key file's guard off).
func TestFastpathCoversRules(t *testing.T) {
	vmenv.Require(t)
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(guesttest.PinPath+"/"+name, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open %s read-only: %v", name, err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	fast := open("fastpath")
	set := func(slot uint32) bool {
		var v uint8
		if err := fast.Lookup(slot, &v); err != nil {
			t.Fatalf("fastpath slot %d: %v", slot, err)
		}
		return v == 1
	}
	var id FileID
	var rule uint32
	n := 0
	for _, name := range []string{"exe_rules", "key_rules"} {
		it := open(name).Iterate()
		for it.Next(&id, &rule) {
			n++
			if !set(fastSlot(uint32(id.Dev), id.Ino)) {
				t.Errorf("%s entry %+v (rule %d): its fastpath slot is 0, the programs would skip it", name, id, rule)
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	var own ownKey
	var one uint8
	it := open("own").Iterate()
	for it.Next(&own, &one) {
		if own.Kind == uint32(kgbpf.KeyguardKgOwnKindKG_OWN_EXE) {
			n++
			if !set(fastSlot(own.Dev, own.Id)) {
				t.Errorf("trusted executable %+v: its fastpath slot is 0", own)
			}
		}
	}
	var cg uint64
	cgroups := 0
	it = open("cgroup_rules").Iterate()
	for it.Next(&cg, &rule) {
		cgroups++
		if !set(fastSlot(fastCgroupDev, cg)) {
			t.Errorf("cgroup %d (rule %d): its fastpath slot is 0", cg, rule)
		}
	}
	if cgroups > 0 && !set(fastCgroups) {
		t.Errorf("%d cgroup rules but the cgroup flag is 0: the cgroup walk would be skipped", cgroups)
	}
	if n < 3 {
		t.Fatalf("only %d listed files and trusted executables: the test policy should list more", n)
	}
	if _, err := ebpf.LoadPinnedMap(guesttest.PinPath+"/fastpath", nil); err == nil {
		t.Errorf("root (not keyguard) opened the fastpath map for writing")
	}
	t.Logf("%d files and %d cgroups covered", n, cgroups)
}
