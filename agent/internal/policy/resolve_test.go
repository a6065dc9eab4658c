package policy

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestKernelDev(t *testing.T) {
	cases := []struct {
		major, minor uint32
		want         uint64
	}{
		{8, 1, 8<<20 | 1},
		{254, 0, 0xfe00000},
		{259, 300, 259<<20 | 300}, // minor > 255: glibc splits it, the kernel does not
		{0, 38, 38},               // anonymous devices (tmpfs, cgroup2, overlay)
		{4095, 1<<20 - 1, 4095<<20 | (1<<20 - 1)},
	}
	for _, tc := range cases {
		st := unix.Mkdev(tc.major, tc.minor)
		if got := KernelDev(st); got != tc.want {
			t.Errorf("KernelDev(makedev(%d, %d) = %#x) = %#x, want %#x", tc.major, tc.minor, st, got, tc.want)
		}
	}
}

// mountinfoDev returns major:minor of mount id from /proc/self/mountinfo: what the kernel prints for
// sb->s_dev.
func mountinfoDev(t *testing.T, mntID uint64) (uint32, uint32) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[0] == fmt.Sprint(mntID) {
			var ma, mi uint32
			if _, err := fmt.Sscanf(f[2], "%d:%d", &ma, &mi); err != nil {
				t.Fatal(err)
			}
			return ma, mi
		}
	}
	t.Fatalf("mount %d not in mountinfo", mntID)
	return 0, 0
}

// TestFileIDMatchesMountinfo checks FileID.Dev against the superblock device the kernel reports for
// the file's mount, on the disk file system, a tmpfs and procfs, and through /proc/self/exe.
func TestFileIDMatchesMountinfo(t *testing.T) {
	files := map[string]string{"tempdir": filepath.Join(t.TempDir(), "f")}
	writeFile(t, files["tempdir"], "x", 0o644)
	if shm, err := os.MkdirTemp("/dev/shm", "kgtest"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		files["tmpfs"] = filepath.Join(shm, "f")
		writeFile(t, files["tmpfs"], "x", 0o644)
	}
	files["procfs"] = "/proc/self/status"
	files["exe"] = "/proc/self/exe"
	for name, path := range files {
		t.Run(name, func(t *testing.T) {
			fi, err := Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			var stx unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID|unix.STATX_INO, &stx); err != nil {
				t.Fatal(err)
			}
			ma, mi := mountinfoDev(t, stx.Mnt_id)
			if want := uint64(ma)<<20 | uint64(mi); fi.ID.Dev != want {
				t.Errorf("Dev = %#x, mountinfo says %d:%d = %#x", fi.ID.Dev, ma, mi, want)
			}
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				t.Fatal(err)
			}
			if fi.ID.Ino != st.Ino {
				t.Errorf("Ino = %d, stat says %d", fi.ID.Ino, st.Ino)
			}
			if KernelDev(st.Dev) != fi.ID.Dev {
				t.Errorf("KernelDev(st_dev %#x) = %#x, Stat says %#x", st.Dev, KernelDev(st.Dev), fi.ID.Dev)
			}
			t.Logf("%s: st_dev %#x → kernel dev %#x (%d:%d)", path, st.Dev, fi.ID.Dev, ma, mi)
		})
	}
	exe, _ := os.Executable()
	a, errA := Stat("/proc/self/exe")
	b, errB := Stat(exe)
	if errA != nil || errB != nil || a.ID != b.ID {
		t.Errorf("Stat(/proc/self/exe) = %v %v, Stat(%s) = %v %v", a.ID, errA, exe, b.ID, errB)
	}
}

func mustParse(t *testing.T, y string) *Policy {
	t.Helper()
	p, err := Parse("p.yaml", []byte(y))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, y)
	}
	return p
}

func fileID(t *testing.T, path string) FileID {
	t.Helper()
	fi, err := Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ID
}

func TestResolveExecutables(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin/signer")
	writeExe(t, exe)
	link := filepath.Join(dir, "bin/signer-link")
	if err := os.Link(exe, link); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, "other/signer")
	writeExe(t, cp)
	sym := filepath.Join(dir, "alt/signer")
	os.MkdirAll(filepath.Dir(sym), 0o755)
	if err := os.Symlink("../bin/signer", sym); err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, fmt.Sprintf(head+"  - name: a\n    match: {executables: [%s, %s]}\n  - name: b\n    match: {executables: [%s]}\n    allow: [{executable: %s, uid: 7}, {executable: %s, uid: any}]\n", link, cp, sym, exe, link))
	exes, warn := ResolveExecutables(p)
	if len(warn) != 0 {
		t.Errorf("warnings: %v", warn)
	}
	a, b := exes[RuleID("a")], exes[RuleID("b")]
	if len(a) != 2 || a[fileID(t, exe)] != link || a[fileID(t, cp)] != cp {
		t.Errorf("rule a = %v; want the hard link as the original's file and the copy as its own", a)
	}
	if fileID(t, cp) == fileID(t, exe) {
		t.Fatal("a copy has the same FileID as the original")
	}
	if len(b) != 1 || b[fileID(t, exe)] != sym {
		t.Errorf("rule b = %v; want the symlink resolved to its target %v", b, fileID(t, exe))
	}
	acc, _ := ResolveAccessors(p)
	wantAcc := []AccessorID{{fileID(t, exe), 7}, {fileID(t, exe), AnyUID}}
	if !slices.Equal(acc[RuleID("b")], wantAcc) {
		t.Errorf("accessors = %v, want %v", acc[RuleID("b")], wantAcc)
	}

	// Replaced by a new inode at run time: the new file; removed: a warning naming the position.
	os.Remove(exe)
	writeExe(t, exe)
	exes, _ = ResolveExecutables(p)
	if _, ok := exes[RuleID("b")][fileID(t, exe)]; !ok {
		t.Errorf("after replacement, rule b = %v, want the new inode %v", exes[RuleID("b")], fileID(t, exe))
	}
	os.Remove(cp)
	_, warn = ResolveExecutables(p)
	if len(warn) != 1 || !strings.HasPrefix(warn[0], "p.yaml:4:") || !strings.Contains(warn[0], ": rules[0].match.executables[1]: ") || !strings.Contains(warn[0], "no such file") {
		t.Errorf("warnings = %q", warn)
	}
}

func TestResolveKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := func(rel string) string { return filepath.Join(dir, rel) }
	for _, f := range []string{"keys/a.pem", "keys/b.pem", "keys/c.txt", "keys/sub/d.pem",
		"deep/1/2/3/e.pem", "deep/f.pem", "deep/1/g.key", "outside/target.pem", "lit/[x].pem", "lit/x.pem"} {
		writeFile(t, k(f), f, 0o600)
	}
	os.Mkdir(k("keys/dir.pem"), 0o755)                      // a directory matching *.pem: not a key file
	syscall.Mkfifo(k("keys/fifo.pem"), 0o600)               // not a regular file
	os.Symlink("../outside/target.pem", k("keys/link.pem")) // symlink: its target counts
	os.Symlink("nowhere.pem", k("keys/dangling.pem"))       // dangling: nothing
	os.Symlink("../outside", k("deep/1/outside-link"))      // directory symlink: "**" does not enter it
	if err := os.Link(k("keys/a.pem"), k("keys/hard.pem")); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		glob string
		want []string // files whose FileIDs must be the result
	}{
		{k("keys/*.pem"), []string{"keys/a.pem", "keys/b.pem", "outside/target.pem"}}, // hard.pem is a.pem
		{k("keys/?.pem"), []string{"keys/a.pem", "keys/b.pem"}},
		{k("keys/[ab].pem"), []string{"keys/a.pem", "keys/b.pem"}},
		{k("keys/a.pem"), []string{"keys/a.pem"}},
		{k("keys/link.pem"), []string{"outside/target.pem"}},
		{k("*/sub/*.pem"), []string{"keys/sub/d.pem"}},
		{k("deep/**/*.pem"), []string{"deep/1/2/3/e.pem", "deep/f.pem"}}, // ** matches zero directories too
		{k("deep/**/3/e.pem"), []string{"deep/1/2/3/e.pem"}},
		{k("deep/**/**/*.key"), []string{"deep/1/g.key"}},
		{k("deep/**"), []string{"deep/1/2/3/e.pem", "deep/f.pem", "deep/1/g.key"}},
		{k(`lit/\[x\].pem`), []string{"lit/[x].pem"}},
		{k("lit/[x].pem"), []string{"lit/x.pem"}},
		{k("keys/*.none"), nil},
		{k("absent/*.pem"), nil},
	}
	for _, tc := range cases {
		t.Run(strings.TrimPrefix(tc.glob, dir), func(t *testing.T) {
			p := mustParse(t, fmt.Sprintf(head+"  - name: a\n    match:\n      key_files:\n        - %q\n    openers: any\n", tc.glob))
			got, warn := ResolveKeyFiles(p)
			var gotIDs, wantIDs []string
			for id := range got[RuleID("a")] {
				gotIDs = append(gotIDs, id.String())
			}
			for _, f := range tc.want {
				wantIDs = append(wantIDs, fileID(t, k(f)).String())
			}
			sort.Strings(gotIDs)
			sort.Strings(wantIDs)
			if !slices.Equal(gotIDs, wantIDs) {
				t.Errorf("got %v, want %v (%v)", got[RuleID("a")], tc.want, wantIDs)
			}
			if (len(tc.want) == 0) != (len(warn) == 1) {
				t.Errorf("warnings = %q", warn)
			}
			if len(warn) == 1 && !strings.HasPrefix(warn[0], "p.yaml:6:11: rules[0].match.key_files[0]: ") {
				t.Errorf("warning %q does not name the position", warn[0])
			}
		})
	}
}

func TestResolveConflictsAndMaps(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/keys/a.pem", "a", 0o600)
	writeFile(t, dir+"/keys/b.pem", "b", 0o600)
	writeFile(t, dir+"/pub/a.pub", "p", 0o644)
	exe := dir + "/bin/signer"
	writeExe(t, exe)
	p := mustParse(t, fmt.Sprintf(head+`  - name: first
    mode: audit
    dumps: redact
    match: {key_files: ["%[1]s/keys/a.pem"], executables: [%[2]s]}
    allow: [{executable: %[2]s, uid: 0}]
    public_keys: ["%[1]s/pub/*"]
  - name: second
    openers: any
    match: {key_files: ["%[1]s/keys/*.pem"]}
`, dir, exe))
	res := Resolve(p, "")
	if len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], "p.yaml:9:5: rules[1]: key file ") || !strings.Contains(res.Warnings[0], `also matched by rule "first"; it belongs to "first"`) {
		t.Errorf("warnings = %q", res.Warnings)
	}
	m := res.Maps()
	first, second := RuleID("first"), RuleID("second")
	a, b := fileID(t, dir+"/keys/a.pem"), fileID(t, dir+"/keys/b.pem")
	if m.Keys[a] != first || m.Keys[b] != second || len(m.Keys) != 2 {
		t.Errorf("Keys = %v", m.Keys)
	}
	if m.Exes[fileID(t, exe)] != first || len(m.Exes) != 1 {
		t.Errorf("Exes = %v", m.Exes)
	}
	if m.Rules[first] != (RuleSettings{Mode: 1, Dumps: 1}) || m.Rules[second] != (RuleSettings{Mode: 0, Dumps: 0}) {
		t.Errorf("Rules = %v", m.Rules)
	}
	e := fileID(t, exe)
	if !m.Allow[AccessorKey{Dev: e.Dev, Ino: e.Ino, RuleID: first, UID: 0}] || len(m.Allow) != 1 {
		t.Errorf("Allow = %v", m.Allow)
	}
	if !slices.Equal(res.PublicKeys[first], []string{dir + "/pub/a.pub"}) {
		t.Errorf("PublicKeys = %v", res.PublicKeys)
	}
	if !res.Equal(Resolve(p, "")) {
		t.Error("two resolutions of an unchanged system differ")
	}
}

// cgroupRoot returns the cgroup2 mount, or skips the test saying why.
func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := CgroupRoot()
	if err != nil {
		t.Skipf("cgroup2 not mounted: %v", err)
	}
	if os.Getuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	return root
}

// mkCgroup creates root/rel (and parents) and removes them at the end of the test.
func mkCgroup(t *testing.T, root, rel string) string {
	t.Helper()
	dir := filepath.Join(root, rel)
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	for i := range parts {
		d := filepath.Join(root, filepath.Join(parts[:i+1]...))
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			t.Fatalf("create test cgroup: %v", err)
		}
		t.Cleanup(func() { os.Remove(d) }) // cleanups run last-first: children before parents
	}
	return dir
}

// handleCgroupID is the cgroup id as name_to_handle_at reports it (the kernfs node id), an independent
// check of CgroupID.
func handleCgroupID(t *testing.T, dir string) uint64 {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at %s: %v", dir, err)
	}
	return binary.LittleEndian.Uint64(h.Bytes())
}

func TestResolveCgroups(t *testing.T) {
	root := cgroupRoot(t)
	tag := fmt.Sprintf("kgtest%d", os.Getpid())
	unitDir := mkCgroup(t, root, tag+".slice/"+tag+"-inner.slice/"+tag+"-app.service")
	pathDir := mkCgroup(t, root, tag+"-by-path/leaf")
	mkCgroup(t, root, tag+"-nested/"+tag+"-hidden.service") // not in a slice: a unit name does not find it
	p := mustParse(t, fmt.Sprintf(head+`  - name: c
    match:
      cgroups:
        - %[1]s-app.service
        - /%[1]s-by-path/leaf
        - %[1]s-absent.service
        - /%[1]s-by-path/absent
        - %[1]s-hidden.service
`, tag))
	sets, pending, warn := ResolveCgroups(p, root)
	if len(warn) != 0 {
		t.Errorf("warnings: %v", warn)
	}
	unitID, err := CgroupID(unitDir)
	if err != nil {
		t.Fatal(err)
	}
	pathID, _ := CgroupID(pathDir)
	if h := handleCgroupID(t, unitDir); h != unitID {
		t.Errorf("CgroupID = %d, name_to_handle_at = %d", unitID, h)
	}
	want := CgroupSet{
		unitID: "/" + tag + ".slice/" + tag + "-inner.slice/" + tag + "-app.service",
		pathID: "/" + tag + "-by-path/leaf",
	}
	if got := sets[RuleID("c")]; len(got) != 2 || got[unitID] != want[unitID] || got[pathID] != want[pathID] {
		t.Errorf("cgroups = %v, want %v", got, want)
	}
	var pend []string
	for _, pc := range pending {
		pend = append(pend, pc.Key+"="+pc.Selector)
	}
	wantPend := []string{
		"rules[0].match.cgroups[2]=" + tag + "-absent.service",
		"rules[0].match.cgroups[3]=/" + tag + "-by-path/absent",
		"rules[0].match.cgroups[4]=" + tag + "-hidden.service",
	}
	if !slices.Equal(pend, wantPend) {
		t.Errorf("pending = %v, want %v", pend, wantPend)
	}

	// Recreated (a unit restart): a new id.
	if err := os.Remove(unitDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sets, _, _ = ResolveCgroups(p, root)
	newID, _ := CgroupID(unitDir)
	if newID == unitID {
		t.Errorf("recreated cgroup kept id %d", newID)
	}
	if _, ok := sets[RuleID("c")][newID]; !ok || len(sets[RuleID("c")]) != 2 {
		t.Errorf("after recreation cgroups = %v, want the new id %d", sets[RuleID("c")], newID)
	}

	// A root that is not cgroup2: everything pending, and a warning.
	_, pending, warn = ResolveCgroups(p, t.TempDir())
	if len(pending) != 5 || len(warn) != 1 || !strings.Contains(warn[0], "is not a cgroup2 mount") {
		t.Errorf("non-cgroup2 root: pending %v, warnings %v", pending, warn)
	}
}

func TestCgroupRootFromMountinfo(t *testing.T) {
	cases := []struct{ name, mountinfo, want, errPart string }{
		{"unified", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup", ""},
		{"hybrid", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", ""},
		{"prefers the standard place", "50 1 0:38 / /run/my\\040cg rw - cgroup2 cgroup2 rw\n51 1 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup", ""},
		{"other place, escaped", "50 1 0:38 / /run/my\\040cg rw - cgroup2 cgroup2 rw\n", "/run/my cg", ""},
		{"bind mount of a subtree is not the root", "50 1 0:38 /sub /mnt rw - cgroup2 cgroup2 rw\n", "", "no cgroup2 filesystem is mounted"},
		{"v1 only", "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "", "no cgroup2 filesystem is mounted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "mountinfo")
			writeFile(t, f, tc.mountinfo, 0o644)
			got, err := cgroupRootFrom(f)
			if got != tc.want || (err == nil) != (tc.errPart == "") || err != nil && !strings.Contains(err.Error(), tc.errPart) {
				t.Errorf("got %q, %v; want %q, error containing %q", got, err, tc.want, tc.errPart)
			}
		})
	}
	if root, err := CgroupRoot(); err == nil && !isCgroup2(root) {
		t.Errorf("CgroupRoot() = %s, which is not cgroup2", root)
	}
}
