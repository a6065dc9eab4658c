package policy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// watchFor starts a watcher on p and returns its callbacks as a channel.
func watchFor(t testing.TB, p *Policy, opts WatchOptions) (*Watcher, <-chan *Resolved) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	w, err := NewWatcher(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan *Resolved, 1000)
	done := make(chan error, 1)
	prev := w.Resolved()
	go func() {
		done <- w.Run(ctx, func(r *Resolved) {
			if r.Equal(prev) {
				t.Errorf("callback with a resolution equal to the previous one")
			}
			prev = r
			ch <- r
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w, ch
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// waitFor returns the first resolution from ch satisfying ok, failing after a generous timeout (the
// watcher reacts in milliseconds; the timeout only guards against a hang on a loaded CI machine).
func waitFor(t *testing.T, ch <-chan *Resolved, what string, ok func(*Resolved) bool) *Resolved {
	t.Helper()
	start := time.Now()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case r := <-ch:
			if ok(r) {
				t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Microsecond))
				return r
			}
		case <-timeout:
			t.Fatalf("watcher did not report: %s", what)
		}
	}
}

// replaceFile writes a new file next to path and renames it over path, as package managers and
// secret rotators do: the path then names a new inode.
func replaceFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content, mode)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatchKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := mustParse(t, fmt.Sprintf(head+"  - name: k\n    openers: any\n    match:\n      key_files: [\"%s/keys/**/*.pem\"]\n", dir))
	w, ch := watchFor(t, p, WatchOptions{})
	id := RuleID("k")
	if n := len(w.Resolved().KeyFiles[id]); n != 0 {
		t.Fatalf("initially %d key files", n)
	}

	// A key file appears two directories below a directory that did not exist when watching began.
	newKey := filepath.Join(dir, "keys/a/b/new.pem")
	writeFile(t, newKey, "k1", 0o600)
	first := fileID(t, newKey)
	waitFor(t, ch, "new key file in new directories", func(r *Resolved) bool {
		_, ok := r.KeyFiles[id][first]
		return ok
	})

	// Replaced by a new inode (rename over it).
	replaceFile(t, newKey, "k2", 0o600)
	second := fileID(t, newKey)
	if second == first {
		t.Fatal("rename did not give a new inode")
	}
	waitFor(t, ch, "replaced key file", func(r *Resolved) bool {
		_, hasNew := r.KeyFiles[id][second]
		_, hasOld := r.KeyFiles[id][first]
		return hasNew && !hasOld && len(r.KeyFiles[id]) == 1
	})

	// A file that does not match changes nothing; the next matching one is seen.
	writeFile(t, filepath.Join(dir, "keys/a/notes.txt"), "x", 0o600)
	other := filepath.Join(dir, "keys/other.pem")
	writeFile(t, other, "k3", 0o600)
	otherID := fileID(t, other)
	r := waitFor(t, ch, "second key file at depth 0", func(r *Resolved) bool {
		_, ok := r.KeyFiles[id][otherID]
		return ok
	})
	if len(r.KeyFiles[id]) != 2 {
		t.Errorf("key files = %v, want 2", r.KeyFiles[id])
	}

	// The whole tree removed and recreated.
	if err := os.RemoveAll(filepath.Join(dir, "keys")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "key tree removed", func(r *Resolved) bool { return len(r.KeyFiles[id]) == 0 })
	writeFile(t, newKey, "k4", 0o600)
	third := fileID(t, newKey)
	waitFor(t, ch, "key tree recreated", func(r *Resolved) bool {
		_, ok := r.KeyFiles[id][third]
		return ok
	})
}

// TestWatchSymlinkedKeyFile follows the Kubernetes secret layout: key.pem → ..data/key.pem, ..data →
// a timestamped directory, rotated by renaming a new ..data symlink over the old one.
func TestWatchSymlinkedKeyFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/secret/..2024_1/key.pem", "v1", 0o600)
	os.Symlink("..2024_1", dir+"/secret/..data")
	os.Symlink("..data/key.pem", dir+"/secret/key.pem")
	p := mustParse(t, fmt.Sprintf(head+"  - name: k\n    openers: any\n    match:\n      key_files: [\"%s/secret/*.pem\"]\n", dir))
	w, ch := watchFor(t, p, WatchOptions{})
	id := RuleID("k")
	v1 := fileID(t, dir+"/secret/..2024_1/key.pem")
	if _, ok := w.Resolved().KeyFiles[id][v1]; !ok {
		t.Fatalf("initial key files = %v, want the symlink target %v", w.Resolved().KeyFiles[id], v1)
	}
	writeFile(t, dir+"/secret/..2024_2/key.pem", "v2", 0o600)
	os.Symlink("..2024_2", dir+"/secret/..data_tmp")
	if err := os.Rename(dir+"/secret/..data_tmp", dir+"/secret/..data"); err != nil {
		t.Fatal(err)
	}
	v2 := fileID(t, dir+"/secret/..2024_2/key.pem")
	waitFor(t, ch, "rotated secret", func(r *Resolved) bool {
		_, ok := r.KeyFiles[id][v2]
		return ok && len(r.KeyFiles[id]) == 1
	})
}

func TestWatchExecutableReplaced(t *testing.T) {
	dir := t.TempDir()
	exe := dir + "/usr/bin/signer"
	writeExe(t, exe)
	os.MkdirAll(dir+"/alt", 0o755)
	writeExe(t, dir+"/opt/v1/tool")
	writeExe(t, dir+"/opt/v2/tool")
	os.Symlink("../opt/v1/tool", dir+"/alt/tool")
	p := mustParse(t, fmt.Sprintf(head+"  - name: x\n    match:\n      executables: [%s, %s/alt/tool]\n    allow: [{executable: %s/alt/tool, uid: 0}]\n", exe, dir, dir))
	w, ch := watchFor(t, p, WatchOptions{})
	id := RuleID("x")
	old := fileID(t, exe)
	if _, ok := w.Resolved().Executables[id][old]; !ok {
		t.Fatalf("initial executables = %v", w.Resolved().Executables[id])
	}

	// A package upgrade: dpkg writes signer.dpkg-new and renames it over signer.
	tmp := exe + ".dpkg-new"
	writeExe(t, tmp)
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	upgraded := fileID(t, exe)
	waitFor(t, ch, "upgraded executable", func(r *Resolved) bool {
		_, hasNew := r.Executables[id][upgraded]
		_, hasOld := r.Executables[id][old]
		return hasNew && !hasOld
	})

	// The alternatives symlink switched to another version: executable and accessor follow.
	os.Symlink("../opt/v2/tool", dir+"/alt/tool.new")
	if err := os.Rename(dir+"/alt/tool.new", dir+"/alt/tool"); err != nil {
		t.Fatal(err)
	}
	v2 := fileID(t, dir+"/opt/v2/tool")
	waitFor(t, ch, "switched symlink", func(r *Resolved) bool {
		_, ok := r.Executables[id][v2]
		acc := r.Accessors[id]
		return ok && len(acc) == 1 && acc[0].File == v2
	})

	// The target of the symlink replaced in its own directory.
	replaceFile(t, dir+"/opt/v2/tool", "#!/bin/sh\n", 0o755)
	v2b := fileID(t, dir+"/opt/v2/tool")
	waitFor(t, ch, "symlink target replaced", func(r *Resolved) bool {
		_, ok := r.Executables[id][v2b]
		return ok
	})
}

func TestWatchCgroups(t *testing.T) {
	root := cgroupRoot(t)
	tag := fmt.Sprintf("kgwatch%d", os.Getpid())
	p := mustParse(t, fmt.Sprintf(head+"  - name: c\n    match:\n      cgroups: [%[1]s-app.service, /%[1]s-ctr/pod/c1]\n", tag))
	w, ch := watchFor(t, p, WatchOptions{CgroupRoot: root})
	id := RuleID("c")
	if len(w.Resolved().Pending) != 2 {
		t.Fatalf("pending = %v, want both selectors", w.Resolved().Pending)
	}

	// The unit starts: systemd creates its slice and its cgroup.
	unit := mkCgroup(t, root, tag+".slice/"+tag+"-app.service")
	id1, _ := CgroupID(unit)
	waitFor(t, ch, "unit cgroup created", func(r *Resolved) bool {
		_, ok := r.Cgroups[id][id1]
		return ok && len(r.Pending) == 1
	})

	// The unit restarts: the cgroup is removed and created again with a new id.
	if err := os.Remove(unit); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(unit, 0o755); err != nil {
		t.Fatal(err)
	}
	id2, _ := CgroupID(unit)
	if id2 == id1 {
		t.Fatal("recreated cgroup has the same id")
	}
	waitFor(t, ch, "unit cgroup recreated", func(r *Resolved) bool {
		_, ok := r.Cgroups[id][id2]
		_, stale := r.Cgroups[id][id1]
		return ok && !stale
	})

	// A container's cgroup path, created level by level.
	ctr := mkCgroup(t, root, tag+"-ctr/pod/c1")
	cid, _ := CgroupID(ctr)
	waitFor(t, ch, "container cgroup path created", func(r *Resolved) bool {
		_, ok := r.Cgroups[id][cid]
		return ok && len(r.Pending) == 0
	})

	// The unit stops: pending again.
	if err := os.Remove(unit); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "unit cgroup removed", func(r *Resolved) bool {
		_, ok := r.Cgroups[id][id2]
		return !ok && len(r.Pending) == 1
	})
}

// BenchmarkWatchLatency measures the time from renaming a new key file into place to the watcher's
// callback (default 1ms debounce included).
func BenchmarkWatchLatency(b *testing.B) {
	dir := b.TempDir()
	key := dir + "/keys/k.pem"
	os.MkdirAll(dir+"/keys", 0o755)
	os.WriteFile(key, []byte("k"), 0o600)
	p, err := Parse("p.yaml", []byte(fmt.Sprintf(head+"  - name: k\n    match:\n      key_files: [\"%s/keys/*.pem\"]\n", dir)))
	if err != nil {
		b.Fatal(err)
	}
	_, ch := watchFor(b, p, WatchOptions{})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.WriteFile(key+".tmp", []byte("k"), 0o600)
		os.Rename(key+".tmp", key)
		fi, _ := Stat(key)
		for r := range ch {
			if _, ok := r.KeyFiles[RuleID("k")][fi.ID]; ok {
				break
			}
		}
	}
}

func BenchmarkResolve(b *testing.B) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		b.Fatal(err)
	}
	p, err := Parse("example.yaml", data)
	if err != nil {
		b.Fatal(err)
	}
	root, _ := CgroupRoot()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Resolve(p, root)
	}
}
