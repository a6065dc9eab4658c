package scan

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

// corpus is a directory tree with keys planted in plain and compressed files.
type corpus struct {
	dir, pubFile string
	prime        []byte
	want         []Finding // expected findings (Path relative to dir until fixed up)
}

func memoryLike(rng *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		switch rng.IntN(3) {
		case 0: // zero page
		case 1:
			for j := i; j < min(n, i+4096); j += 8 {
				v := 0x7f0000000000 + uint64(rng.IntN(1<<28))*8
				for k := 0; k < 8 && j+k < n; k++ {
					b[j+k] = byte(v >> (8 * k))
				}
			}
		case 2:
			copy(b[i:min(n, i+4096)], strings.Repeat("signer log line: request ok\n", 150))
		}
	}
	return b
}

func compress(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	b, err := keytest.Compress(kind, data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func makeCorpus(t *testing.T) *corpus {
	t.Helper()
	keys := keytest.Generate()
	rk, ek := keys.RSA, keys.P256
	dir := t.TempDir()
	c := &corpus{dir: dir}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	c.pubFile = filepath.Join(t.TempDir(), "signer.pub.pem")
	if err := os.WriteFile(c.pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	sec1, _ := x509.MarshalECPrivateKey(ek)
	prime := rk.Primes[0].FillBytes(make([]byte, 128))
	c.prime = prime

	// core: a 3 MiB memory-like image with a PEM key, a raw prime (big-endian, aligned) and a DER
	// EC key, written plain and with each compressor.
	core := memoryLike(rng, 3<<20)
	offPEM, offPrime, offDER := 100_003, 2<<20+4096, (1<<20)-50 // the DER key straddles the 1 MiB window edge
	copy(core[offPEM:], pemKey)
	copy(core[offPrime:], prime)
	copy(core[offDER:], sec1)
	write := func(rel string, data []byte) string {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, comp := range []string{"", "zstd", "lz4", "xz", "gzip"} {
		name := "coredump/core.signer.1000.plain"
		data := core
		if comp != "" {
			name = "coredump/core.signer.1000." + comp
			data = compress(t, comp, core)
		}
		p := write(name, data)
		c.want = append(c.want,
			Finding{Path: p, Compression: comp, Finding: detect.Finding{Offset: int64(offPEM), Length: len(pemKey) - 1, Kind: detect.KindPEMRSA, Key: c.pubFile}},
			Finding{Path: p, Compression: comp, Finding: detect.Finding{Offset: int64(offDER), Length: len(sec1), Kind: detect.KindDEREC}},
			Finding{Path: p, Compression: comp, Finding: detect.Finding{Offset: int64(offPrime), Length: 128, Kind: detect.KindRSAPrimeBE, Key: c.pubFile}},
		)
	}
	write("share/notes/clean.txt", memoryLike(rng, 200_000))
	write("share/empty", nil)
	return c
}

func runJSON(t *testing.T, args ...string) (int, struct {
	Findings []Finding
	Errors   []FileError
	Summary  Summary
}, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Command(context.Background(), args, &out, &errb)
	var rep struct {
		Findings []Finding
		Errors   []FileError
		Summary  Summary
	}
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out.String())
		}
	}
	return code, rep, errb.String()
}

func TestCommand(t *testing.T) {
	c := makeCorpus(t)
	clean := filepath.Join(c.dir, "share")
	corrupt := filepath.Join(t.TempDir(), "core.broken.zst")
	// A valid zstd frame header followed by garbage, after a real compressed prefix.
	good := compress(t, "zstd", bytes.Repeat([]byte("x"), 1000))
	if err := os.WriteFile(corrupt, append(good[:len(good)/2], bytes.Repeat([]byte{0xee}, 64)...), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file with only a raw prime: found by the raw search, not by formats or learned secrets.
	rawOnly := filepath.Join(t.TempDir(), "core.raw")
	img := memoryLike(mrand.New(mrand.NewPCG(5, 5)), 64<<10)
	copy(img[4096:], c.prime)
	if err := os.WriteFile(rawOnly, img, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		wantCode  int
		wantFinds []Finding
		wantErrs  int
	}{
		{"found", []string{"-format", "json", "-pubkeys", c.pubFile, c.dir}, ExitFound, c.want, 0},
		{"clean", []string{"-format", "json", "-pubkeys", c.pubFile, clean}, ExitClean, nil, 0},
		{"missing-path-is-error-but-scan-continues", []string{"-format", "json", "-pubkeys", c.pubFile, filepath.Join(c.dir, "nope"), c.dir}, ExitError, c.want, 1},
		{"corrupt-compressed-file-is-error", []string{"-format", "json", corrupt, clean}, ExitError, nil, 1},
		{"bad-format", []string{"-format", "xml", c.dir}, ExitError, nil, 0},
		{"raw-prime-alone", []string{"-format", "json", "-pubkeys", c.pubFile, rawOnly}, ExitFound, []Finding{{Path: rawOnly, Finding: detect.Finding{Offset: 4096, Length: 128, Kind: detect.KindRSAPrimeBE, Key: c.pubFile}}}, 0},
		{"raw-none", []string{"-format", "json", "-pubkeys", c.pubFile, "-raw", "none", rawOnly}, ExitClean, nil, 0},
		{"bad-raw", []string{"-raw", "dsa", c.dir}, ExitError, nil, 0},
		{"no-paths", []string{"-format", "json"}, ExitError, nil, 0},
		{"private-key-as-pubkey", []string{"-pubkeys", filepath.Join(c.dir, "coredump/core.signer.1000.plain"), c.dir}, ExitError, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, rep, stderr := runJSON(t, tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, stderr)
			}
			if len(rep.Errors) != tc.wantErrs {
				t.Errorf("errors %+v, want %d", rep.Errors, tc.wantErrs)
			}
			got := map[Finding]bool{}
			for _, f := range rep.Findings {
				got[f] = true
			}
			for _, w := range tc.wantFinds {
				if !got[w] {
					t.Errorf("missing finding %+v", w)
				}
			}
			if len(rep.Findings) != len(tc.wantFinds) {
				t.Errorf("got %d findings, want %d: %+v", len(rep.Findings), len(tc.wantFinds), rep.Findings)
			}
			if tc.wantCode != ExitError && rep.Summary.Findings != len(tc.wantFinds) {
				t.Errorf("summary %+v", rep.Summary)
			}
		})
	}
}

func TestTextOutput(t *testing.T) {
	c := makeCorpus(t)
	var out, errb bytes.Buffer
	code := Command(context.Background(), []string{filepath.Join(c.dir, "coredump", "core.signer.1000.zstd")}, &out, &errb)
	if code != ExitFound {
		t.Fatalf("exit %d; stderr %s", code, errb.String())
	}
	var want string
	for _, w := range c.want {
		if w.Compression == "zstd" && w.Kind == detect.KindPEMRSA {
			want = fmt.Sprintf("%s:100003: pem-rsa-pkcs1, %d bytes (offset in zstd-decompressed stream)", w.Path, w.Length)
		}
	}
	if !strings.Contains(out.String(), want) {
		t.Errorf("output\n%s\nlacks line\n%s", out.String(), want)
	}
}

func TestCancel(t *testing.T) {
	c := makeCorpus(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	if code := Command(ctx, []string{c.dir}, &out, &errb); code != ExitError || !strings.Contains(errb.String(), "context canceled") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

// TestBinary builds the real keyguard command and runs `keyguard scan` end to end.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the keyguard binary")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	bin := filepath.Join(t.TempDir(), "keyguard")
	build := exec.Command(goBin, "build", "-o", bin, "github.com/keyguard/keyguard/agent/cmd/keyguard")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c := makeCorpus(t)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"scan", "-format", "json", "-pubkeys", c.pubFile, c.dir}, ExitFound},
		{[]string{"scan", filepath.Join(c.dir, "share")}, ExitClean},
		{[]string{"scan", filepath.Join(c.dir, "does-not-exist")}, ExitError},
	} {
		cmd := exec.Command(bin, tc.args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d; stderr %s", tc.args, code, tc.code, errb.String())
		}
		if tc.args[1] == "-format" {
			var rep struct{ Findings []Finding }
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Findings) != len(c.want) {
				t.Errorf("JSON output: %v, %d findings, want %d", err, len(rep.Findings), len(c.want))
			}
		}
	}
}
