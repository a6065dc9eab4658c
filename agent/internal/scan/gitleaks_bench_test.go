package scan

import (
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// gitleaksModule is the gitleaks release the comparison runs, as a Go module (it is not in go.mod).
const gitleaksModule = "github.com/zricethezav/gitleaks/v8@v8.30.1"

// benchCorpus writes one file per encoding (a memory-like image with the encoding planted at an
// aligned offset in its middle), compressed copies of some, and control files with no key.
// It returns the planted encoding of each file ("" for controls).
func benchCorpus(b *testing.B, dir string, fileSize int, random bool) (map[string]keytest.Encoding, int64) {
	k := keytest.Generate()
	rng := mrand.New(mrand.NewPCG(21, 22))
	files := map[string]keytest.Encoding{}
	var total int64
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
		total += int64(len(data))
		return p
	}
	i := 0
	for _, e := range k.Encodings() {
		// Raw P-384/P-521 scalars are left out: the benchmark configures the RSA, P-256 and Ed25519
		// public keys only (their formats are still in the corpus).
		if (strings.HasPrefix(e.Name, "p384/") || strings.HasPrefix(e.Name, "p521/")) && strings.Contains(e.Name, "scalar") {
			continue
		}
		img := keytest.Filler(rng, fileSize, random)
		at := (fileSize/2 - len(e.Data)/2) &^ 7
		copy(img[at:], e.Data)
		i++
		files[write(fmt.Sprintf("core.%03d", i), img)] = e
		if e.Name == "rsa/pem-pkcs1" || e.Name == "rsa/prime-p-le64" || e.Name == "ed25519/seed" {
			for _, comp := range []string{"zstd", "lz4", "xz"} {
				ce := e
				ce.Name = comp + ":" + e.Name
				files[write(fmt.Sprintf("core.%03d.%s", i, comp), compressBench(b, comp, img))] = ce
			}
		}
	}
	for c := 0; c < 8; c++ {
		files[write(fmt.Sprintf("control.%d", c), keytest.Filler(rng, fileSize, random))] = keytest.Encoding{}
	}
	return files, total
}

func compressBench(b *testing.B, kind string, data []byte) []byte {
	t := &testing.T{}
	out := compress(t, kind, data)
	if t.Failed() {
		b.Fatalf("compress %s failed", kind)
	}
	return out
}

type toolResult struct {
	name     string
	wall     time.Duration
	cpu      time.Duration
	hitFiles map[string]bool // files with at least one finding
	falsePos int             // findings in control files
}

// BenchmarkScanVsGitleaks runs `keyguard scan` (in process) and gitleaks (with `go run`, outside
// this module) over the same corpus and prints throughput, the ratio, and recall per encoding.
// Run: go test -run XXX -bench ScanVsGitleaks -benchtime 1x ./agent/internal/scan
// KEYGUARD_BENCH_FILE_KIB sets each file's size (default 1024); KEYGUARD_BENCH_RANDOM=0 drops the
// random stretches from the filler.
func BenchmarkScanVsGitleaks(b *testing.B) {
	size := 1024
	if v := os.Getenv("KEYGUARD_BENCH_FILE_KIB"); v != "" {
		fmt.Sscan(v, &size)
	}
	random := os.Getenv("KEYGUARD_BENCH_RANDOM") != "0"
	dir := b.TempDir()
	files, total := benchCorpus(b, dir, size<<10, random)
	k := keytest.Generate()
	var pubs, rsaPub []pubkeys.Key
	for _, p := range k.Pubs {
		if p.Name == "rsa.pem" || p.Name == "p256.pem" || p.Name == "ed.pem" {
			pubs = append(pubs, p)
		}
		if p.Name == "rsa.pem" {
			rsaPub = append(rsaPub, p)
		}
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	gitleaks := func(args ...string) (*exec.Cmd, []byte, error) {
		cmd := exec.Command(goBin, append([]string{"run", gitleaksModule}, args...)...)
		cmd.Dir = b.TempDir() // outside this module: gitleaks is not a dependency of keyguard
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		return cmd, out, err
	}
	// Build (and fetch) gitleaks once, and measure go run's own start-up cost to subtract it.
	if _, out, err := gitleaks("version"); err != nil {
		b.Fatalf("go run %s version failed (cannot fetch or build gitleaks): %v\n%s", gitleaksModule, err, out)
	}
	t0 := time.Now()
	_, _, _ = gitleaks("version")
	goRunOverhead := time.Since(t0)

	for b.Loop() {
		var results []toolResult
		for _, mode := range []struct {
			name string
			keys []pubkeys.Key
		}{{"keyguard (formats)", nil}, {"keyguard -pubkeys rsa", rsaPub}, {"keyguard -pubkeys rsa,p256,ed", pubs}} {
			det, err := detect.New(detect.Options{Keys: mode.keys})
			if err != nil {
				b.Fatal(err)
			}
			r := toolResult{name: mode.name, hitFiles: map[string]bool{}}
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			start := time.Now()
			_, err = New(det, nil, 0).Run(context.Background(), []string{dir}, func(f Finding) error {
				r.hitFiles[f.Path] = true
				if files[f.Path].Name == "" {
					r.falsePos++
				}
				return nil
			}, func(e *FileError) { b.Errorf("scan error: %v", e) })
			r.wall = time.Since(start)
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			r.cpu = time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
			if err != nil {
				b.Fatal(err)
			}
			results = append(results, r)
		}

		report := filepath.Join(b.TempDir(), "gitleaks.json")
		start := time.Now()
		cmd, out, err := gitleaks("dir", dir, "--no-banner", "--report-format", "json", "--report-path", report, "--exit-code", "0", "--log-level", "warn")
		gl := toolResult{name: "gitleaks " + strings.TrimPrefix(gitleaksModule, "github.com/zricethezav/gitleaks/v8@"), wall: time.Since(start) - goRunOverhead, hitFiles: map[string]bool{}}
		if err != nil {
			b.Fatalf("gitleaks dir failed: %v\n%s", err, out)
		}
		gl.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		var glFindings []struct{ File, RuleID string }
		raw, err := os.ReadFile(report)
		if err != nil {
			b.Fatal(err)
		}
		if err := json.Unmarshal(raw, &glFindings); err != nil {
			b.Fatalf("gitleaks report: %v", err)
		}
		for _, f := range glFindings {
			p := f.File
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, filepath.Base(p))
			}
			gl.hitFiles[p] = true
			if files[p].Name == "" {
				gl.falsePos++
			}
		}
		results = append(results, gl)

		// Recall per encoding.
		var names []string
		byName := map[string]string{}
		for p, e := range files {
			if e.Name != "" {
				names = append(names, e.Name)
				byName[e.Name] = p
			}
		}
		sort.Strings(names)
		var sb strings.Builder
		fmt.Fprintf(&sb, "\ncorpus: %d files, %.1f MB (%d KiB memory-like images, random stretches %v), %d CPUs\n", len(files), float64(total)/1e6, size, random, runtime.NumCPU())
		fmt.Fprintf(&sb, "%-28s %10s %10s %12s %12s %8s %10s\n", "tool", "wall", "cpu", "MB/s(wall)", "MB/s(cpu)", "recall", "false-pos")
		for _, r := range results {
			hits := 0
			for _, n := range names {
				if r.hitFiles[byName[n]] {
					hits++
				}
			}
			fmt.Fprintf(&sb, "%-28s %10s %10s %12.1f %12.1f %4d/%-3d %10d\n", r.name, r.wall.Round(time.Millisecond), r.cpu.Round(time.Millisecond),
				float64(total)/1e6/r.wall.Seconds(), float64(total)/1e6/r.cpu.Seconds(), hits, len(names), r.falsePos)
		}
		for _, r := range results[:3] {
			fmt.Fprintf(&sb, "throughput ratio %s / gitleaks: %.1fx (wall), %.1fx (cpu)\n", r.name, gl.wall.Seconds()/r.wall.Seconds(), gl.cpu.Seconds()/r.cpu.Seconds())
		}
		fmt.Fprintf(&sb, "(gitleaks wall excludes go run start-up, %s measured with `go run ... version`)\n\n", goRunOverhead.Round(time.Millisecond))
		fmt.Fprintf(&sb, "%-40s %18s %22s %30s %10s\n", "encoding", results[0].name, results[1].name, results[2].name, "gitleaks")
		yn := func(v bool) string {
			if v {
				return "found"
			}
			return "-"
		}
		for _, n := range names {
			p := byName[n]
			fmt.Fprintf(&sb, "%-40s %18s %22s %30s %10s\n", n, yn(results[0].hitFiles[p]), yn(results[1].hitFiles[p]), yn(results[2].hitFiles[p]), yn(gl.hitFiles[p]))
		}
		fmt.Print(sb.String())
		b.ReportMetric(gl.wall.Seconds()/results[0].wall.Seconds(), "x-formats-vs-gitleaks")
		b.ReportMetric(gl.wall.Seconds()/results[1].wall.Seconds(), "x-rsa-vs-gitleaks")
		b.ReportMetric(gl.wall.Seconds()/results[2].wall.Seconds(), "x-all-keys-vs-gitleaks")
		for _, n := range names {
			if !results[2].hitFiles[byName[n]] {
				b.Errorf("keyguard scan -pubkeys missed %s", n)
			}
		}
	}
}
