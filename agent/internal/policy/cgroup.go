package policy

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupRoot finds the cgroup v2 mount in this process's mount table: /sys/fs/cgroup on unified
// hosts, /sys/fs/cgroup/unified on hybrid ones. It returns an error saying what to do when there is
// none.
func CgroupRoot() (string, error) {
	return cgroupRootFrom("/proc/self/mountinfo")
}

func cgroupRootFrom(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 || qf[0] != "cgroup2" || pf[3] != "/" {
			continue
		}
		found = append(found, unescapeMount(pf[4]))
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: read %s: %w", mountinfo, err)
	}
	if len(found) == 0 {
		return "", errors.New("no cgroup2 filesystem is mounted; cgroup selectors need cgroup v2 (systemd mounts it at /sys/fs/cgroup; or mount -t cgroup2 none /sys/fs/cgroup/unified)")
	}
	for _, pref := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		for _, m := range found {
			if m == pref {
				return m, nil
			}
		}
	}
	return found[0], nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, ok := octal(s[i+1 : i+4]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var v int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}

// CgroupID returns the id of the cgroup v2 directory dir: on cgroup2 (64-bit kernels) the directory's
// inode number, which is kernfs_node->id, what bpf_get_current_cgroup_id and the BPF programs'
// cgroup ancestry walk see.
func CgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("%s is not a cgroup directory", dir)
	}
	return st.Ino, nil
}

func isCgroup2(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
}

func resolveCgroups(p *Policy, root string, w *walker) (map[uint32]CgroupSet, []PendingCgroup, []string) {
	out := map[uint32]CgroupSet{}
	var pending []PendingCgroup
	var warn []string
	checked, ok := false, false
	for i := range p.Rules {
		r := &p.Rules[i]
		for j, sel := range r.Cgroups {
			key := fmt.Sprintf("%s.match.cgroups[%d]", r.Key(), j)
			if !checked {
				checked, ok = true, root != "" && isCgroup2(root)
				if !ok {
					warn = append(warn, fmt.Sprintf("%s: cgroup root %q is not a cgroup2 mount; cgroup selectors stay pending (mount cgroup v2 or give the agent its mount point)", p.Source, root))
				}
			}
			var found map[uint64]string
			if ok {
				found = findCgroup(w, root, sel)
			}
			if len(found) == 0 {
				pending = append(pending, PendingCgroup{RuleID: r.ID, Selector: sel, Key: key})
				continue
			}
			if out[r.ID] == nil {
				out[r.ID] = CgroupSet{}
			}
			for id, rel := range found {
				if _, dup := out[r.ID][id]; !dup {
					out[r.ID][id] = rel
				}
			}
		}
	}
	return out, pending, warn
}

// findCgroup returns the cgroups a selector names now: id → path relative to root. A path selector
// names at most one; a unit name is looked up in the root, in every slice (recursively) and in user
// service managers' trees (user@UID.service), which is where systemd puts units.
func findCgroup(w *walker, root, sel string) map[uint64]string {
	out := map[uint64]string{}
	if strings.HasPrefix(sel, "/") {
		dir := root
		for _, e := range strings.Split(sel[1:], "/") {
			w.noteLookup(dir, e)
			dir = path.Join(dir, e)
			if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
				return out
			}
		}
		if id, err := CgroupID(dir); err == nil {
			out[id] = sel
		}
		return out
	}
	var search func(dir, rel string, depth int)
	search = func(dir, rel string, depth int) {
		if depth > 16 {
			return
		}
		w.noteList(dir)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		names := make([]string, 0, len(ents))
		for _, de := range ents {
			if de.IsDir() {
				names = append(names, de.Name())
			}
		}
		sort.Strings(names)
		for _, name := range names {
			child, childRel := path.Join(dir, name), rel+"/"+name
			switch {
			case name == sel:
				if id, err := CgroupID(child); err == nil {
					out[id] = childRel
				}
			case strings.HasSuffix(name, ".slice"),
				strings.HasPrefix(name, "user@") && strings.HasSuffix(name, ".service"):
				search(child, childRel, depth+1)
			}
		}
	}
	search(root, "", 0)
	return out
}
