package detect

import (
	"crypto/rand"
	"math/big"
	"testing"
)

// TestSieve checks the byte-sum residues against math/big for both byte orders.
func TestSieve(t *testing.T) {
	primes := []int64{3, 5, 7, 11, 13, 17, 31, 41, 241}
	for i := 0; i < 2000; i++ {
		w := make([]byte, 128)
		rand.Read(w)
		if i%3 == 0 { // make some multiples of a sieved prime
			x := new(big.Int).SetBytes(w)
			x.Sub(x, new(big.Int).Mod(x, big.NewInt(primes[i%len(primes)])))
			x.FillBytes(w)
		}
		for _, bigEndian := range []bool{true, false} {
			be := w
			if !bigEndian {
				be = make([]byte, len(w))
				for k := range w {
					be[k] = w[len(w)-1-k]
				}
			}
			x := new(big.Int).SetBytes(be)
			want := true
			for _, p := range primes {
				if new(big.Int).Mod(x, big.NewInt(p)).Sign() == 0 {
					want = false
				}
			}
			if got := sieveOK(w, bigEndian); got != want {
				t.Fatalf("sieveOK(%x, %v) = %v, want %v", w, bigEndian, got, want)
			}
		}
	}
}
