package dumps

import (
	"bytes"
	"context"
	"crypto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

// fpDetector finds the test keys by fingerprint and format only: no public key is configured, so
// no public-key arithmetic runs.
func fpDetector(t testing.TB) *detect.Detector {
	t.Helper()
	k := keytest.Generate()
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]crypto.PrivateKey{"rsa.pem": k.RSA, "p256.pem": k.P256, "ed.pem": k.Ed} {
		if err := f.AddKey(name, p); err != nil {
			t.Fatal(err)
		}
	}
	d, err := detect.New(detect.Options{Modes: detect.ModeFormats, Fingerprints: f.Set()})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRedactWithFingerprints redacts the synthetic core with a fingerprint-only detector: the raw
// scalar in file-backed data, raw d limbs in a file-backed segment and the seed||public key on a
// kept stack are scrubbed, and the verify pass (same detector) finds nothing.
func TestRedactWithFingerprints(t *testing.T) {
	in := synthetic(t)
	det := fpDetector(t)
	if fs, err := Verify(context.Background(), bytes.NewReader(in), det); err != nil || len(fs) < 10 {
		t.Fatalf("Verify(input) found %d findings (%v); want at least 10", len(fs), err)
	}
	out, sum := redactBytes(t, in, Options{Detector: det, KeepStacks: true})
	sameLayout(t, in, out)
	c := condense(out)
	for name, s := range secrets() {
		if strings.HasPrefix(name, "other/") || strings.HasPrefix(name, "oct/") || strings.HasPrefix(name, "p384/") || strings.HasPrefix(name, "p521/") {
			continue
		}
		if bytes.Contains(c, s) {
			t.Errorf("output still holds %s at offset %d", name, bytes.Index(out, s))
		}
	}
	if fs, err := Verify(context.Background(), bytes.NewReader(out), det); err != nil || len(fs) > 0 {
		t.Errorf("Verify(output) = %v, %v; want no findings", fs, err)
	}
	for _, k := range []string{detect.KindECScalarBE, detect.KindRSADLE, detect.KindEd25519SeedPub} {
		if sum.Findings[k] == 0 {
			t.Errorf("summary: no %s finding scrubbed: %v", k, sum.Findings)
		}
	}
}

// TestVerifySparseFile: Verify on a sparse file (holes skipped with SEEK_DATA/SEEK_HOLE) finds
// exactly what it finds reading the same bytes.
func TestVerifySparseFile(t *testing.T) {
	in := synthetic(t)
	in = append(in, make([]byte, 5*pageSize+100)...) // a trailing hole and a partial page
	copy(in[len(in)-200:], enc(t, "ed25519/seed"))
	path := filepath.Join(t.TempDir(), "core")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(in); off += pageSize {
		p := in[off:min(len(in), off+pageSize)]
		if allZero(p) && len(p) == pageSize {
			continue // leave a hole
		}
		if _, err := f.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(int64(len(in))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || st.Blocks*512 >= int64(len(in))/2 {
		t.Fatalf("test file is not sparse (%d blocks for %d bytes, %v)", st.Blocks, len(in), err)
	}
	for _, det := range []*detect.Detector{testDetector(t), fpDetector(t)} {
		want, err := Verify(context.Background(), bytes.NewReader(in), det)
		if err != nil || len(want) < 10 {
			t.Fatalf("Verify(bytes) = %d findings, %v", len(want), err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Verify(context.Background(), f, det)
		f.Close()
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Verify(sparse file) = %v, %v\nwant %v", got, err, want)
		}
	}
}
