package dumps

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	runChildFile(b, "cat", in)
	for b.Loop() {
		catT, _, _ := runChildFile(b, "cat", in)
		copyT, copyRSS, _ := runChild(b, "copy", core, "")
		redT, redRSS, out := runChildFile(b, "redact-fp", in)
		mb := float64(size) / 1e6
		b.ReportMetric(catT.Seconds()/redT.Seconds(), "redact+verify/cat")
		b.ReportMetric(copyT.Seconds()/redT.Seconds(), "redact+verify/copy")
		b.ReportMetric(float64(redRSS)/1024, "redact-peak-RSS-MiB")
		fmt.Printf("core %.0f MB: cat %v (%.0f MB/s); copy from a pipe to a file %v (%.0f MB/s, peak RSS %d KiB)\n", mb, catT.Round(time.Millisecond), mb/catT.Seconds(), copyT.Round(time.Millisecond), mb/copyT.Seconds(), copyRSS)
		fmt.Printf("  redact (sparse output) + verify with fingerprints %v (%.0f MB/s, peak RSS %d KiB): %.2f of cat, %.2f of copy\n%s", redT.Round(time.Millisecond), mb/redT.Seconds(), redRSS, catT.Seconds()/redT.Seconds(), copyT.Seconds()/redT.Seconds(), out)
	}
}

// runChildFile runs the benchmark child in mode with the file in as stdin; it returns the wall time
// (process start included, as for cat) and the child's peak RSS in KiB.
func runChildFile(b *testing.B, mode, in string) (time.Duration, int64, string) {
	out := filepath.Join(b.TempDir(), mode+".out")
	defer os.Remove(out)
	f, err := os.Open(in)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KEYGUARD_DUMPS_BENCH_CHILD="+mode, "KEYGUARD_DUMPS_BENCH_OUT="+out)
	cmd.Stdin = f
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s child: %v", mode, err)
	}
	d := time.Since(start)
	var hwm int64
	for _, l := range strings.Split(stdout.String(), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return d, hwm, stdout.String()
}
