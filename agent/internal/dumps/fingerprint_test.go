package dumps

import (
	"bytes"
	"context"
	"crypto"
	"strings"
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
