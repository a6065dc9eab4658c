package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// The fastpath map (bpf/src/keyguard.h, "Fast paths"): byte slots the programs read before any hash
// lookup, so files, executables and cgroups keyguard does not list cost almost nothing. The agent sets
// a file's or cgroup's slot before it adds the entry, and never clears a slot: 0 proves "not listed".
const (
	fastCgroups   = 0 // KG_FAST_CGROUPS: cgroup_rules may hold entries
	fastFirst     = 2 // KG_FAST_FIRST
	fastBits      = 13
	fastSlots     = fastFirst + 1<<fastBits // KG_FAST_SLOTS
	fastCgroupDev = 0xffffffff              // KG_FAST_CGROUP_DEV
	fastMul       = 0x9E3779B97F4A7C15      // KG_FAST_MUL
)

// fastSlot is kg_fast_slot: the filter slot of a file (sb dev, inode) or of a cgroup id (fastCgroupDev).
func fastSlot(dev uint32, id uint64) uint32 {
	return fastFirst + uint32(((uint64(dev)<<32)^id)*fastMul>>(64-fastBits))
}

// setFast sets slots of the fastpath map. Each slot is written alone and only ever to 1, so writers
// (two agents during an upgrade, the programs' own flags) never undo each other.
func setFast(m *ebpf.Map, slots map[uint32]bool) error {
	for s := range slots {
		if err := m.Update(s, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update BPF map %s slot %d: %w", m.String(), s, err)
		}
	}
	return nil
}

func fileSlots[V any](ids map[FileID]V) map[uint32]bool {
	out := make(map[uint32]bool, len(ids))
	for id := range ids {
		out[fastSlot(uint32(id.Dev), id.Ino)] = true
	}
	return out
}

func cgroupSlots[V any](ids map[uint64]V) map[uint32]bool {
	out := make(map[uint32]bool, len(ids)+1)
	for id := range ids {
		out[fastSlot(fastCgroupDev, id)] = true
	}
	if len(ids) > 0 {
		out[fastCgroups] = true
	}
	return out
}

// allowFast opens the fast path's filter for the files and cgroups of rs, before Apply adds them.
func (g *Guard) allowFast(rs RuleSet) error {
	return errors.Join(setFast(g.Maps.Fastpath, fileSlots(rs.Exes)), setFast(g.Maps.Fastpath, fileSlots(rs.Keys)),
		setFast(g.Maps.Fastpath, cgroupSlots(rs.Cgroups)))
}

// rebuildFast sets the filter for every entry already in exe_rules, key_rules, own (trusted
// executables) and cgroup_rules. Load calls it before attaching: a fastpath map new to the pins (an
// upgrade from a build without it) starts empty while the rule maps it summarises do not.
func (g *Guard) rebuildFast() error {
	files := map[FileID]bool{}
	cgroups := map[uint64]bool{}
	var id FileID
	var rule uint32
	for _, m := range []*ebpf.Map{g.Maps.ExeRules, g.Maps.KeyRules} {
		it := m.Iterate()
		for it.Next(&id, &rule) {
			files[id] = true
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("iterate BPF map %s: %w", m.String(), err)
		}
	}
	var own ownKey
	var one uint8
	it := g.Maps.Own.Iterate()
	for it.Next(&own, &one) {
		if own.Kind == uint32(kgbpf.KeyguardKgOwnKindKG_OWN_EXE) {
			files[FileID{Dev: uint64(own.Dev), Ino: own.Id}] = true
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate BPF map %s: %w", g.Maps.Own.String(), err)
	}
	var cg uint64
	it = g.Maps.CgroupRules.Iterate()
	for it.Next(&cg, &rule) {
		cgroups[cg] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate BPF map %s: %w", g.Maps.CgroupRules.String(), err)
	}
	return errors.Join(setFast(g.Maps.Fastpath, fileSlots(files)), setFast(g.Maps.Fastpath, cgroupSlots(cgroups)))
}
