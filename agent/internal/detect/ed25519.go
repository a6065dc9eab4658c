package detect

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"math/big"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

type edKey struct {
	name string
	pub  []byte
	u    []byte // the Montgomery u-coordinate of the public point (X25519 encoding)
}

var p25519 = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

func newEdKey(k pubkeys.Key) (*edKey, error) {
	pub, ok := k.Public.(ed25519.PublicKey)
	if !ok {
		return nil, nil
	}
	// u = (1+y)/(1-y) mod p, y = the encoded y-coordinate (RFC 7748 4.1).
	le := bytes.Clone(pub)
	le[31] &= 0x7f
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		le[i], le[j] = le[j], le[i]
	}
	y := new(big.Int).SetBytes(le)
	num := new(big.Int).Add(big.NewInt(1), y)
	den := new(big.Int).Sub(big.NewInt(1), y)
	den.Mod(den, p25519)
	inv := new(big.Int).ModInverse(den, p25519)
	e := &edKey{name: k.Name, pub: bytes.Clone(pub)}
	if inv != nil {
		u := num.Mul(num, inv)
		u.Mod(u, p25519)
		ub := u.FillBytes(make([]byte, 32))
		for i, j := 0, 31; i < j; i, j = i+1, j-1 {
			ub[i], ub[j] = ub[j], ub[i]
		}
		e.u = ub
	}
	return e, nil
}

// findEd25519 finds, for configured Ed25519 keys:
//   - seed||public key (64 bytes, Go's ed25519.PrivateKey, libsodium, ref10): exact search for the
//     public key, then one seed check of the 32 bytes before it;
//   - bare 32-byte seeds at aligned offsets that look random: SHA-512 and a scalar base
//     multiplication per candidate (the expensive search);
//   - expanded keys (clamped SHA-512 scalar || prefix) at aligned offsets: the clamping bits pass
//     1 candidate in 32, then one X25519 multiplication compared with the key's u-coordinate.
func (d *Detector) findEd25519(w *window) {
	if len(d.ed) == 0 {
		return
	}
	b, sc := w.b, w.sc
	seedName := func(seed []byte) string {
		pub := ed25519.NewKeyFromSeed(seed)[32:]
		for _, k := range d.ed {
			if bytes.Equal(pub, k.pub) {
				return k.name
			}
		}
		return ""
	}
	for _, k := range d.ed {
		for i := 0; i < len(b); {
			x := bytes.Index(b[i:], k.pub)
			if x < 0 {
				break
			}
			p := i + x
			i = p + 1
			if p >= 32 && bytes.Equal(ed25519.NewKeyFromSeed(b[p-32 : p])[32:], k.pub) {
				w.add(p-32, 64, KindEd25519SeedPub, k.name)
				sc.learned.add(b[p-32:p], KindEd25519Seed, k.name)
			}
		}
	}
	n := len(sc.dense)
	x := ecdh.X25519()
	for j := w.aligned(0, d.align); j < n; j += d.align {
		if sc.dense[j] < denseMin {
			continue
		}
		if name := seedName(b[j : j+32]); name != "" {
			w.add(j, 32, KindEd25519Seed, name)
			sc.learned.add(b[j:j+32], KindEd25519Seed, name)
			continue
		}
		if b[j]&7 == 0 && b[j+31]&0xc0 == 0x40 && j+64 <= len(b) {
			priv, err := x.NewPrivateKey(b[j : j+32])
			if err != nil {
				continue
			}
			u := priv.PublicKey().Bytes()
			for _, k := range d.ed {
				if k.u != nil && bytes.Equal(u, k.u) {
					w.add(j, 64, KindEd25519Expanded, k.name)
					break
				}
			}
		}
	}
}
