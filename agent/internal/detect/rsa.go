package detect

import (
	"crypto/rsa"
	"encoding/binary"
	"fmt"
	"math/big"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// rsaKey holds what the raw RSA search needs about one configured public key.
type rsaKey struct {
	name   string
	n      *big.Int
	e      int64
	k      int // bytes of N
	pbits  int // bits of each prime (balanced primes of ⌈bits/2⌉ bits)
	pbytes int
	ptop   uint // bit index of the top bit within a prime's most significant byte
	nTop   uint64
	// pMinTop is the top 64 bits (of a pbytes-byte number) of ⌈N / 2^pbits⌉ minus one: since the
	// other prime is below 2^pbits, a prime's leading 8 bytes are at least this.
	pMinTop uint64
	// d search: d = e^-1 mod λ(N) or φ(N) has minimal big-endian length in beLen (leading zero
	// bytes dropped) or nl little-endian limbs; y = float64(top bits) * c approximates t/g.
	dSearch bool
	beLen   []int
	beC     []float64
	leNL    []int
	leC     []float64
}

func newRSAKey(k pubkeys.Key) (*rsaKey, error) {
	pub, ok := k.Public.(*rsa.PublicKey)
	if !ok {
		return nil, nil
	}
	nbits := pub.N.BitLen()
	if nbits < 512 {
		return nil, fmt.Errorf("detect: key %s: RSA modulus of %d bits is too short to search for", k.Name, nbits)
	}
	rk := &rsaKey{name: k.Name, n: pub.N, e: int64(pub.E), k: (nbits + 7) / 8}
	rk.pbits = (nbits + 1) / 2
	rk.pbytes = (rk.pbits + 7) / 8
	rk.ptop = uint(rk.pbits-1) % 8
	rk.nTop = new(big.Int).Rsh(pub.N, uint(nbits-64)).Uint64()
	if rk.pbytes >= 8 {
		pmin := new(big.Int).Rsh(pub.N, uint(rk.pbits))
		if top := new(big.Int).Rsh(pmin, uint(8*rk.pbytes-64)).Uint64(); top > 0 {
			rk.pMinTop = top - 1
		}
	}
	// d is found through its top bits only while t/g can be read from a float64 with room to spare.
	rk.dSearch = pub.E >= 3 && pub.E < 1<<24
	if rk.dSearch {
		// c = e * 2^shift / N, computed in big.Float to keep full precision.
		c := func(shift int) float64 {
			num := new(big.Float).SetInt64(rk.e)
			num.SetMantExp(num, shift)
			q := new(big.Float).Quo(num, new(big.Float).SetInt(pub.N))
			f, _ := q.Float64()
			return f
		}
		// d >= λ/e >= N/(2·fracMaxDen·e) (t >= 1, g <= fracMaxDen): d is at most
		// bitlen(e)+9 bits shorter than N.
		minBits := nbits - big.NewInt(rk.e).BitLen() - 10
		for l := rk.k; l >= 8 && l >= (minBits+7)/8; l-- {
			rk.beLen = append(rk.beLen, l)
			rk.beC = append(rk.beC, c(8*l-64))
		}
		for nl := (nbits + 63) / 64; nl >= 2 && nl >= (minBits+63)/64; nl-- {
			rk.leNL = append(rk.leNL, nl)
			rk.leC = append(rk.leC, c(64*(nl-2)))
		}
	}
	return rk, nil
}

// sieveOK reports whether the integer with the given byte order has no factor 3, 5, 7, 13, 17,
// 241 (which divide 2^24-1) or 11, 31, 41 (which divide 2^40-1). Residues modulo 2^(8m)-1 are sums
// of the bytes by position modulo m, so no division of the big number is needed.
func sieveOK(w []byte, bigEndian bool) bool {
	var s3 [3]uint64
	var s5 [5]uint64
	k3, k5 := 0, 0
	l := len(w)
	for i := range w {
		var c byte
		if bigEndian {
			c = w[l-1-i] // i counts bytes from the least significant one
		} else {
			c = w[i]
		}
		s3[k3] += uint64(c)
		s5[k5] += uint64(c)
		if k3++; k3 == 3 {
			k3 = 0
		}
		if k5++; k5 == 5 {
			k5 = 0
		}
	}
	v3 := (s3[0] + s3[1]<<8 + s3[2]<<16) % (1<<24 - 1)
	if v3%3 == 0 || v3%5 == 0 || v3%7 == 0 || v3%13 == 0 || v3%17 == 0 || v3%241 == 0 {
		return false
	}
	v5 := (s5[0] + s5[1]<<8 + s5[2]<<16 + s5[3]<<24 + s5[4]<<32) % (1<<40 - 1)
	return v5%11 != 0 && v5%31 != 0 && v5%41 != 0
}

// findRSA searches, at Align-ed offsets, for primes (big-endian and little-endian 64-bit limbs) by
// trial division of N, and for d by its top bits (see frac.go) followed by factoring N.
func (d *Detector) findRSA(w *window) {
	if len(d.rsa) == 0 {
		return
	}
	sc := w.sc
	n := len(sc.dense)
	for j := w.aligned(0, d.align); j < n; j += d.align {
		for _, rk := range d.rsa {
			d.rsaAt(w, rk, j)
		}
	}
}

func (d *Detector) rsaAt(w *window, rk *rsaKey, j int) {
	b, sc := w.b, w.sc
	pb := rk.pbytes
	dense := sc.dense[j] >= denseMin
	if dense {
		// Prime, big-endian.
		if j+pb <= len(b) && b[j]>>rk.ptop == 1 && b[j+pb-1]&1 == 1 && binary.BigEndian.Uint64(b[j:]) >= rk.pMinTop {
			win := b[j : j+pb]
			if sc.isDense(j, pb) && sieveOK(win, true) {
				sc.x.SetBytes(win)
				if d.divides(sc, rk) {
					w.add(j, pb, KindRSAPrimeBE, rk.name)
					sc.learned.learnRSA(rk.n, rk.e, new(big.Int).Set(&sc.x), new(big.Int).Set(&sc.q), nil, rk.name)
				}
			}
		}
		// Prime, little-endian limbs.
		lw := (pb + 7) &^ 7
		if j+lw <= len(b) && b[j]&1 == 1 && b[j+pb-1]>>rk.ptop == 1 && allZero(b[j+pb:j+lw]) && binary.LittleEndian.Uint64(b[j+pb-8:]) >= rk.pMinTop {
			win := b[j : j+pb]
			if sc.isDense(j, pb) && sieveOK(win, false) {
				sc.x.SetBytes(sc.reversed(win))
				if d.divides(sc, rk) {
					w.add(j, lw, KindRSAPrimeLE, rk.name)
					sc.learned.learnRSA(rk.n, rk.e, new(big.Int).Set(&sc.x), new(big.Int).Set(&sc.q), nil, rk.name)
				}
			}
		}
	}
	if !rk.dSearch {
		return
	}
	// d, big-endian. The finding starts at d's first non-zero byte: at j itself, or after up to
	// three zero bytes when d sits right-aligned in a fixed-width buffer or is the tail of a
	// math/big Bytes() buffer (with Align 1 every offset is tried, so no skipping is needed).
	m := j
	if d.align > 1 {
		for m < j+3 && m < len(b) && b[m] == 0 {
			m++
		}
	}
	if m < len(sc.dense) && b[m] != 0 && sc.dense[m] >= denseMin && m+8 <= len(b) {
		T := binary.BigEndian.Uint64(b[m:])
		tf := float64(T)
		for i, l := range rk.beLen {
			if m+l > len(b) || b[m+l-1]&1 == 0 {
				continue
			}
			if l == rk.k && T > rk.nTop {
				continue
			}
			y := tf * rk.beC[i]
			if y >= float64(rk.e) || y < 0.25/fracMaxDen {
				continue
			}
			t, g, ok := d.fracs.lookup(y)
			if !ok || !sc.isDense(m, l) {
				continue
			}
			sc.y.SetBytes(b[m : m+l])
			if p, q, ok := d.verifyD(sc, rk, t, g); ok {
				w.add(m, l, KindRSADBE, rk.name)
				sc.learned.learnRSA(rk.n, rk.e, p, q, new(big.Int).Set(&sc.y), rk.name)
				return
			}
		}
	}
	// d, little-endian limbs.
	if dense && b[j]&1 == 1 {
		for i, nl := range rk.leNL {
			top := j + 8*(nl-1)
			if top+8 > len(b) {
				continue
			}
			v := binary.LittleEndian.Uint64(b[top:])
			if v == 0 {
				continue
			}
			v2 := binary.LittleEndian.Uint64(b[top-8:])
			y := (float64(v)*0x1p64 + float64(v2)) * rk.leC[i]
			if y >= float64(rk.e) || y < 0.25/fracMaxDen {
				continue
			}
			t, g, ok := d.fracs.lookup(y)
			if !ok || !sc.isDense(j, 8*nl-8) {
				continue
			}
			sc.y.SetBytes(sc.reversed(b[j : j+8*nl]))
			if p, q, ok := d.verifyD(sc, rk, t, g); ok {
				w.add(j, 8*nl, KindRSADLE, rk.name)
				sc.learned.learnRSA(rk.n, rk.e, p, q, new(big.Int).Set(&sc.y), rk.name)
				return
			}
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// divides reports whether sc.x is a non-trivial factor of N.
func (d *Detector) divides(sc *scratch, rk *rsaKey) bool {
	if sc.x.BitLen() < 2 || sc.x.Cmp(rk.n) >= 0 {
		return false
	}
	sc.q.QuoRem(rk.n, &sc.x, &sc.r)
	return sc.r.Sign() == 0
}

// verifyD reports whether sc.y is a private exponent of rk, and returns the primes, with e·d = 1 + (t/g)·φ(N), by
// factoring N: φ = g(e·d-1)/t, p+q = N-φ+1, and p, q are the roots of x² - (p+q)x + N.
func (d *Detector) verifyD(sc *scratch, rk *rsaKey, t uint64, g uint32) (p, q *big.Int, ok bool) {
	if t == 0 || t >= uint64(rk.e) {
		return nil, nil, false
	}
	num := new(big.Int).Mul(&sc.y, big.NewInt(rk.e))
	num.Sub(num, big.NewInt(1))
	num.Mul(num, big.NewInt(int64(g)))
	tb := new(big.Int).SetUint64(t)
	phi, rem := new(big.Int).QuoRem(num, tb, new(big.Int))
	if rem.Sign() != 0 {
		return nil, nil, false
	}
	s := new(big.Int).Sub(rk.n, phi)
	s.Add(s, big.NewInt(1))
	if s.Sign() <= 0 {
		return nil, nil, false
	}
	disc := new(big.Int).Mul(s, s)
	disc.Sub(disc, new(big.Int).Lsh(rk.n, 2))
	if disc.Sign() < 0 {
		return nil, nil, false
	}
	r := new(big.Int).Sqrt(disc)
	if new(big.Int).Mul(r, r).Cmp(disc) != 0 {
		return nil, nil, false
	}
	p = new(big.Int).Add(s, r)
	p.Rsh(p, 1)
	q = new(big.Int).Sub(s, p)
	if q.Cmp(big.NewInt(1)) <= 0 || new(big.Int).Mul(p, q).Cmp(rk.n) != 0 {
		return nil, nil, false
	}
	return p, q, true
}
