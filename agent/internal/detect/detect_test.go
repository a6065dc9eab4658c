package detect

import (
	"bytes"
	"context"
	"fmt"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

type planted struct {
	enc keytest.Encoding
	at  int // offset of the keytest.Encoding's data in the buffer
}

func (p planted) want() Finding {
	l := p.enc.Length
	if l == 0 {
		l = len(p.enc.Data) - p.enc.Off
	}
	return Finding{Offset: int64(p.at + p.enc.Off), Length: l, Kind: p.enc.Kind, Key: p.enc.Key}
}

// plant lays the encodings out in realistic filler. If boundaries is non-empty, the i-th encoding
// straddles boundaries[i%len] (a window edge) instead of sitting at a random place.
func plant(rng *mrand.Rand, encs []keytest.Encoding, boundaries []int) ([]byte, []planted) {
	return plantFill(rng, encs, boundaries, true)
}

func plantFill(rng *mrand.Rand, encs []keytest.Encoding, boundaries []int, random bool) ([]byte, []planted) {
	var buf []byte
	var ps []planted
	for i, e := range encs {
		gap := 512 + rng.IntN(4096)
		if len(boundaries) > 0 {
			// Place the data so it crosses the next boundary after the current end.
			bnd := boundaries[i%len(boundaries)]
			for bnd < len(buf)+64+len(e.Data) {
				bnd += boundaries[len(boundaries)-1]
			}
			gap = bnd - len(buf) - len(e.Data)/2
		}
		buf = append(buf, keytest.Filler(rng, gap, random)...)
		if e.Align {
			for len(buf)%8 != 0 {
				buf = append(buf, 0)
			}
		}
		ps = append(ps, planted{e, len(buf)})
		buf = append(buf, e.Data...)
	}
	buf = append(buf, keytest.Filler(rng, 2048, random)...)
	return buf, ps
}

func sameFindings(t *testing.T, got []Finding, ps []planted) {
	t.Helper()
	want := map[Finding]string{}
	for _, p := range ps {
		want[p.want()] = p.enc.Name
	}
	seen := map[Finding]bool{}
	for _, f := range got {
		if seen[f] {
			t.Errorf("finding reported twice: %+v", f)
		}
		seen[f] = true
		if _, ok := want[f]; !ok && !partOfWanted(f, want) {
			t.Errorf("unexpected finding %+v", f)
		}
	}
	for f, name := range want {
		if !seen[f] {
			t.Errorf("%s: not found: want %+v; findings near it: %v", name, f, near(got, f.Offset))
		}
	}
}

// partOfWanted reports whether f lies inside a wanted finding and is for the same key: a match
// straddling a window edge may also be reported in part from the earlier window (Stream doc).
func partOfWanted(f Finding, want map[Finding]string) bool {
	for w := range want {
		if f.Offset >= w.Offset && f.Offset+int64(f.Length) <= w.Offset+int64(w.Length) && f.Key == w.Key && f.Length < w.Length {
			return true
		}
	}
	return false
}

func near(fs []Finding, off int64) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Offset > off-512 && f.Offset < off+512 {
			out = append(out, f)
		}
	}
	return out
}

func TestFindsEveryEncoding(t *testing.T) {
	k := keytest.Generate()
	d, err := New(Options{Keys: k.Pubs})
	if err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	buf, ps := plant(rng, k.Encodings(), nil)
	sameFindings(t, d.ScanBytes(buf), ps)
}

// TestBoundaries plants every keytest.Encoding across window edges and feeds the stream in random-sized
// writes, with a small chunk so that there are many windows.
func TestBoundaries(t *testing.T) {
	k := keytest.Generate()
	const chunk = 8192
	d, err := New(Options{Keys: k.Pubs, Chunk: chunk})
	if err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	// Window i covers [i*chunk, i*chunk+chunk+MaxMatch): its end is i*chunk+chunk+MaxMatch.
	var bnds []int
	for i := 0; i < 4; i++ {
		bnds = append(bnds, chunk+MaxMatch+i*chunk)
	}
	encs := k.Encodings()
	buf, ps := plantFill(rng, encs, bnds, false)
	var got []Finding
	s := d.NewStream(func(f Finding) error {
		got = append(got, f)
		return nil
	})
	for rest := buf; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(20000))
		if _, err := s.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	sameFindings(t, got, ps)
}

// TestSettled checks the redactor's contract: a finding delivered after Settled() returned x never
// starts before x.
func TestSettled(t *testing.T) {
	k := keytest.Generate()
	d, err := New(Options{Keys: k.Pubs, Chunk: 4096})
	if err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(5, 6))
	buf, ps := plant(rng, k.Encodings()[:12], nil)
	var settled int64
	var got []Finding
	s := d.NewStream(func(f Finding) error {
		if f.Offset < settled {
			t.Errorf("finding %+v delivered after Settled() = %d", f, settled)
		}
		got = append(got, f)
		return nil
	})
	for rest := buf; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(3000))
		settled = s.Settled()
		if _, err := s.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	settled = s.Settled()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Settled() != int64(len(buf)) {
		t.Errorf("Settled after Close = %d, want %d", s.Settled(), len(buf))
	}
	sameFindings(t, got, ps)
}

func TestScanReaderAndCancel(t *testing.T) {
	k := keytest.Generate()
	d, err := New(Options{Keys: k.Pubs, Modes: ModeFormats})
	if err != nil {
		t.Fatal(err)
	}
	encs := slices.DeleteFunc(k.Encodings(), func(e keytest.Encoding) bool { return !isFormatKind(e.Kind) })
	buf, ps := plant(mrand.New(mrand.NewPCG(7, 8)), encs, nil)
	var got []Finding
	if err := d.Scan(context.Background(), bytes.NewReader(buf), func(f Finding) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	sameFindings(t, got, ps)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Scan(ctx, bytes.NewReader(buf), func(Finding) error { return nil }); err == nil {
		t.Error("Scan with a cancelled context returned nil")
	}
	stop := fmt.Errorf("stop")
	if err := d.Scan(context.Background(), bytes.NewReader(buf), func(Finding) error { return stop }); err != stop {
		t.Errorf("emit error not returned: %v", err)
	}
}

func isFormatKind(k string) bool {
	switch k {
	case KindRSAPrimeBE, KindRSAPrimeLE, KindRSADBE, KindRSADLE, KindECScalarBE, KindECScalarLE, KindEd25519Seed, KindEd25519SeedPub, KindEd25519Expanded:
		return false
	}
	return true
}

// TestAlign1FindsUnalignedRaw plants the raw encodings at odd offsets: Align 1 finds them.
func TestAlign1FindsUnalignedRaw(t *testing.T) {
	k := keytest.Generate()
	var ks []pubkeys.Key
	for _, pk := range k.Pubs {
		if pk.Name == "rsa.pem" || pk.Name == "p256.pem" || pk.Name == "ed.pem" {
			ks = append(ks, pk)
		}
	}
	d, err := New(Options{Keys: ks, Align: 1})
	if err != nil {
		t.Fatal(err)
	}
	var encs []keytest.Encoding
	for _, e := range k.Encodings() {
		if !isFormatKind(e.Kind) && (strings.HasPrefix(e.Name, "rsa/") || strings.HasPrefix(e.Name, "p256/") || strings.HasPrefix(e.Name, "ed25519/")) {
			e.Align = false
			encs = append(encs, e)
		}
	}
	rng := mrand.New(mrand.NewPCG(13, 14))
	var buf []byte
	var ps []planted
	for _, e := range encs {
		buf = append(buf, keytest.Filler(rng, 256+rng.IntN(2048), false)...)
		for len(buf)%8 != 3 {
			buf = append(buf, 0x41)
		}
		ps = append(ps, planted{e, len(buf)})
		buf = append(buf, e.Data...)
	}
	buf = append(buf, keytest.Filler(rng, 512, false)...)
	sameFindings(t, d.ScanBytes(buf), ps)
}
