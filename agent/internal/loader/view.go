package loader

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// Kernel values the agent and the dump handler pass to or read from the maps (bpf2go enums).
const (
	// ReasonScan is the protection reason of a process the agent found running (procfs scan).
	ReasonScan = uint32(kgbpf.KeyguardKgReasonKG_REASON_SCAN)
	// Rule.Dumps values.
	DumpBlock  = uint32(kgbpf.KeyguardKgDumpModeKG_DUMP_MODE_BLOCK)
	DumpRedact = uint32(kgbpf.KeyguardKgDumpModeKG_DUMP_MODE_REDACT)
	DumpAllow  = uint32(kgbpf.KeyguardKgDumpModeKG_DUMP_MODE_ALLOW)
)

// View is a read-only view of keyguard's pinned state for processes other than the agent (the core-dump
// handler, which the kernel starts). It opens only the maps it reads, read-only, by the names the BPF
// object gives them.
type View struct {
	marks, rules, cgroupRules *ebpf.Map
}

// OpenView opens the pinned maps under pinPath read-only.
func OpenView(pinPath string) (*View, error) {
	if pinPath == "" {
		return nil, errors.New("no pin path: is the keyguard agent installed?")
	}
	v := &View{}
	for _, m := range []struct {
		name string
		to   **ebpf.Map
	}{{kgbpf.KeyguardMapMarks, &v.marks}, {kgbpf.KeyguardMapRules, &v.rules}, {kgbpf.KeyguardMapCgroupRules, &v.cgroupRules}} {
		var err error
		if *m.to, err = ebpf.LoadPinnedMap(filepath.Join(pinPath, m.name), &ebpf.LoadPinOptions{ReadOnly: true}); err != nil {
			v.Close()
			return nil, fmt.Errorf("open keyguard's pinned map %s: %w", m.name, err)
		}
	}
	return v, nil
}

// Close releases the maps.
func (v *View) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{v.marks, v.rules, v.cgroupRules} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// MarkOf returns the protection mark of a running process, if any.
func (v *View) MarkOf(pid int) (Mark, bool, error) { return markOf(v.marks, pid) }

// Rule returns the rule with the given id; ok is false for a rule no longer in the policy.
func (v *View) Rule(id uint32) (r Rule, ok bool, err error) {
	switch err := v.rules.Lookup(id, &r); {
	case err == nil:
		return r, true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return Rule{}, false, nil
	default:
		return Rule{}, false, fmt.Errorf("look up rule %#x: %w", id, err)
	}
}

// CgroupRule returns the id of the rule protecting the cgroup with the given id (not its ancestors).
func (v *View) CgroupRule(cgroupID uint64) (id uint32, ok bool, err error) {
	switch err := v.cgroupRules.Lookup(cgroupID, &id); {
	case err == nil:
		return id, true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false, nil
	default:
		return 0, false, fmt.Errorf("look up cgroup %d: %w", cgroupID, err)
	}
}

// markOf reads a process's mark from the task-storage map, through a pidfd as the kernel keys it.
func markOf(marks *ebpf.Map, pid int) (Mark, bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return Mark{}, false, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	var m Mark
	if err := marks.Lookup(uint32(fd), &m); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Mark{}, false, nil
		}
		return Mark{}, false, err
	}
	return m, m.RuleId != 0, nil
}
