package loader

import (
	"testing"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// The Go copy of the fast path's layout matches the BPF object's map, and every file or cgroup lands in
// a filter slot (never in the two flag slots, never past the end).
func TestFastpathLayout(t *testing.T) {
	spec, err := kgbpf.LoadKeyguard()
	if err != nil {
		t.Fatal(err)
	}
	m := spec.Maps["fastpath"]
	if m == nil || m.MaxEntries != fastSlots || m.ValueSize != 1 || m.KeySize != 4 {
		t.Fatalf("fastpath map spec %+v, want %d one-byte slots by uint32", m, fastSlots)
	}
	seen := map[uint32]bool{}
	for _, c := range []struct {
		dev uint32
		id  uint64
	}{{0, 0}, {1, 1}, {0x800001, 12}, {0x800001, 13}, {fastCgroupDev, 1}, {fastCgroupDev, 1 << 40}, {0xffffffff, ^uint64(0)}} {
		s := fastSlot(c.dev, c.id)
		if s < fastFirst || s >= fastSlots {
			t.Errorf("fastSlot(%#x, %d) = %d, outside [%d, %d)", c.dev, c.id, s, fastFirst, fastSlots)
		}
		seen[s] = true
	}
	if len(seen) < 5 {
		t.Errorf("7 different files and cgroups share %d slots: the hash spreads badly", len(seen))
	}
	if got := cgroupSlots(map[uint64]bool{}); len(got) != 0 {
		t.Errorf("no cgroup rules set slots %v, want none (the cgroup walk stays skipped)", got)
	}
	if got := cgroupSlots(map[uint64]bool{7: true}); !got[fastCgroups] || !got[fastSlot(fastCgroupDev, 7)] {
		t.Errorf("a cgroup rule sets slots %v, want the cgroup flag and its own slot", got)
	}
}
