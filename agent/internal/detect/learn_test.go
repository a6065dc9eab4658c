package detect

import (
	"crypto/x509"
	"math/big"
	mrand "math/rand/v2"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// TestLearnedSecrets: once a key has been seen (here a PEM of a key that is not configured), its
// raw values are found anywhere later, at any alignment, including CRT values — and also earlier
// in the same window, and in the overlap with the previous window.
func TestLearnedSecrets(t *testing.T) {
	k := keytest.Generate()
	o := k.Other
	o.Precompute()
	pemKey := pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(o), nil)
	p := o.Primes[0]
	type plant struct {
		at   int
		data []byte
		kind string
	}
	const chunk = 8192
	// Window 0 is [0, chunk+MaxMatch); window 1 starts at chunk. The PEM straddles window 0's end,
	// so the key is learned in window 1; the prime before it lies in window 1's overlap.
	w0end := chunk + MaxMatch
	plants := []plant{
		{w0end - 4000, le(p, 128), KindRSAPrimeLE},
		{w0end - 500, pemKey, KindPEMRSA},
		{w0end + 20001, le(p, 128), KindRSAPrimeLE},             // unaligned
		{w0end + 30003, o.D.Bytes(), KindRSADBE},                // unaligned
		{w0end + 40005, o.Precomputed.Dp.Bytes(), KindRSACRTBE}, // CRT value
		{w0end + 50007, le(o.Precomputed.Qinv, len(o.Precomputed.Qinv.Bytes())), KindRSACRTLE},
	}
	buf := keytest.Filler(mrand.New(mrand.NewPCG(30, 31)), w0end+60000, true)
	var want []Finding
	for _, pl := range plants {
		copy(buf[pl.at:], pl.data)
		l := len(pl.data)
		if pl.kind == KindPEMRSA {
			l--
		}
		want = append(want, Finding{Offset: int64(pl.at), Length: l, Kind: pl.kind})
	}
	for _, opts := range []Options{{Modes: ModeFormats, Chunk: chunk}, {Modes: ModeFormats}} {
		d, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		got := map[Finding]int{}
		for _, f := range d.ScanBytes(buf) {
			got[f]++
		}
		for _, w := range want {
			if got[w] != 1 {
				t.Errorf("chunk %d: %+v found %d times; findings %v", opts.Chunk, w, got[w], got)
			}
		}
		if len(got) != len(want) {
			t.Errorf("chunk %d: %d findings, want %d: %v", opts.Chunk, len(got), len(want), got)
		}
	}
}

// TestLearnedFromRawD: a configured key's d found raw teaches its CRT values.
func TestLearnedFromRawD(t *testing.T) {
	k := keytest.Generate()
	r := k.RSA
	r.Precompute()
	var ks []pubkeys.Key
	for _, pk := range k.Pubs {
		if pk.Name == "rsa.pem" {
			ks = append(ks, pk)
		}
	}
	d, err := New(Options{Keys: ks, Modes: ModeRSARaw})
	if err != nil {
		t.Fatal(err)
	}
	buf := keytest.Filler(mrand.New(mrand.NewPCG(32, 33)), 200_000, false)
	copy(buf[8000:], r.D.Bytes())
	dq := new(big.Int).Set(r.Precomputed.Dq)
	copy(buf[150_001:], dq.Bytes())
	got := d.ScanBytes(buf)
	want := []Finding{
		{Offset: 8000, Length: len(r.D.Bytes()), Kind: KindRSADBE, Key: "rsa.pem"},
		{Offset: 150_001, Length: len(dq.Bytes()), Kind: KindRSACRTBE, Key: "rsa.pem"},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
