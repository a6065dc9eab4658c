package daemon

import (
	"maps"

	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/policy"
)

// ruleSet turns a resolved policy into the content of the kernel's rule maps, and names its rules.
func ruleSet(res *policy.Resolved) (loader.RuleSet, map[uint32]string) {
	m := res.Maps()
	rs := loader.RuleSet{
		Rules:    make(map[uint32]loader.Rule, len(m.Rules)),
		Exes:     make(map[loader.FileID]uint32, len(m.Exes)),
		Keys:     make(map[loader.FileID]uint32, len(m.Keys)),
		Cgroups:  m.Cgroups,
		Allow:    make(map[loader.AccessorKey]bool, len(m.Allow)),
		Openers:  make(map[loader.AccessorKey]bool, len(m.Openers)),
		RawDevs:  m.RawDevs,
		Digests:  map[loader.DigestKey]uint8{},
		Settings: loader.Settings{SideDoors: uint32(res.Policy.SideDoors), Modules: uint32(res.Policy.Modules)},
	}
	for id, r := range m.Rules {
		rs.Rules[id] = loader.Rule{Mode: r.Mode, Dumps: r.Dumps}
	}
	for f, id := range m.Exes {
		rs.Exes[loader.FileID{Dev: f.Dev, Ino: f.Ino}] = id
	}
	for f, id := range m.Keys {
		rs.Keys[loader.FileID{Dev: f.Dev, Ino: f.Ino}] = id
	}
	for k := range m.Allow {
		rs.Allow[loader.AccessorKey{Dev: k.Dev, Ino: k.Ino, RuleId: k.RuleID, Uid: k.UID}] = true
	}
	for k := range m.Openers {
		rs.Openers[loader.AccessorKey{Dev: k.Dev, Ino: k.Ino, RuleId: k.RuleID, Uid: k.UID}] = true
	}
	names := make(map[uint32]string, len(res.Policy.Rules))
	for _, r := range res.Policy.Rules {
		names[r.ID] = r.Name
		if r.Strict {
			maps.Copy(rs.Digests, loader.StrictDigests(r.ID, r.Digests))
		}
	}
	return rs, names
}
