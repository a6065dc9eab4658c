package detect

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
)

// fpMatcher finds the encodings of a FingerprintSet at aligned offsets.
type fpMatcher struct {
	keys     fpKeys
	bitmap   [1 << 16 / 64]uint64
	byAnchor map[uint16][]FingerprintEntry
}

func newFPMatcher(s *FingerprintSet) *fpMatcher {
	m := &fpMatcher{keys: deriveFPKeys(s.DeploymentKey), byAnchor: map[uint16][]FingerprintEntry{}}
	for _, e := range s.Entries {
		m.bitmap[e.Anchor>>6] |= 1 << (e.Anchor & 63)
		m.byAnchor[e.Anchor] = append(m.byAnchor[e.Anchor], e)
	}
	return m
}

// fpScratch is a Stream's HMAC state.
type fpScratch struct {
	mac hash.Hash
	sum []byte
}

// findFingerprints hashes the FingerprintAnchor bytes at every aligned offset of the window and
// confirms each prefilter hit with the HMAC tag of the whole encoding. No arithmetic on keys.
func (d *Detector) findFingerprints(w *window) {
	m := d.fp
	b := w.b
	sc := &w.sc.fp
	k0, k1, k2, k3 := m.keys.mix[0], m.keys.mix[1], m.keys.mix[2], m.keys.mix[3]
	for o := w.aligned(0, d.align); o+FingerprintAnchor <= len(b); o += d.align {
		a := b[o : o+FingerprintAnchor : o+FingerprintAnchor]
		h := mum(le64(a)^k0, le64(a[8:])^k1) ^ mum(le64(a[16:])^k2, le64(a[24:])^k3)
		h ^= h >> 32
		h ^= h >> 16
		if m.bitmap[uint16(h)>>6]&(1<<(h&63)) == 0 {
			continue
		}
		d.confirmFingerprint(w, sc, o, uint16(h))
	}
}

func le64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func (d *Detector) confirmFingerprint(w *window, sc *fpScratch, o int, anchor uint16) {
	if sc.mac == nil {
		sc.mac = hmac.New(sha256.New, d.fp.keys.tag)
	}
	for _, e := range d.fp.byAnchor[anchor] {
		if o+e.Length > len(w.b) {
			continue // the next window, which overlaps this one by MaxMatch, holds it whole
		}
		sc.mac.Reset()
		sc.mac.Write(w.b[o : o+e.Length])
		sc.sum = sc.mac.Sum(sc.sum[:0])
		if hmac.Equal(sc.sum[:tagSize], e.Tag) {
			w.add(o+e.Skip, e.Length-e.Skip, e.Kind, e.Key)
		}
	}
}
