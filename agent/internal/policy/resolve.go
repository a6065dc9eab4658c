package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sort"
	"syscall"
)

// FileSet is a set of files: kernel identity → the path it was found at (for messages).
type FileSet map[FileID]string

// CgroupSet is a set of cgroups: cgroup id → path below the cgroup2 mount.
type CgroupSet map[uint64]string

// AccessorID is an allowed accessor in kernel terms: executable file + uid (AnyUID for any).
type AccessorID struct {
	File FileID
	UID  uint32
}

// PendingCgroup is a cgroup selector with no cgroup yet (the unit is not running, the container not
// started). It is not an error: Watcher resolves it the moment the cgroup is created.
type PendingCgroup struct {
	RuleID   uint32
	Selector string
	Key      string // key path in the policy, e.g. rules[0].match.cgroups[1]
}

// Resolved is a policy mapped onto the kernel's names for things at one moment. All maps are keyed
// by rule ID. Warnings say what could not be resolved and why, each starting with the policy
// position it concerns.
type Resolved struct {
	Policy      *Policy
	Executables map[uint32]FileSet
	KeyFiles    map[uint32]FileSet
	Cgroups     map[uint32]CgroupSet
	Accessors   map[uint32][]AccessorID
	Openers     map[uint32][]AccessorID // rule's openers; AnyUID with a zero File for `openers: any`
	RawDisks    RawDisk                 // block devices and loop images below the key files
	PublicKeys  map[uint32][]string     // files matching public_keys, symlinks resolved
	Pending     []PendingCgroup
	Warnings    []string
}

// Resolve resolves every selector of p against the live system. cgroupRoot is the cgroup2 mount
// (see CgroupRoot); it is only used when a rule has cgroup selectors.
func Resolve(p *Policy, cgroupRoot string) *Resolved {
	return resolve(p, cgroupRoot, &walker{})
}

func resolve(p *Policy, cgroupRoot string, w *walker) *Resolved {
	st := newStatter()
	r := &Resolved{Policy: p}
	var warn []string
	r.Executables, warn = resolveExecutables(p, w, st)
	r.Warnings = append(r.Warnings, warn...)
	r.Accessors, warn = resolveAccessors(p, w, st)
	r.Warnings = append(r.Warnings, warn...)
	r.Openers, warn = resolveOpeners(p, w, st)
	r.Warnings = append(r.Warnings, warn...)
	r.KeyFiles, warn = resolveGlobs(p, w, st, func(rl *Rule) []string { return rl.KeyFiles }, "match.key_files")
	r.Warnings = append(r.Warnings, warn...)
	r.RawDisks = rawDisks("/sys", p, r.KeyFiles, st)
	pub, warn := resolveGlobs(p, w, st, func(rl *Rule) []string { return rl.PublicKeys }, "public_keys")
	r.Warnings = append(r.Warnings, warn...)
	r.PublicKeys = map[uint32][]string{}
	for id, set := range pub {
		for _, path := range set {
			r.PublicKeys[id] = append(r.PublicKeys[id], path)
		}
		sort.Strings(r.PublicKeys[id])
	}
	r.Cgroups, r.Pending, warn = resolveCgroups(p, cgroupRoot, w)
	r.Warnings = append(r.Warnings, warn...)
	r.Warnings = append(r.Warnings, r.conflicts()...)
	return r
}

// ResolveExecutables maps each rule's executables to files. A missing or non-executable file is a
// warning (Load has already refused such a policy; at run time it means the file is being replaced).
func ResolveExecutables(p *Policy) (map[uint32]FileSet, []string) {
	return resolveExecutables(p, &walker{}, newStatter())
}

// ResolveAccessors maps each rule's allowed accessors to executable files + uids.
func ResolveAccessors(p *Policy) (map[uint32][]AccessorID, []string) {
	return resolveAccessors(p, &walker{}, newStatter())
}

// ResolveKeyFiles expands each rule's key_files globs to the regular files they match now (symlinks
// resolved to their targets). A glob matching nothing is a warning.
func ResolveKeyFiles(p *Policy) (map[uint32]FileSet, []string) {
	return resolveGlobs(p, &walker{}, newStatter(), func(r *Rule) []string { return r.KeyFiles }, "match.key_files")
}

// ResolveCgroups maps each rule's cgroup selectors to cgroup ids below cgroupRoot, the cgroup2 mount.
// A selector without a cgroup now is returned as pending, not as a warning.
func ResolveCgroups(p *Policy, cgroupRoot string) (map[uint32]CgroupSet, []PendingCgroup, []string) {
	return resolveCgroups(p, cgroupRoot, &walker{})
}

// executable resolves one executable path to its file, following symlinks and noting every directory
// entry the answer depends on.
func executable(w *walker, st *statter, path string) (FileInfo, string, error) {
	real, err := w.realpath(path)
	if err != nil {
		return FileInfo{}, "", err
	}
	fi, err := st.stat(real)
	if err != nil {
		return FileInfo{}, "", err
	}
	switch {
	case fi.Mode.IsDir():
		return fi, real, errIsDir
	case !fi.Mode.IsRegular():
		return fi, real, errNotRegular
	case fi.Mode&0o111 == 0:
		return fi, real, errNotExecutable
	}
	return fi, real, nil
}

var (
	errIsDir         = errors.New("is a directory, not an executable file")
	errNotRegular    = errors.New("is not a regular file (device, FIFO or socket)")
	errNotExecutable = errors.New("is not executable (no x permission bit)")
)

// explain turns a resolution error into advice.
func explain(err error) string {
	var pe *fs.PathError
	switch {
	case errors.Is(err, errIsDir), errors.Is(err, errNotRegular), errors.Is(err, errNotExecutable):
		return err.Error()
	case errors.Is(err, fs.ErrNotExist):
		return "no such file (check the path; every directory on the way and the file itself must exist)"
	case errors.Is(err, syscall.ENOTDIR):
		return "a component of the path is not a directory (check the path)"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied (the agent runs as root; check the permissions of the directories on the way)"
	case errors.Is(err, errTooManyLinks):
		return "too many levels of symbolic links (a symlink loop?)"
	case errors.As(err, &pe):
		return pe.Err.Error()
	}
	return err.Error()
}

func resolveExecutables(p *Policy, w *walker, st *statter) (map[uint32]FileSet, []string) {
	out := map[uint32]FileSet{}
	var warn []string
	for i := range p.Rules {
		r := &p.Rules[i]
		for j, path := range r.Executables {
			fi, _, err := executable(w, st, path)
			if err != nil {
				warn = append(warn, fmt.Sprintf("%s: %q: %s; the rule does not cover it until it is back", p.Where(fmt.Sprintf("%s.match.executables[%d]", r.Key(), j)), path, explain(err)))
				continue
			}
			if out[r.ID] == nil {
				out[r.ID] = FileSet{}
			}
			if _, dup := out[r.ID][fi.ID]; !dup {
				out[r.ID][fi.ID] = path
			}
		}
	}
	return out, warn
}

func resolveAccessors(p *Policy, w *walker, st *statter) (map[uint32][]AccessorID, []string) {
	out := map[uint32][]AccessorID{}
	var warn []string
	add := func(rule uint32, list []Accessor, key func(j int) string) {
		seen := map[AccessorID]bool{}
		for j, a := range list {
			fi, _, err := executable(w, st, a.Executable)
			if err != nil {
				warn = append(warn, fmt.Sprintf("%s: %q: %s; this accessor is not allowed until it is back", p.Where(key(j)), a.Executable, explain(err)))
				continue
			}
			id := AccessorID{File: fi.ID, UID: a.UID}
			if a.AnyUID {
				id.UID = AnyUID
			}
			if !seen[id] {
				seen[id] = true
				out[rule] = append(out[rule], id)
			}
		}
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		add(r.ID, r.Allow, func(j int) string { return fmt.Sprintf("%s.allow[%d].executable", r.Key(), j) })
	}
	add(BPFLoaderRule, p.BPFLoaders, func(j int) string { return fmt.Sprintf("bpf_loaders[%d].executable", j) })
	add(SysctlWriterRule, p.SysctlWriters, func(j int) string { return fmt.Sprintf("sysctl_writers[%d].executable", j) })
	add(KernelMemoryRule, p.KernelMemoryReaders, func(j int) string { return fmt.Sprintf("kernel_memory_readers[%d].executable", j) })
	add(KeyManagerRule, p.KeyManagers, func(j int) string { return fmt.Sprintf("key_managers[%d].executable", j) })
	add(RawDiskRule, p.RawDiskReaders, func(j int) string { return fmt.Sprintf("raw_disk_readers[%d].executable", j) })
	add(PackageMgrRule, p.PackageManagers, func(j int) string { return fmt.Sprintf("package_managers[%d].executable", j) })
	return out, warn
}

func resolveOpeners(p *Policy, w *walker, st *statter) (map[uint32][]AccessorID, []string) {
	out := map[uint32][]AccessorID{}
	var warn []string
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.AnyOpener {
			out[r.ID] = append(out[r.ID], AccessorID{UID: AnyUID})
		}
		for j, a := range r.Openers {
			fi, _, err := executable(w, st, a.Executable)
			if err != nil {
				warn = append(warn, fmt.Sprintf("%s: %q: %s; this opener is refused until it is back", p.Where(fmt.Sprintf("%s.openers[%d].executable", r.Key(), j)), a.Executable, explain(err)))
				continue
			}
			id := AccessorID{File: fi.ID, UID: a.UID}
			if a.AnyUID {
				id.UID = AnyUID
			}
			out[r.ID] = append(out[r.ID], id)
		}
	}
	return out, warn
}

func resolveGlobs(p *Policy, w *walker, st *statter, globs func(*Rule) []string, what string) (map[uint32]FileSet, []string) {
	out := map[uint32]FileSet{}
	var warn []string
	for i := range p.Rules {
		r := &p.Rules[i]
		for j, g := range globs(r) {
			n := 0
			w.expand(g, func(found, real string) {
				fi, err := st.stat(real)
				if err != nil || !fi.Mode.IsRegular() {
					return
				}
				n++
				if out[r.ID] == nil {
					out[r.ID] = FileSet{}
				}
				if _, dup := out[r.ID][fi.ID]; !dup {
					out[r.ID][fi.ID] = found
				}
			})
			if n == 0 {
				warn = append(warn, fmt.Sprintf("%s: %q matches no regular file yet (watching for one)", p.Where(fmt.Sprintf("%s.%s[%d]", r.Key(), what, j)), g))
			}
		}
	}
	return out, warn
}

// conflicts reports files and cgroups claimed by more than one rule. The kernel maps hold one rule per
// file or cgroup; Maps gives it to the rule listed first.
func (r *Resolved) conflicts() []string {
	var out []string
	check := func(what string, sets map[uint32]FileSet) {
		owner := map[FileID]*Rule{}
		for i := range r.Policy.Rules {
			rl := &r.Policy.Rules[i]
			for _, id := range sortedFileIDs(sets[rl.ID]) {
				if first, ok := owner[id]; ok {
					out = append(out, fmt.Sprintf("%s: %s %q (file %s) is also matched by rule %q; it belongs to %q, the rule listed first", r.Policy.Where(rl.Key()), what, sets[rl.ID][id], id, first.Name, first.Name))
					continue
				}
				owner[id] = rl
			}
		}
	}
	check("executable", r.Executables)
	check("key file", r.KeyFiles)
	owner := map[uint64]*Rule{}
	for i := range r.Policy.Rules {
		rl := &r.Policy.Rules[i]
		for _, id := range sortedKeys(r.Cgroups[rl.ID]) {
			if first, ok := owner[id]; ok {
				out = append(out, fmt.Sprintf("%s: cgroup %q is also selected by rule %q; it belongs to %q, the rule listed first", r.Policy.Where(rl.Key()), r.Cgroups[rl.ID][id], first.Name, first.Name))
				continue
			}
			owner[id] = rl
		}
	}
	return out
}

// Maps is a resolution in the shape of the kernel's rule maps (see bpf/src/keyguard.h): rules,
// exe_rules, key_rules, cgroup_rules and allow. A file or cgroup claimed by two rules goes to the rule
// listed first (Resolve warns about it).
type Maps struct {
	Rules   map[uint32]RuleSettings
	Exes    map[FileID]uint32
	Keys    map[FileID]uint32
	Cgroups map[uint64]uint32
	Allow   map[AccessorKey]bool
	Openers map[AccessorKey]bool
	RawDevs map[uint32]uint32
}

// RuleSettings is struct kg_rule.
type RuleSettings struct {
	Mode  uint32
	Dumps uint32
}

// AccessorKey is struct kg_accessor_key.
type AccessorKey struct {
	Dev    uint64
	Ino    uint64
	RuleID uint32
	UID    uint32
}

// Maps flattens r into the kernel's map contents.
func (r *Resolved) Maps() Maps {
	m := Maps{
		Rules:   map[uint32]RuleSettings{},
		Exes:    map[FileID]uint32{},
		Keys:    map[FileID]uint32{},
		Cgroups: map[uint64]uint32{},
		Allow:   map[AccessorKey]bool{},
		Openers: map[AccessorKey]bool{},
		RawDevs: map[uint32]uint32{},
	}
	for _, rl := range r.Policy.Rules {
		m.Rules[rl.ID] = RuleSettings{Mode: uint32(rl.Mode), Dumps: uint32(rl.Dumps)}
		for id := range r.Executables[rl.ID] {
			if _, taken := m.Exes[id]; !taken {
				m.Exes[id] = rl.ID
			}
		}
		for id := range r.KeyFiles[rl.ID] {
			if _, taken := m.Keys[id]; !taken {
				m.Keys[id] = rl.ID
			}
		}
		for id := range r.Cgroups[rl.ID] {
			if _, taken := m.Cgroups[id]; !taken {
				m.Cgroups[id] = rl.ID
			}
		}
		for _, a := range r.Accessors[rl.ID] {
			m.Allow[AccessorKey{Dev: a.File.Dev, Ino: a.File.Ino, RuleID: rl.ID, UID: a.UID}] = true
		}
		for _, a := range r.Openers[rl.ID] {
			m.Openers[AccessorKey{Dev: a.File.Dev, Ino: a.File.Ino, RuleID: rl.ID, UID: a.UID}] = true
		}
	}
	for d, rule := range r.RawDisks.Devs {
		m.RawDevs[d] = rule
	}
	for id := range r.RawDisks.Images {
		if _, taken := m.Keys[id]; !taken {
			m.Keys[id] = RawDiskRule // a loop image: opened only by raw_disk_readers
		}
	}
	for _, id := range []uint32{BPFLoaderRule, SysctlWriterRule, KernelMemoryRule, KeyManagerRule, RawDiskRule, PackageMgrRule} {
		for _, a := range r.Accessors[id] {
			m.Allow[AccessorKey{Dev: a.File.Dev, Ino: a.File.Ino, RuleID: id, UID: a.UID}] = true
		}
	}
	return m
}

// Equal reports whether r and o select the same files, cgroups, accessors and public keys and have
// the same pending cgroups (paths a file was found at and warnings are not compared).
func (r *Resolved) Equal(o *Resolved) bool {
	if r == nil || o == nil {
		return r == o
	}
	sameKeys := func(a, b map[uint32]FileSet) bool {
		return maps.EqualFunc(a, b, func(x, y FileSet) bool {
			return maps.EqualFunc(x, y, func(string, string) bool { return true })
		})
	}
	return r.Policy == o.Policy &&
		sameKeys(r.Executables, o.Executables) &&
		sameKeys(r.KeyFiles, o.KeyFiles) &&
		maps.EqualFunc(r.Cgroups, o.Cgroups, func(x, y CgroupSet) bool {
			return maps.EqualFunc(x, y, func(string, string) bool { return true })
		}) &&
		maps.EqualFunc(r.Accessors, o.Accessors, slices.Equal[[]AccessorID]) &&
		maps.EqualFunc(r.Openers, o.Openers, slices.Equal[[]AccessorID]) &&
		maps.Equal(r.RawDisks.Devs, o.RawDisks.Devs) && maps.Equal(r.RawDisks.Images, o.RawDisks.Images) &&
		maps.EqualFunc(r.PublicKeys, o.PublicKeys, slices.Equal[[]string]) &&
		slices.Equal(r.Pending, o.Pending)
}

func sortedFileIDs(s FileSet) []FileID {
	out := make([]FileID, 0, len(s))
	for id := range s {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Dev != out[j].Dev {
			return out[i].Dev < out[j].Dev
		}
		return out[i].Ino < out[j].Ino
	})
	return out
}

func sortedKeys(s CgroupSet) []uint64 {
	out := make([]uint64, 0, len(s))
	for id := range s {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
