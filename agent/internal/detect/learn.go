package detect

import (
	"bytes"
	"encoding/binary"
	"math/big"
	"slices"
)

// Once a private key is known — parsed from a PEM/DER/JWK encoding (configured or not), or
// recovered from a raw prime or d — its secret values are searched for exactly, at every offset,
// in the rest of the stream (from the start of the window where it was learned): RSA d (both the
// λ and φ variants), p, q, dp, dq, qinv (and p⁻¹ mod q), EC scalars, in big-endian and
// little-endian byte order, and Ed25519 seeds. This finds copies the structural searches miss:
// unaligned limbs, CRT values, raw material of keys that are not configured.
const (
	maxLearned = 512 // patterns per stream; later keys are not learned
	minLearned = 16  // shorter values are not searched for (too many chance matches)
)

type secret struct {
	pat    []byte
	prefix uint64
	kind   string
	key    string
	fresh  bool // learned while scanning the current window
}

type learnedSet struct {
	secs     []secret
	filter   []uint64 // 2^16-bit bitmap over a hash of the 8-byte prefix
	byPrefix map[uint64][]int
}

func prefixHash(v uint64) uint64 { return (v * 0x9e3779b97f4a7c15) >> 48 }

func (ls *learnedSet) add(pat []byte, kind, key string) {
	if len(pat) < minLearned || len(ls.secs) >= maxLearned {
		return
	}
	v := binary.LittleEndian.Uint64(pat)
	for _, i := range ls.byPrefix[v] {
		if bytes.Equal(ls.secs[i].pat, pat) {
			return
		}
	}
	if ls.filter == nil {
		ls.filter = make([]uint64, 1<<16/64)
		ls.byPrefix = map[uint64][]int{}
	}
	h := prefixHash(v)
	ls.filter[h>>6] |= 1 << (h & 63)
	ls.byPrefix[v] = append(ls.byPrefix[v], len(ls.secs))
	ls.secs = append(ls.secs, secret{pat: bytes.Clone(pat), prefix: v, kind: kind, key: key, fresh: true})
}

// addInt adds x big-endian (minimal) and little-endian (as 64-bit limbs hold it, without the
// zero padding of the top limb).
func (ls *learnedSet) addInt(x *big.Int, kindBE, kindLE, key string) {
	if x == nil || x.Sign() <= 0 {
		return
	}
	be := x.Bytes()
	ls.add(be, kindBE, key)
	leb := slices.Clone(be)
	slices.Reverse(leb)
	ls.add(leb, kindLE, key)
}

// learnRSA adds every secret value of the RSA key with modulus n, exponent e and primes p, q.
// d, if not nil, is the private exponent as found (it may be either variant).
func (ls *learnedSet) learnRSA(n *big.Int, e int64, p, q, d *big.Int, key string) {
	one := big.NewInt(1)
	if p == nil || q == nil || p.Cmp(one) <= 0 || q.Cmp(one) <= 0 || new(big.Int).Mul(p, q).Cmp(n) != 0 {
		if d != nil {
			ls.addInt(d, KindRSADBE, KindRSADLE, key)
		}
		return
	}
	ls.addInt(p, KindRSAPrimeBE, KindRSAPrimeLE, key)
	ls.addInt(q, KindRSAPrimeBE, KindRSAPrimeLE, key)
	if d != nil {
		ls.addInt(d, KindRSADBE, KindRSADLE, key)
	}
	p1 := new(big.Int).Sub(p, one)
	q1 := new(big.Int).Sub(q, one)
	phi := new(big.Int).Mul(p1, q1)
	lambda := new(big.Int).Quo(phi, new(big.Int).GCD(nil, nil, p1, q1))
	eb := big.NewInt(e)
	for _, m := range []*big.Int{lambda, phi} {
		dv := new(big.Int).ModInverse(eb, m)
		if dv == nil {
			continue
		}
		ls.addInt(dv, KindRSADBE, KindRSADLE, key)
		ls.addInt(new(big.Int).Mod(dv, p1), KindRSACRTBE, KindRSACRTLE, key)
		ls.addInt(new(big.Int).Mod(dv, q1), KindRSACRTBE, KindRSACRTLE, key)
	}
	ls.addInt(new(big.Int).ModInverse(q, p), KindRSACRTBE, KindRSACRTLE, key)
	ls.addInt(new(big.Int).ModInverse(p, q), KindRSACRTBE, KindRSACRTLE, key)
}

// learnParts adds the secrets of a parsed private key.
func (ls *learnedSet) learnParts(pp privParts, key string) {
	switch {
	case pp.rsa != nil:
		k := pp.rsa
		e := int64(0)
		if k.E.IsInt64() {
			e = k.E.Int64()
		}
		ls.addInt(k.D, KindRSADBE, KindRSADLE, key)
		ls.addInt(k.Dp, KindRSACRTBE, KindRSACRTLE, key)
		ls.addInt(k.Dq, KindRSACRTBE, KindRSACRTLE, key)
		ls.addInt(k.Qinv, KindRSACRTBE, KindRSACRTLE, key)
		if e > 0 {
			ls.learnRSA(k.N, e, k.P, k.Q, k.D, key)
		}
	case pp.scalar != nil:
		ls.addInt(new(big.Int).SetBytes(pp.scalar), KindECScalarBE, KindECScalarLE, key)
	case pp.edSeed != nil:
		ls.add(pp.edSeed, KindEd25519Seed, key)
	}
}

// findLearned reports every occurrence of a learned secret in the window, then marks all
// secrets as known before the next window.
func (d *Detector) findLearned(w *window) {
	ls := &w.sc.learned
	if len(ls.secs) == 0 {
		return
	}
	b := w.b
	for j := 0; j+minLearned <= len(b); j++ {
		v := binary.LittleEndian.Uint64(b[j:])
		h := prefixHash(v)
		if ls.filter[h>>6]&(1<<(h&63)) == 0 {
			continue
		}
		for _, i := range ls.byPrefix[v] {
			s := &ls.secs[i]
			if j+len(s.pat) <= len(b) && bytes.Equal(b[j:j+len(s.pat)], s.pat) {
				w.out = append(w.out, Finding{Offset: w.base + int64(j), Length: len(s.pat), Kind: s.kind, Key: s.key, fresh: s.fresh})
			}
		}
	}
}

func (ls *learnedSet) settle() {
	for i := range ls.secs {
		ls.secs[i].fresh = false
	}
}
