package detect

import (
	"math"
	"sort"
)

// The RSA private exponent satisfies e·d = 1 + t·λ(N) with 1 <= t < e and λ(N) = φ(N)/g,
// g = gcd(p-1, q-1) (or e·d = 1 + t·φ(N) for keys built with φ). Since φ(N) = N - (p+q) + 1, the
// ratio y = e·d/N equals t/g up to about 2^-1000: the top half of d is fixed by the public key and
// the small fraction t/g (Boneh-Durfee-Frankel). A candidate's leading 64 bits give y to about
// 2^-36, so the cheap test is "is frac(y) within fracEps of a fraction a/g with g <= fracMaxDen".
// A bitmap over frac(y) answers that in one memory access; a hit is confirmed against the sorted
// fractions and then by factoring N from the candidate (exact).
const (
	fracMaxDen = 256 // covers keys with gcd(p-1, q-1) <= 256 (and every φ-based key)
	fracBits   = 24
	fracEps    = 1.0 / (1 << 32)
)

type fracTable struct {
	bitmap []uint64
	vals   []float64
	num    []uint32
	den    []uint32
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func newFracTable(maxDen int) *fracTable {
	type fr struct {
		v    float64
		a, g uint32
	}
	fs := []fr{{0, 0, 1}, {1, 1, 1}}
	for g := 2; g <= maxDen; g++ {
		for a := 1; a < g; a++ {
			if gcd(a, g) == 1 {
				fs = append(fs, fr{float64(a) / float64(g), uint32(a), uint32(g)})
			}
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].v < fs[j].v })
	t := &fracTable{bitmap: make([]uint64, (1<<fracBits)/64)}
	const scale = 1 << fracBits
	for _, f := range fs {
		t.vals = append(t.vals, f.v)
		t.num = append(t.num, f.a)
		t.den = append(t.den, f.g)
		lo := int64(math.Floor((f.v - 2*fracEps) * scale))
		hi := int64(math.Floor((f.v + 2*fracEps) * scale))
		for x := lo; x <= hi; x++ {
			i := uint64(x) & (scale - 1)
			t.bitmap[i>>6] |= 1 << (i & 63)
		}
	}
	return t
}

// lookup returns t and g with |y - t/g| < fracEps, g <= fracMaxDen, if there are any.
func (ft *fracTable) lookup(y float64) (t uint64, g uint32, ok bool) {
	fl := math.Floor(y)
	fr := y - fl
	i := uint64(fr*(1<<fracBits)) & (1<<fracBits - 1)
	if ft.bitmap[i>>6]&(1<<(i&63)) == 0 {
		return 0, 0, false
	}
	k := sort.SearchFloat64s(ft.vals, fr)
	for _, c := range [2]int{k - 1, k} {
		if c < 0 || c >= len(ft.vals) {
			continue
		}
		if math.Abs(ft.vals[c]-fr) < fracEps {
			g = ft.den[c]
			return uint64(fl)*uint64(g) + uint64(ft.num[c]), g, true
		}
	}
	return 0, 0, false
}
