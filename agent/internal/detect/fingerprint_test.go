package detect

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"golang.org/x/crypto/ssh"
)

// fingerprintSet returns the fingerprints of keytest's keys (not Other), named as keytest.Pubs.
func fingerprintSet(t testing.TB) *FingerprintSet {
	t.Helper()
	k := keytest.Generate()
	f, err := NewFingerprinter(NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range []struct {
		name string
		priv crypto.PrivateKey
	}{{"rsa.pem", k.RSA}, {"p256.pem", k.P256}, {"p384.pem", k.P384}, {"p521.pem", k.P521}, {"ed.pem", k.Ed}} {
		if err := f.AddKey(kv.name, kv.priv); err != nil {
			t.Fatal(err)
		}
	}
	return f.Set()
}

// fingerprintFindable reports whether the fingerprint search (with the format detectors, without
// public keys) must find e with e's Kind and Key: all of keytest's encodings but those of keys
// not fingerprinted.
func fingerprintFindable(e keytest.Encoding) bool {
	return !strings.HasPrefix(e.Name, "other/") && !strings.HasPrefix(e.Name, "oct/")
}

// TestFingerprintsFindEveryEncoding plants every keytest encoding (raw scalars, seeds, primes, d,
// CRT-free; formats) in memory-like filler with no other copy nearby and scans with fingerprints and
// the format detectors only: no public key is configured, so no public-key arithmetic runs.
func TestFingerprintsFindEveryEncoding(t *testing.T) {
	set := fingerprintSet(t)
	d, err := New(Options{Modes: ModeFormats, Fingerprints: set})
	if err != nil {
		t.Fatal(err)
	}
	if d.rawActive() {
		t.Fatal("raw (public-key arithmetic) searches are active")
	}
	for _, e := range keytest.Generate().Encodings() {
		t.Run(e.Name, func(t *testing.T) {
			rng := mrand.New(mrand.NewPCG(7, uint64(len(e.Name))))
			e.Align = true // raw material is searched at 8-byte aligned offsets
			buf, ps := plantFill(rng, []keytest.Encoding{e}, nil, true)
			got := d.ScanBytes(buf)
			want := ps[0].want()
			if !fingerprintFindable(e) {
				want.Key = ""
			}
			for _, f := range got {
				if f.Offset == want.Offset && f.Length == want.Length && f.Kind == want.Kind && f.Key == want.Key {
					if len(got) != 1 {
						t.Errorf("extra findings: %+v", got)
					}
					return
				}
			}
			t.Fatalf("want %+v, got %+v", want, got)
		})
	}
}

// TestFingerprintsCleanData: nothing in random data, memory-like filler, or another key's material.
func TestFingerprintsCleanData(t *testing.T) {
	d, err := New(Options{Modes: ModeFormats, Fingerprints: fingerprintSet(t)})
	if err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 16<<20)
	rand.Read(rnd)
	other := keytest.Generate().Other
	oth := append(keytest.Filler(mrand.New(mrand.NewPCG(1, 2)), 4<<20, true), be(other.Primes[0], 128)...)
	oth = append(oth, le(other.D, 256)...)
	for name, b := range map[string][]byte{"random": rnd, "filler": oth} {
		for _, f := range d.ScanBytes(b) {
			t.Errorf("%s: false positive %+v", name, f)
		}
	}
}

// TestFingerprintsUnaligned documents the limit: raw material off the Align grid is not found with
// Align 8, and is with Align 1.
func TestFingerprintsUnaligned(t *testing.T) {
	set := fingerprintSet(t)
	seed := keytest.Generate().Ed.Seed()
	buf := make([]byte, 4096)
	rand.Read(buf)
	copy(buf[1003:], seed)
	for _, c := range []struct {
		align int
		want  int
	}{{8, 0}, {1, 1}} {
		d, err := New(Options{Modes: ModeFormats, Fingerprints: set, Align: c.align})
		if err != nil {
			t.Fatal(err)
		}
		got := d.ScanBytes(buf)
		if len(got) != c.want || (c.want == 1 && (got[0].Offset != 1003 || got[0].Kind != KindEd25519Seed)) {
			t.Errorf("align %d: got %+v, want %d seed finding(s)", c.align, got, c.want)
		}
	}
}

// TestFingerprintFileRoundTrip derives fingerprints from key files (PEM PKCS#1, PKCS#8, SEC1,
// OpenSSH, DER, JWK), writes and reloads the set, and finds the keys' raw material with it.
func TestFingerprintFileRoundTrip(t *testing.T) {
	k := keytest.Generate()
	dir := t.TempDir()
	p8, err := x509.MarshalPKCS8PrivateKey(k.Ed)
	must(err)
	sec1, err := x509.MarshalECPrivateKey(k.P384)
	must(err)
	sshBlk, err := ssh.MarshalPrivateKey(k.P256, "")
	must(err)
	files := map[string][]byte{
		"rsa.key":  pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.RSA), nil),
		"ed.key":   pemOf("PRIVATE KEY", p8, nil),
		"p384.der": sec1,
		"p256.ssh": pem.EncodeToMemory(sshBlk),
		"p521.jwk": []byte(`{"kty":"EC","crv":"P-521","x":"` + b64u(be(k.P521.X, 66)) + `","y":"` + b64u(be(k.P521.Y, 66)) + `","d":"` + b64u(be(k.P521.D, 66)) + `"}`),
	}
	f, err := NewFingerprinter(NewDeploymentKey())
	must(err)
	for name, data := range files {
		if n, err := f.AddKeyFile(name, data); err != nil || n != 1 {
			t.Fatalf("%s: %d keys, %v", name, n, err)
		}
	}
	path := filepath.Join(dir, "fp.json")
	if err := WriteFingerprints(path, f.Set()); err != nil {
		t.Fatal(err)
	}
	set, err := LoadFingerprints(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	for _, secret := range [][]byte{be(k.RSA.Primes[0], 128), k.Ed.Seed(), be(k.P256.D, 32)} {
		if strings.Contains(string(raw), b64u(secret)) || strings.Contains(string(raw), string(secret)) {
			t.Fatal("fingerprint file holds raw key material")
		}
	}
	d, err := New(Options{Modes: ModeFormats, Fingerprints: set})
	must(err)
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	copy(buf[8000:], le(k.RSA.Primes[1], 128))
	copy(buf[16000:], k.Ed.Seed())
	copy(buf[24000:], le(k.P256.D, 32))
	copy(buf[32000:], be(k.P384.D, 48))
	copy(buf[40000:], le(k.P521.D, 72))
	want := map[int64]string{8000: "rsa.key", 16000: "ed.key", 24000: "p256.ssh", 32000: "p384.der", 40000: "p521.jwk"}
	got := d.ScanBytes(buf)
	for _, g := range got {
		if want[g.Offset] != g.Key {
			t.Errorf("unexpected finding %+v", g)
		}
		delete(want, g.Offset)
	}
	if len(want) > 0 {
		t.Errorf("not found: %v (got %+v)", want, got)
	}
	// Another deployment key: the same keys' fingerprints do not match.
	other, _ := NewFingerprinter(NewDeploymentKey())
	other.AddKey("x", k.Ed)
	if a, b := other.Set().Entries[0], set.Entries[0]; string(a.Tag) == string(b.Tag) {
		t.Error("fingerprints do not depend on the deployment key")
	}
	if _, err := ParseFingerprints([]byte(`{"format":"x"}`)); err == nil {
		t.Error("bad format accepted")
	}
}

// TestScanReaderPieces: Scan (reading straight into the window) finds what ScanBytes finds, however
// the reader splits the input.
func TestScanReaderPieces(t *testing.T) {
	d, err := New(Options{Modes: ModeFormats, Fingerprints: fingerprintSet(t), Chunk: 4096})
	if err != nil {
		t.Fatal(err)
	}
	encs := keytest.Generate().Encodings()
	buf, _ := plantFill(mrand.New(mrand.NewPCG(9, 9)), encs, nil, true)
	want := d.ScanBytes(buf)
	if len(want) < len(encs)/2 {
		t.Fatalf("only %d findings", len(want))
	}
	for name, r := range map[string]io.Reader{"one-byte": iotest.OneByteReader(bytes.NewReader(buf)), "half": iotest.HalfReader(bytes.NewReader(buf)), "whole": bytes.NewReader(buf)} {
		var got []Finding
		if err := d.Scan(context.Background(), r, func(f Finding) error { got = append(got, f); return nil }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %d findings, ScanBytes %d", name, len(got), len(want))
		}
	}
}

// TestFingerprintsProtoMerge: a set survives the trip through keyguard.v1.KeyFingerprints; sets of
// one deployment merge (a key once), sets of two deployments do not.
func TestFingerprintsProtoMerge(t *testing.T) {
	k := keytest.Generate()
	deploy := NewDeploymentKey()
	a, _ := NewFingerprinter(deploy)
	b, _ := NewFingerprinter(deploy)
	must(a.AddKey("ed", k.Ed))
	must(b.AddKey("p256", k.P256))
	must(b.AddKey("ed", k.Ed))
	back, err := FingerprintsFromProto(a.Set().Proto())
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Merge(b.Set()); err != nil {
		t.Fatal(err)
	}
	p256 := 0
	for _, e := range b.Set().Entries {
		if e.Key == "p256" {
			p256++
		}
	}
	if len(back.Keys) != 2 || len(back.Entries) != len(a.Set().Entries)+p256 {
		t.Errorf("merged %d keys, %d entries", len(back.Keys), len(back.Entries))
	}
	d, err := New(Options{Modes: ModeFormats, Fingerprints: back})
	must(err)
	buf := make([]byte, 8192)
	copy(buf[1024:], k.Ed.Seed())
	copy(buf[4096:], be(k.P256.D, 32))
	if got := d.ScanBytes(buf); len(got) != 2 || got[0].Key != "ed" || got[1].Key != "p256" {
		t.Errorf("merged set finds %+v", got)
	}
	other, _ := NewFingerprinter(NewDeploymentKey())
	must(other.AddKey("x", k.P384))
	if err := back.Merge(other.Set()); err == nil {
		t.Error("sets of two deployment keys merged")
	}
	bad := a.Set().Proto()
	bad.Fingerprints[0].Tag = nil
	if _, err := FingerprintsFromProto(bad); err == nil {
		t.Error("malformed published set accepted")
	}
}
