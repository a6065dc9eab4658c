package sentinel

import (
	"context"
	"crypto"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// sink collects submitted events; refuse makes the first refuse submissions fail.
type sink struct {
	mu     sync.Mutex
	events []*keyguardv1.KeyMaterialFound
	refuse atomic.Int64
	calls  atomic.Int64
}

func (k *sink) submit(ev *keyguardv1.Event) bool {
	k.calls.Add(1)
	if k.refuse.Add(-1) >= 0 {
		return false
	}
	k.mu.Lock()
	k.events = append(k.events, ev.GetKeyMaterialFound())
	k.mu.Unlock()
	return true
}

func (k *sink) byFile() map[string]*keyguardv1.KeyMaterialFound {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]*keyguardv1.KeyMaterialFound{}
	for _, e := range k.events {
		out[filepath.Base(e.GetPath())] = e
	}
	return out
}

func (k *sink) wait(t *testing.T, n int) map[string]*keyguardv1.KeyMaterialFound {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := k.byFile(); len(m) >= n {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("got events for %d files, want %d: %v", len(k.byFile()), n, k.byFile())
	return nil
}

func fpDetector(t *testing.T) (*detect.Detector, map[string]string) {
	t.Helper()
	k := keytest.Generate()
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]crypto.PrivateKey{"signer-rsa": k.RSA, "signer-p256": k.P256, "signer-ed": k.Ed} {
		if err := f.AddKey(name, p); err != nil {
			t.Fatal(err)
		}
	}
	set := f.Set()
	d, err := detect.New(detect.Options{Modes: detect.ModeFormats, Fingerprints: set})
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := set.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	fps := map[string]string{}
	for _, p := range pubs {
		fps[p.Name] = p.Fingerprint
	}
	return d, fps
}

// dump returns 512 KiB of random bytes with secret at off.
func dump(off int, secret []byte) []byte {
	b := make([]byte, 512<<10)
	rand.Read(b)
	copy(b[off:], secret)
	return b
}

func compressWith(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	b, err := keytest.Compress(kind, data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func start(t *testing.T, cfg Config) (*Sentinel, func()) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return s, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// TestSentinel: files written into a watched directory (plain and compressed with real zstd, lz4,
// xz and gzip writers, a file renamed in as systemd-coredump does, one in a subdirectory created
// after start) holding only raw key material are reported within seconds, with the right offset,
// encoding and key, and quarantined; a clean file is left alone.
func TestSentinel(t *testing.T) {
	k := keytest.Generate()
	det, fps := fpDetector(t)
	root := t.TempDir()
	watched := filepath.Join(root, "coredump")
	quar := filepath.Join(root, "quarantine")
	if err := os.Mkdir(watched, 0o755); err != nil {
		t.Fatal(err)
	}
	var snk sink
	s, stop := start(t, Config{Dirs: []string{watched}, Detector: det, KeyFingerprints: fps, Submit: snk.submit,
		StateFile: filepath.Join(root, "state.json"), QuarantineDir: quar, Rescan: time.Hour})
	defer stop()
	time.Sleep(100 * time.Millisecond) // the initial walk has added the watches
	seed := k.Ed.Seed()
	prime := k.RSA.Primes[0].FillBytes(make([]byte, 128))
	scalar := k.P256.D.FillBytes(make([]byte, 32))
	want := map[string]struct {
		enc, key, comp string
		off            uint64
	}{
		"core.plain":   {"ed25519-seed", "signer-ed", "", 4096},
		"core.zst":     {"rsa-prime-be", "signer-rsa", "zstd", 8192},
		"core.lz4":     {"ec-scalar-be", "signer-p256", "lz4", 16384},
		"core.xz":      {"ed25519-seed", "signer-ed", "xz", 65536},
		"core.gz":      {"rsa-prime-be", "signer-rsa", "gzip", 256},
		"core.renamed": {"ec-scalar-be", "signer-p256", "", 1024},
		"core.subdir":  {"ed25519-seed", "signer-ed", "", 2048},
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(watched, "core.plain"), dump(4096, seed))
	write(filepath.Join(watched, "core.zst"), compressWith(t, "zstd", dump(8192, prime)))
	write(filepath.Join(watched, "core.lz4"), compressWith(t, "lz4", dump(16384, scalar)))
	write(filepath.Join(watched, "core.xz"), compressWith(t, "xz", dump(65536, seed)))
	write(filepath.Join(watched, "core.gz"), compressWith(t, "gzip", dump(256, prime)))
	write(filepath.Join(watched, "clean"), dump(0, nil))
	// A symbolic link moved in (to a file with key material outside): not followed, not an error.
	outside := filepath.Join(root, "outside")
	write(outside, dump(0, seed))
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "link"), filepath.Join(watched, "core.link")); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(watched, ".#core.renamed.tmp")
	write(tmp, dump(1024, scalar))
	if err := os.Rename(tmp, filepath.Join(watched, "core.renamed")); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(watched, "host2")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	write(filepath.Join(sub, "core.subdir"), dump(2048, seed))

	got := snk.wait(t, len(want))
	for name, w := range want {
		e := got[name]
		if e == nil {
			t.Errorf("%s: no event", name)
			continue
		}
		if e.GetEncoding() != w.enc || e.GetKey() != w.key || e.GetCompression() != w.comp || e.GetOffset() != w.off || e.GetKeyFingerprint() != fps[w.key] || e.GetFileFindings() != 1 {
			t.Errorf("%s: event %v, want %+v", name, e, w)
		}
		if q := e.GetQuarantinePath(); filepath.Dir(q) != quar {
			t.Errorf("%s: quarantine path %q", name, q)
		} else if fi, err := os.Stat(q); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: quarantined file: %v, %v", name, fi, err)
		}
		if _, err := os.Stat(filepath.Join(watched, name)); err == nil {
			t.Errorf("%s is still in the watched directory", name)
		}
	}
	if _, err := os.Stat(filepath.Join(watched, "clean")); err != nil {
		t.Errorf("clean file: %v", err)
	}
	if st := s.Stats(); st.Findings != uint64(len(want)) || st.Quarantined != uint64(len(want)) || st.Errors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestSentinelRestart: after a restart with the same state file, files already scanned are not
// scanned again, and a file that arrived while the sentinel was down is found by the first walk;
// without inotify the walk alone finds settled files.
func TestSentinelRestart(t *testing.T) {
	k := keytest.Generate()
	det, fps := fpDetector(t)
	root := t.TempDir()
	watched := filepath.Join(root, "crash")
	os.Mkdir(watched, 0o755)
	state := filepath.Join(root, "state.json")
	old := time.Now().Add(-time.Hour)
	put := func(name string, b []byte) {
		p := filepath.Join(watched, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	put("core.1", dump(512, k.Ed.Seed()))
	put("clean.1", dump(0, nil))
	cfg := func(snk *sink) Config {
		return Config{Dirs: []string{watched}, Detector: det, KeyFingerprints: fps, Submit: snk.submit, StateFile: state, Rescan: 50 * time.Millisecond, NoInotify: true}
	}
	var first sink
	s1, stop := start(t, cfg(&first))
	first.wait(t, 1)
	for deadline := time.Now().Add(10 * time.Second); s1.Stats().Scanned < 2 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if st := s1.Stats(); st.Scanned != 2 {
		t.Fatalf("first run stats %+v, want 2 files scanned", st)
	}
	put("core.2", dump(1024, k.RSA.Primes[1].FillBytes(make([]byte, 128))))
	var second sink
	s2, stop2 := start(t, cfg(&second))
	got := second.wait(t, 1)
	time.Sleep(300 * time.Millisecond) // several rescans
	stop2()
	if e := got["core.2"]; e == nil || e.GetEncoding() != "rsa-prime-be" || e.GetOffset() != 1024 {
		t.Errorf("second run: %v", got)
	}
	if st := s2.Stats(); st.Scanned != 1 || len(second.byFile()) != 1 {
		t.Errorf("second run scanned %d files (%v), want only the new one", st.Scanned, second.byFile())
	}
}

// TestSentinelBackpressure: a sink that refuses delays reporting but loses nothing, and more files
// than MaxPending are all scanned (the excess by later rescans).
func TestSentinelBackpressure(t *testing.T) {
	k := keytest.Generate()
	det, fps := fpDetector(t)
	watched := t.TempDir()
	for i := range 12 {
		p := filepath.Join(watched, "core."+string(rune('a'+i)))
		if err := os.WriteFile(p, dump(8*i, k.Ed.Seed()), 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		os.Chtimes(p, old, old)
	}
	var snk sink
	snk.refuse.Store(5)
	s, stop := start(t, Config{Dirs: []string{watched}, Detector: det, KeyFingerprints: fps, Submit: snk.submit, Rescan: 50 * time.Millisecond, MaxPending: 3, NoInotify: true})
	got := snk.wait(t, 12)
	stop()
	if len(got) != 12 || snk.calls.Load() != 12+5 {
		t.Errorf("%d files reported with %d submissions, want 12 with 17", len(got), snk.calls.Load())
	}
	if st := s.Stats(); st.Deferred == 0 || st.Scanned != 12 {
		t.Errorf("stats %+v: want deferred files and 12 scanned", st)
	}
}
