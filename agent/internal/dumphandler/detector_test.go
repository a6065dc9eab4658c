package dumphandler

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/policy"
)

// TestDetectorFingerprints: with fingerprints.json beside the policy, the handler's detector finds
// the fingerprinted P-256 key's raw scalar by fingerprint (its public key is dropped from the raw
// search) and still finds the P-384 key, which has no fingerprint, by public-key arithmetic.
func TestDetectorFingerprints(t *testing.T) {
	k := keytest.Generate()
	dir := t.TempDir()
	pubFile := func(name string, pub any) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, keytest.PublicPEM(pub), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p256, p384 := pubFile("p256.pub", &k.P256.PublicKey), pubFile("p384.pub", &k.P384.PublicKey)
	polPath := filepath.Join(dir, "policy.yaml")
	pol := "version: 1\nrules:\n  - name: signer\n    match: {executables: [/bin/sh]}\n    public_keys: [" + p256 + ", " + p384 + "]\n"
	if err := os.WriteFile(polPath, []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddKey("signer-p256", k.P256); err != nil {
		t.Fatal(err)
	}
	if err := detect.WriteFingerprints(filepath.Join(dir, FingerprintsFile), f.Set()); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(polPath)
	if err != nil {
		t.Fatal(err)
	}
	var rule uint32
	for id := range policy.Resolve(p, "").PublicKeys {
		rule = id
	}
	det, err := detector(polPath, rule)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<10)
	rand.Read(buf)
	k.P256.D.FillBytes(buf[1024:1056])
	k.P384.D.FillBytes(buf[8192:8240])
	got := det.ScanBytes(buf)
	want := map[int64]string{1024: "signer-p256", 8192: p384}
	for _, g := range got {
		if want[g.Offset] != g.Key {
			t.Errorf("unexpected finding %+v", g)
		}
		delete(want, g.Offset)
	}
	if len(want) > 0 {
		t.Errorf("not found: %v (got %+v)", want, got)
	}
	// A corrupt fingerprint file is an error, not silently ignored.
	os.WriteFile(filepath.Join(dir, FingerprintsFile), []byte("{"), 0o600)
	if _, err := detector(polPath, rule); err == nil {
		t.Error("corrupt fingerprints.json accepted")
	}
}
