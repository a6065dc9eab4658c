package dumps

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

// redactVerifyFP is the benchmark child's redact-fp mode: redact stdin to out with a detector
// built from the fingerprint file KEYGUARD_DUMPS_BENCH_FP (no public-key arithmetic), then run the
// verify pass over the written file, as the dump handler does.
func redactVerifyFP(out *os.File) error {
	set, err := detect.LoadFingerprints(os.Getenv("KEYGUARD_DUMPS_BENCH_FP"))
	if err != nil {
		return err
	}
	det, err := detect.New(detect.Options{Fingerprints: set, Modes: detect.ModeFormats})
	if err != nil {
		return err
	}
	sum, err := Redact(context.Background(), os.Stdin, out, Options{Detector: det, Sparse: true})
	if err != nil {
		return err
	}
	if _, err := out.Seek(0, 0); err != nil {
		return err
	}
	left, err := Verify(context.Background(), out, det)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("verify found %d findings after redaction", len(left))
	}
	fmt.Printf("findings %v zeroed %+v\n", sum.Findings, sum.Zeroed)
	return nil
}

// BenchmarkRedactFingerprints compares redaction plus its verify pass of a synthetic core, with the
// test keys found by fingerprint (their public keys are not configured: no public-key arithmetic),
// against a plain io.Copy of the same bytes: both in a child reading a pipe and writing a file, as
// the core_pattern handler does. It reports the ratio (goal >= 0.5) and the redactor's peak RSS
// (goal <= 64 MiB). The kept data holds a key encoding every 16 KiB.
// Run: KEYGUARD_DUMPS_BENCH_MIB=1024 go test -run '^$' -bench RedactFingerprints -benchtime 1x ./agent/internal/dumps
// (default 64 MiB so a plain -bench run stays short).
func BenchmarkRedactFingerprints(b *testing.B) {
	mib := int64(64)
	if v, err := strconv.ParseInt(os.Getenv("KEYGUARD_DUMPS_BENCH_MIB"), 10, 64); err == nil && v > 0 {
		mib = v
	}
	core := benchCore(mib << 20)
	size := coreSize(core)
	k := keytest.Generate()
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		b.Fatal(err)
	}
	for name, p := range map[string]crypto.PrivateKey{"rsa": k.RSA, "p256": k.P256, "ed": k.Ed} {
		if err := f.AddKey(name, p); err != nil {
			b.Fatal(err)
		}
	}
	fp := filepath.Join(b.TempDir(), "fp.json")
	if err := detect.WriteFingerprints(fp, f.Set()); err != nil {
		b.Fatal(err)
	}
	b.Setenv("KEYGUARD_DUMPS_BENCH_FP", fp)
	// cat: the same file read to io.Discard, after one read to bring it into the page cache.
	in := filepath.Join(b.TempDir(), "core")
	cf, err := os.Create(in)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := core.WriteTo(cf); err != nil {
		b.Fatal(err)
	}
	cf.Close()
	runBenchChild(b, "cat", in, nil)
	for b.Loop() {
		// Best of three interleaved rounds of cat and redact+verify (wall and CPU each): the
		// machine is shared, and the least disturbed round is the closest to what the code costs.
		var cat, red childRun
		for r := range 3 {
			c, d := runBenchChild(b, "cat", in, nil), runBenchChild(b, "redact-fp", in, nil)
			if r == 0 {
				cat, red = c, d
				continue
			}
			cat.wall, cat.cpu = min(cat.wall, c.wall), min(cat.cpu, c.cpu)
			red.wall, red.cpu, red.rssKiB = min(red.wall, d.wall), min(red.cpu, d.cpu), max(red.rssKiB, d.rssKiB)
		}
		cp := runBenchChild(b, "copy", "", core)
		mb := float64(size) / 1e6
		b.ReportMetric(cat.wall.Seconds()/red.wall.Seconds(), "redact+verify/cat")
		b.ReportMetric(cat.cpu.Seconds()/red.cpu.Seconds(), "redact+verify/cat-cpu")
		b.ReportMetric(cp.wall.Seconds()/red.wall.Seconds(), "redact+verify/copy")
		b.ReportMetric(float64(red.rssKiB)/1024, "redact-peak-RSS-MiB")
		fmt.Printf("core %.0f MB: cat %v (%.0f MB/s, CPU %v); copy from a pipe to a file %v (%.0f MB/s, peak RSS %d KiB)\n",
			mb, cat.wall.Round(time.Millisecond), mb/cat.wall.Seconds(), cat.cpu.Round(time.Millisecond), cp.wall.Round(time.Millisecond), mb/cp.wall.Seconds(), cp.rssKiB)
		fmt.Printf("  redact (sparse output) + verify with fingerprints %v (%.0f MB/s, peak RSS %d KiB): %.2f of cat, %.2f of copy\n"+
			"  CPU time: cat %v, redact+verify %v (%.0f MB per CPU-second): %.2f of cat\n%s",
			red.wall.Round(time.Millisecond), mb/red.wall.Seconds(), red.rssKiB, cat.wall.Seconds()/red.wall.Seconds(), cp.wall.Seconds()/red.wall.Seconds(),
			cat.cpu.Round(time.Millisecond), red.cpu.Round(time.Millisecond), mb/red.cpu.Seconds(), cat.cpu.Seconds()/red.cpu.Seconds(), red.out)
	}
}
