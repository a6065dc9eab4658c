package scan

import (
	"context"
	"crypto"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// benchEncodings are the encodings the fingerprint benchmark plants: formats, and raw material with
// no format copy of its key before it in the file.
var benchEncodings = []string{
	"rsa/prime-p-be", "rsa/prime-q-le64", "rsa/d-lambda-le64", "p256/scalar-be", "p384/scalar-le64",
	"ed25519/seed", "ed25519/expanded", // raw: first half of the file
	"rsa/pem-pkcs1", "p256/der-sec1", "ed25519/openssh-binary", "p521/jwk", // formats: second half
}

func envInt(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// mixedFile writes size bytes of memory-like data (a fifth random stretches) with the
// benchEncodings planted, and returns the planted offsets by encoding name.
func mixedFile(b *testing.B, path string, size int64) map[string]int64 {
	rng := mrand.New(mrand.NewPCG(3, 4))
	block := keytest.Filler(rng, 8<<20, true)
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < size; off += int64(len(block)) {
		if _, err := f.Write(block[:min(int64(len(block)), size-off)]); err != nil {
			b.Fatal(err)
		}
	}
	encs := map[string]keytest.Encoding{}
	for _, e := range keytest.Generate().Encodings() {
		encs[e.Name] = e
	}
	at := map[string]int64{}
	for i, name := range benchEncodings {
		off := (size / int64(len(benchEncodings)+1) * int64(i+1)) &^ 7
		e := encs[name]
		if _, err := f.WriteAt(e.Data, off); err != nil {
			b.Fatal(err)
		}
		at[name] = off + int64(e.Off)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return at
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func catFile(b *testing.B, path string) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if _, err := io.Copy(io.Discard, f); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func scanTimed(b *testing.B, s *Scanner, path string) (time.Duration, []Finding) {
	var out []Finding
	start := time.Now()
	if _, err := s.Run(context.Background(), []string{path}, func(f Finding) error { out = append(out, f); return nil }, func(e *FileError) { b.Error(e) }); err != nil {
		b.Fatal(err)
	}
	return time.Since(start), out
}

// BenchmarkFingerprintScan measures, in one run against cat (io.Copy to io.Discard of the same
// file, in the page cache): `keyguard scan -fingerprints` on a mixed file (memory-like, a fifth
// random-looking) holding eleven encodings (goal >= 0.25 of cat, all found and attributed); and
// the public-key-only raw search (no fingerprints) on a smaller random-looking file, one core on
// one stream as before against all cores on parts of the file.
// Run: KEYGUARD_BENCH_SCAN_MIB=1024 go test -run '^$' -bench FingerprintScan -benchtime 1x ./agent/internal/scan
// (KEYGUARD_BENCH_SCAN_MIB default 64; KEYGUARD_BENCH_RAW_KIB, the raw search's file, default 1024).
func BenchmarkFingerprintScan(b *testing.B) {
	dir := b.TempDir()
	mixed := filepath.Join(dir, "mixed")
	at := mixedFile(b, mixed, envInt("KEYGUARD_BENCH_SCAN_MIB", 64)<<20)
	k := keytest.Generate()
	fp, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		b.Fatal(err)
	}
	keys := map[string]crypto.PrivateKey{"rsa.pem": k.RSA, "p256.pem": k.P256, "p384.pem": k.P384, "p521.pem": k.P521, "ed.pem": k.Ed}
	for name, p := range keys {
		if err := fp.AddKey(name, p); err != nil {
			b.Fatal(err)
		}
	}
	fdet, err := detect.New(detect.Options{Modes: detect.ModeFormats, Fingerprints: fp.Set()})
	if err != nil {
		b.Fatal(err)
	}
	raw := filepath.Join(dir, "raw")
	rb := keytest.Filler(mrand.New(mrand.NewPCG(5, 6)), int(envInt("KEYGUARD_BENCH_RAW_KIB", 1024)<<10), true)
	copy(rb[len(rb)/2&^7:], k.Ed.Seed())
	if err := os.WriteFile(raw, rb, 0o600); err != nil {
		b.Fatal(err)
	}
	var pubs []pubkeys.Key
	for _, p := range k.Pubs {
		if p.Name == "rsa.pem" || p.Name == "p256.pem" || p.Name == "ed.pem" {
			pubs = append(pubs, p)
		}
	}
	rdet, err := detect.New(detect.Options{Keys: pubs})
	if err != nil {
		b.Fatal(err)
	}
	catFile(b, mixed) // into the page cache
	for b.Loop() {
		// Best of three rounds each, cat and scan interleaved: the machine is shared, and the
		// least disturbed round is the closest to what the code costs.
		var cat, fpT, catCPU, fpCPU time.Duration
		var found []Finding
		for r := range 3 {
			c0 := cpuTime()
			ct := catFile(b, mixed)
			c1 := cpuTime()
			st, fs := scanTimed(b, New(fdet, nil, 0), mixed)
			c2 := cpuTime()
			if r == 0 || ct < cat {
				cat = ct
			}
			if r == 0 || c1-c0 < catCPU {
				catCPU = c1 - c0
			}
			if r == 0 || st < fpT {
				fpT = st
			}
			if r == 0 || c2-c1 < fpCPU {
				fpCPU = c2 - c1
			}
			found = fs
		}
		hit := 0
		for name, off := range at {
			for _, f := range found {
				if f.Offset == off && f.Key != "" {
					hit++
					break
				}
			}
			_ = name
		}
		if hit != len(at) || len(found) != len(at) {
			b.Errorf("found %d of %d planted encodings, %d findings: %+v", hit, len(at), len(found), found)
		}
		catRaw := catFile(b, raw)
		seq := New(rdet, nil, 1)
		seq.splitMin = 1 << 62
		par := New(rdet, nil, 0)
		par.splitMin = 1
		c3 := cpuTime()
		seqT, sf := scanTimed(b, seq, raw)
		c4 := cpuTime()
		parT, pf := scanTimed(b, par, raw)
		c5 := cpuTime()
		seqCPU, parCPU := c4-c3, c5-c4
		if len(sf) != 1 || len(pf) != 1 {
			b.Errorf("raw search: %d and %d findings, want the seed once each", len(sf), len(pf))
		}
		mb, rmb := float64(fileSize(b, mixed))/1e6, float64(len(rb))/1e6
		b.ReportMetric(cat.Seconds()/fpT.Seconds(), "fp-scan/cat")
		b.ReportMetric(catCPU.Seconds()/fpCPU.Seconds(), "fp-scan/cat-cpu")
		b.ReportMetric(seqT.Seconds()/parT.Seconds(), "raw-parallel/sequential")
		fmt.Printf("mixed %.0f MB: cat %v (%.0f MB/s); scan -fingerprints %v (%.0f MB/s): %.2f of cat, %d/%d encodings found\n"+
			"  CPU time: cat %v, scan %v (%.0f MB per CPU-second): %.2f of cat\n",
			mb, cat.Round(time.Millisecond), mb/cat.Seconds(), fpT.Round(time.Millisecond), mb/fpT.Seconds(), cat.Seconds()/fpT.Seconds(), hit, len(at),
			catCPU.Round(time.Millisecond), fpCPU.Round(time.Millisecond), mb/fpCPU.Seconds(), catCPU.Seconds()/fpCPU.Seconds())
		fmt.Printf("raw public-key search, %.1f MB (RSA-2048, P-256, Ed25519): cat %v; one stream %v (%.2f MB/s); %d parts %v (%.2f MB/s): %.2fx\n"+
			"  CPU time: one stream %v (%.2f MB per CPU-second), %d parts %v (%.2f MB per CPU-second; %.2f MB/s on %d idle cores)\n",
			rmb, catRaw.Round(time.Microsecond), seqT.Round(time.Millisecond), rmb/seqT.Seconds(), par.workers, parT.Round(time.Millisecond), rmb/parT.Seconds(), seqT.Seconds()/parT.Seconds(),
			seqCPU.Round(time.Millisecond), rmb/seqCPU.Seconds(), par.workers, parCPU.Round(time.Millisecond), rmb/parCPU.Seconds(), rmb/parCPU.Seconds()*float64(par.workers), par.workers)
		b.ReportMetric(rmb/parCPU.Seconds(), "raw-MB/cpu-s")
	}
}

func fileSize(b *testing.B, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}
