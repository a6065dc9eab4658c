package detect

import "math/big"

// denseMin is the minimum number of distinct byte values a 32-byte stretch of a raw secret must
// contain. Such a stretch must also hold a byte >= 0x80 (all 32 below: probability 2.3e-10), which
// rules out base64 and other text, and fewer than denseMaxZeros zero bytes (probability of 6 or
// more: 3.2e-9), which rules out pointers (two zero top bytes each) and small integers. Secrets (primes, d, scalars, seeds) are uniformly random; 32 uniform bytes have fewer
// than 20 distinct values with probability 1.4e-10, so a 4096-bit d (16 stretches) is missed by this
// filter with probability below 3e-9. Zero pages, pointers, text and most code fail it, which is
// what makes the raw searches cheap on real memory.
const (
	denseMin      = 20
	denseMaxZeros = 6
)

// scratch is per-Stream working memory, reused across windows.
type scratch struct {
	dense []uint8 // dense[j] = distinct byte values in b[j:j+32]
	tmp   []byte
	x, q  big.Int
	r, y  big.Int
	z     big.Int

	learned learnedSet
	fp      fpScratch
}

func (sc *scratch) computeDensity(b []byte) {
	n := len(b) - 31
	if n <= 0 {
		sc.dense = sc.dense[:0]
		return
	}
	if cap(sc.dense) < n {
		sc.dense = make([]uint8, n, len(b))
	}
	sc.dense = sc.dense[:n]
	var cnt [256]uint8
	d, hi := uint8(0), 0
	for _, c := range b[:32] {
		if cnt[c] == 0 {
			d++
		}
		cnt[c]++
		hi += int(c >> 7)
	}
	sc.dense[0] = d
	if hi == 0 || cnt[0] >= denseMaxZeros {
		sc.dense[0] = 0
	}
	for j := 1; j < n; j++ {
		o := b[j-1]
		cnt[o]--
		if cnt[o] == 0 {
			d--
		}
		c := b[j+31]
		if cnt[c] == 0 {
			d++
		}
		cnt[c]++
		hi += int(c>>7) - int(o>>7)
		if hi == 0 || cnt[0] >= denseMaxZeros {
			sc.dense[j] = 0
		} else {
			sc.dense[j] = d
		}
	}
}

// isDense reports whether every 32-byte stretch covering b[j:j+l] looks random (see denseMin).
func (sc *scratch) isDense(j, l int) bool {
	end := j + l - 32
	if end >= len(sc.dense) || j < 0 {
		return false
	}
	for o := j; o < end; o += 32 {
		if sc.dense[o] < denseMin {
			return false
		}
	}
	return sc.dense[end] >= denseMin
}

// reversed returns b reversed in a scratch buffer valid until the next call.
func (sc *scratch) reversed(b []byte) []byte {
	if cap(sc.tmp) < len(b) {
		sc.tmp = make([]byte, len(b))
	}
	t := sc.tmp[:len(b)]
	for i, c := range b {
		t[len(b)-1-i] = c
	}
	return t
}
