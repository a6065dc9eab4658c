package detect

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"
	"math/big"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// ecCurve groups the configured keys of one curve, so each candidate scalar costs one scalar
// multiplication however many keys share the curve.
type ecKey struct {
	curve ecdh.Curve
	size  int // scalar bytes: 32, 48, 66
	names []string
	pubs  [][]byte // uncompressed points
}

func newECKey(k pubkeys.Key) (*ecKey, error) {
	pub, ok := k.Public.(*ecdsa.PublicKey)
	if !ok {
		return nil, nil
	}
	pt, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("detect: key %s: %w", k.Name, err)
	}
	var c ecdh.Curve
	switch pub.Curve {
	case elliptic.P256():
		c = ecdh.P256()
	case elliptic.P384():
		c = ecdh.P384()
	case elliptic.P521():
		c = ecdh.P521()
	default:
		return nil, fmt.Errorf("detect: key %s: unsupported curve", k.Name)
	}
	return &ecKey{curve: c, size: (pub.Curve.Params().BitSize + 7) / 8, names: []string{k.Name}, pubs: [][]byte{pt}}, nil
}

// groupEC merges keys on the same curve.
func groupEC(keys []*ecKey) []*ecKey {
	var out []*ecKey
	for _, k := range keys {
		merged := false
		for _, o := range out {
			if o.curve == k.curve {
				o.names = append(o.names, k.names...)
				o.pubs = append(o.pubs, k.pubs...)
				merged = true
			}
		}
		if !merged {
			out = append(out, &ecKey{curve: k.curve, size: k.size, names: k.names, pubs: k.pubs})
		}
	}
	return out
}

// match returns the name of the key whose public point is scalar·G, or "".
func (k *ecKey) match(scalar []byte) string {
	priv, err := k.curve.NewPrivateKey(scalar)
	if err != nil {
		return ""
	}
	pt := priv.PublicKey().Bytes()
	for i, p := range k.pubs {
		if bytes.Equal(pt, p) {
			return k.names[i]
		}
	}
	return ""
}

// findEC tests, at each aligned offset whose bytes look random, the scalar read big-endian
// (fixed width, as crypto/ecdh, SEC1 and most serialisations hold it) and read as little-endian
// 64-bit limbs (math/big, OpenSSL BIGNUM): one scalar base multiplication per candidate.
func (d *Detector) findEC(w *window) {
	if len(d.ec) == 0 {
		return
	}
	b, sc := w.b, w.sc
	n := len(sc.dense)
	for _, k := range d.ec {
		sz := k.size
		lw := (sz + 7) &^ 7
		p521 := sz == 66
		for j := w.aligned(0, d.align); j < n; j += d.align {
			if sc.dense[j] < denseMin {
				continue
			}
			if j+sz <= len(b) && (!p521 || b[j] <= 1) && sc.isDense(j, sz) {
				if name := k.match(b[j : j+sz]); name != "" {
					w.add(j, sz, KindECScalarBE, name)
					sc.learned.addInt(new(big.Int).SetBytes(b[j:j+sz]), KindECScalarBE, KindECScalarLE, name)
					continue
				}
			}
			if j+lw <= len(b) && (!p521 || b[j+65] <= 1) && allZero(b[j+sz:j+lw]) && sc.isDense(j, sz) {
				if name := k.match(sc.reversed(b[j : j+sz])); name != "" {
					w.add(j, lw, KindECScalarLE, name)
					sc.learned.addInt(new(big.Int).SetBytes(sc.reversed(b[j:j+sz])), KindECScalarBE, KindECScalarLE, name)
				}
			}
		}
	}
}
