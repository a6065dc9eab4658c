package detect

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"

	"filippo.io/edwards25519"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

type edKey struct {
	name string
	pub  []byte
	pt   *edwards25519.Point // the decoded public point, nil if pub does not decode
}

func newEdKey(k pubkeys.Key) (*edKey, error) {
	pub, ok := k.Public.(ed25519.PublicKey)
	if !ok {
		return nil, nil
	}
	e := &edKey{name: k.Name, pub: bytes.Clone(pub)}
	if pt, err := new(edwards25519.Point).SetBytes(pub); err == nil {
		e.pt = pt
	}
	return e, nil
}

// findEd25519 finds, for configured Ed25519 keys:
//   - seed||public key (64 bytes, Go's ed25519.PrivateKey, libsodium, ref10): exact search for the
//     public key, then one seed check of the 32 bytes before it;
//   - bare 32-byte seeds at aligned offsets that look random: SHA-512 and a scalar base
//     multiplication per candidate (the expensive search), compared with the public point in
//     projective coordinates (no field inversion, no encoding);
//   - expanded keys (clamped SHA-512 scalar || prefix) at aligned offsets: the clamping bits pass
//     1 candidate in 32, then one scalar base multiplication compared likewise.
func (d *Detector) findEd25519(w *window) {
	if len(d.ed) == 0 {
		return
	}
	b, sc := w.b, w.sc
	d.findEdSeedPub(w)
	var s edwards25519.Scalar
	var p edwards25519.Point
	// match returns the key whose public point is clamp(scalar)·B.
	match := func(scalar []byte) string {
		if _, err := s.SetBytesWithClamping(scalar); err != nil {
			return ""
		}
		p.ScalarBaseMult(&s)
		for _, k := range d.ed {
			if k.pt != nil && p.Equal(k.pt) == 1 {
				return k.name
			}
		}
		return ""
	}
	n := len(sc.dense)
	for j := w.aligned(0, d.align); j < n; j += d.align {
		if sc.dense[j] < denseMin {
			continue
		}
		h := sha512.Sum512(b[j : j+32])
		if name := match(h[:32]); name != "" {
			w.add(j, 32, KindEd25519Seed, name)
			sc.learned.add(b[j:j+32], KindEd25519Seed, name)
			continue
		}
		if b[j]&7 == 0 && b[j+31]&0xc0 == 0x40 && j+64 <= len(b) {
			if name := match(b[j : j+32]); name != "" {
				w.add(j, 64, KindEd25519Expanded, name)
			}
		}
	}
}

// findEdSeedPub finds seed||public key pairs: an exact search for each public key, then one seed
// check of the 32 bytes before it.
func (d *Detector) findEdSeedPub(w *window) {
	b, sc := w.b, w.sc
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
}
