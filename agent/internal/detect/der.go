package detect

import (
	"bytes"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

var (
	derVersion = []byte{0x02, 0x01} // INTEGER, length 1: the version field of every private-key structure
	pkcsOID    = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01}
)

// seqHeaders returns the plausible DER SEQUENCE headers that end right before b[i]: for each,
// the header start and the total element length.
func seqHeaders(b []byte, i int, f func(start, total int)) {
	if i >= 2 && b[i-2] == 0x30 && b[i-1] < 0x80 {
		f(i-2, 2+int(b[i-1]))
	}
	if i >= 3 && b[i-3] == 0x30 && b[i-2] == 0x81 && b[i-1] >= 0x80 {
		f(i-3, 3+int(b[i-1]))
	}
	if i >= 4 && b[i-4] == 0x30 && b[i-3] == 0x82 && b[i-2] != 0 {
		f(i-4, 4+(int(b[i-2])<<8|int(b[i-1])))
	}
}

// findDER reports DER private keys without armour: PKCS#1 RSAPrivateKey, PKCS#8
// PrivateKeyInfo/OneAsymmetricKey (RSA, EC, Ed25519, and X25519/Ed448/X448/DSA unattributed),
// SEC1 ECPrivateKey, and PKCS#8 EncryptedPrivateKeyInfo. Candidates are anchored on the version
// INTEGER (or, for encrypted keys, the PKCS#5/PKCS#12 algorithm OID) and must parse completely
// with encoding/asn1 and pass the range checks in keyparse.go.
func (d *Detector) findDER(w *window) {
	b := w.b
	skipTo := 0
	for i := 0; i+3 <= len(b); {
		k := bytes.Index(b[i:], derVersion)
		if k < 0 {
			break
		}
		p := i + k
		i = p + 1
		if p+3 > len(b) || b[p+2] > 1 || p < skipTo {
			continue
		}
		ver := b[p+2]
		seqHeaders(b, p, func(start, total int) {
			if total < 40 || total > MaxMatch || start+total > len(b) || start < skipTo {
				return
			}
			tlv := b[start : start+total]
			report := func(kind string, pp privParts) {
				key := pubkeys.Match(d.attr, pp.pub)
				w.add(start, total, kind, key)
				w.learn(pp, key)
				skipTo = start + total
			}
			if ver == 0 {
				if pp, ok := parsePKCS1Parts(tlv); ok {
					report(KindDERRSA, pp)
					return
				}
			} else if pp, ok := parseSEC1Parts(tlv, nil); ok {
				report(KindDEREC, pp)
				return
			}
			if pp, ok := parsePKCS8Parts(tlv); ok {
				report(KindDERPKCS8, pp)
			}
		})
	}
	// EncryptedPrivateKeyInfo: SEQ { SEQ { OID pbe, params }, OCTET STRING }.
	for i := 0; i < len(b); {
		k := bytes.Index(b[i:], pkcsOID)
		if k < 0 {
			return
		}
		p := i + k
		i = p + 1
		if p+9 > len(b) || p < 4 || b[p-2] != 0x06 || !(b[p+7] == 5 || b[p+7] == 12) {
			continue
		}
		oidStart := p - 2
		seqHeaders(b, oidStart, func(algStart, _ int) {
			seqHeaders(b, algStart, func(start, total int) {
				if total < 64 || total > MaxMatch || start+total > len(b) {
					return
				}
				if parseEncryptedPKCS8(b[start : start+total]) {
					w.add(start, total, KindDERPKCS8Enc, "")
				}
			})
		})
	}
}
