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
	var size int64
	for _, s := range core.segs {
		size += int64(s.size)
	}
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
	for b.Loop() {
		copyT, copyRSS, _ := runChild(b, "copy", core, "")
		redT, redRSS, out := runChild(b, "redact-fp", core, "")
		mb := float64(size) / 1e6
		b.ReportMetric(copyT.Seconds()/redT.Seconds(), "redact+verify/copy")
		b.ReportMetric(float64(redRSS)/1024, "redact-peak-RSS-MiB")
		fmt.Printf("core %.0f MB: copy %v (%.0f MB/s, peak RSS %d KiB)\n", mb, copyT.Round(time.Millisecond), mb/copyT.Seconds(), copyRSS)
		fmt.Printf("  redact+verify with fingerprints %v (%.0f MB/s, peak RSS %d KiB): %.2f of copy speed\n%s", redT.Round(time.Millisecond), mb/redT.Seconds(), redRSS, copyT.Seconds()/redT.Seconds(), out)
	}
}
