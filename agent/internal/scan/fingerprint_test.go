package scan

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

// TestFingerprintCommand runs `keyguard fingerprint` on key files, then `keyguard scan
// -fingerprints` over dumps holding only raw material (an RSA prime, a P-256 scalar as limbs, an
// Ed25519 seed; one zstd-compressed) in random data, and over clean random data.
func TestFingerprintCommand(t *testing.T) {
	k := keytest.Generate()
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	dumps := filepath.Join(dir, "dumps")
	clean := filepath.Join(dir, "clean")
	for _, d := range []string{keys, dumps, clean} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ec, _ := x509.MarshalECPrivateKey(k.P256)
	ed, _ := x509.MarshalPKCS8PrivateKey(k.Ed)
	keyFiles := map[string][]byte{
		"rsa.pem":  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.RSA)}),
		"p256.pem": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ec}),
		"ed.pem":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ed}),
	}
	var keyPaths []string
	for n, b := range keyFiles {
		p := filepath.Join(keys, n)
		keyPaths = append(keyPaths, p)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fp := filepath.Join(dir, "fp.json")
	dk := filepath.Join(dir, "deploy.key")
	var out, errb bytes.Buffer
	if code := FingerprintCommand(context.Background(), append([]string{"-deployment-key", dk, "-o", fp}, keyPaths...), &out, &errb); code != ExitClean {
		t.Fatalf("fingerprint: exit %d: %s", code, errb.String())
	}
	// A second run reuses the deployment key: same fingerprints.
	first, _ := os.ReadFile(fp)
	if code := FingerprintCommand(context.Background(), append([]string{"-deployment-key", dk, "-o", fp}, keyPaths...), &out, &errb); code != ExitClean {
		t.Fatalf("fingerprint again: exit %d: %s", code, errb.String())
	}
	if again, _ := os.ReadFile(fp); !bytes.Equal(first, again) {
		t.Error("fingerprints changed with the same deployment key")
	}
	img := func(at int, secret []byte) []byte {
		b := make([]byte, 256<<10)
		rand.Read(b)
		copy(b[at:], secret)
		return b
	}
	prime := k.RSA.Primes[0].FillBytes(make([]byte, 128))
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	limbs := k.P256.D.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		limbs[i], limbs[j] = limbs[j], limbs[i]
	}
	write(filepath.Join(dumps, "core.prime"), img(4096, prime))
	write(filepath.Join(dumps, "core.p256"), img(8192, limbs))
	write(filepath.Join(dumps, "core.seed.zst"), compress(t, "zstd", img(65536, k.Ed.Seed())))
	write(filepath.Join(clean, "core.clean"), img(0, nil))
	want := map[string]string{
		"core.prime":    "rsa-prime-be@4096 " + filepath.Join(keys, "rsa.pem"),
		"core.p256":     "ec-scalar-le64@8192 " + filepath.Join(keys, "p256.pem"),
		"core.seed.zst": "ed25519-seed@65536 " + filepath.Join(keys, "ed.pem"),
	}
	code, rep, stderr := runJSON(t, "-format", "json", "-fingerprints", fp, dumps)
	if code != ExitFound {
		t.Fatalf("exit %d, want %d: %s", code, ExitFound, stderr)
	}
	for _, f := range rep.Findings {
		got := f.Kind + "@" + itoa(f.Offset) + " " + f.Key
		if want[filepath.Base(f.Path)] != got {
			t.Errorf("unexpected finding %s: %s", f.Path, got)
		}
		delete(want, filepath.Base(f.Path))
	}
	if len(want) > 0 {
		t.Errorf("not found: %v", want)
	}
	if code, rep, stderr := runJSON(t, "-format", "json", "-fingerprints", fp, clean); code != ExitClean || len(rep.Findings) != 0 {
		t.Errorf("clean: exit %d, findings %+v: %s", code, rep.Findings, stderr)
	}
	if code, _, stderr := runJSON(t, "-fingerprints", filepath.Join(dir, "nope.json"), clean); code != ExitError || !strings.Contains(stderr, "nope.json") {
		t.Errorf("missing fingerprint file: exit %d: %s", code, stderr)
	}
	// The fingerprint file holds no key material.
	raw, _ := os.ReadFile(fp)
	if bytes.Contains(raw, prime[:16]) || bytes.Contains(raw, k.Ed.Seed()[:16]) {
		t.Error("fingerprint file holds raw key material")
	}
	if _, err := detect.LoadFingerprints(fp); err != nil {
		t.Error(err)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestFileParts: a plain file scanned in parts gives exactly the findings of one sequential scan,
// with keys planted across the part boundaries.
func TestFileParts(t *testing.T) {
	k := keytest.Generate()
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddKey("ed", k.Ed); err != nil {
		t.Fatal(err)
	}
	if err := f.AddKey("rsa", k.RSA); err != nil {
		t.Fatal(err)
	}
	det, err := detect.New(detect.Options{Fingerprints: f.Set(), Modes: detect.ModeFormats})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1<<20)
	rand.Read(b)
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.RSA)})
	step := (len(b)/4 + 4095) &^ 4095
	copy(b[step-16:], k.Ed.Seed())            // straddles the first boundary
	copy(b[2*step-1000:], pemKey)             // starts before the second, ends after
	copy(b[3*step:], k.RSA.Primes[0].Bytes()) // starts on the third
	p := filepath.Join(t.TempDir(), "core")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(workers int, split int64) []Finding {
		s := New(det, nil, workers)
		s.splitMin = split
		var out []Finding
		if _, err := s.Run(context.Background(), []string{p}, func(f Finding) error { out = append(out, f); return nil }, func(e *FileError) { t.Error(e) }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	seq, par := run(1, 1<<40), run(4, 1)
	if len(seq) != 3 || len(par) != len(seq) {
		t.Fatalf("sequential %d findings, in parts %d; want 3 each:\n%+v\n%+v", len(seq), len(par), seq, par)
	}
	for i := range seq {
		if seq[i] != par[i] {
			t.Errorf("finding %d: sequential %+v, in parts %+v", i, seq[i], par[i])
		}
	}
}
