package detect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// Finding is one match: Length bytes of key material at Offset in the scanned stream.
type Finding struct {
	Offset int64  `json:"offset"`
	Length int    `json:"length"`
	Kind   string `json:"kind"`
	// Key is the Name of the configured public key the material belongs to, or "" when the material
	// (a PEM, DER, OpenSSH or JWK private key) belongs to none of them or could not be parsed.
	Key string `json:"key,omitempty"`

	fresh bool // a learned secret's match, learned in the window that found it (see learn.go)
}

// Kinds reported in Finding.Kind.
const (
	KindPEMRSA          = "pem-rsa-pkcs1"
	KindPEMRSAEncrypted = "pem-rsa-pkcs1-encrypted" // legacy Proc-Type: 4,ENCRYPTED
	KindPEMPKCS8        = "pem-pkcs8"
	KindPEMPKCS8Enc     = "pem-pkcs8-encrypted"
	KindPEMEC           = "pem-ec-sec1"
	KindPEMOpenSSH      = "pem-openssh"
	KindPEMOther        = "pem-private-key" // any other "... PRIVATE KEY" label (DSA, ...)
	KindDERRSA          = "der-rsa-pkcs1"
	KindDERPKCS8        = "der-pkcs8"
	KindDERPKCS8Enc     = "der-pkcs8-encrypted"
	KindDEREC           = "der-ec-sec1"
	KindOpenSSHBinary   = "openssh-binary" // "openssh-key-v1\0" container without base64 armour
	KindJWK             = "jwk-private"
	KindRSAPrimeBE      = "rsa-prime-be"
	KindRSAPrimeLE      = "rsa-prime-le64"
	KindRSADBE          = "rsa-d-be"
	KindRSADLE          = "rsa-d-le64"
	KindRSACRTBE        = "rsa-crt-be"   // dp, dq, qinv: found only once the key is known (learn.go)
	KindRSACRTLE        = "rsa-crt-le64" // likewise, as 64-bit limbs
	KindECScalarBE      = "ec-scalar-be"
	KindECScalarLE      = "ec-scalar-le64"
	KindEd25519Seed     = "ed25519-seed"
	KindEd25519SeedPub  = "ed25519-seed-pub" // 64-byte seed||public key (Go, libsodium, ref10)
	KindEd25519Expanded = "ed25519-expanded" // clamped SHA-512 scalar || prefix
)

// Mode selects detectors.
type Mode uint32

// Detector modes. The zero Mode in Options means ModeAll.
const (
	ModePEM        Mode = 1 << iota // PEM-armoured private keys
	ModeDER                         // raw DER PKCS#1, PKCS#8 (plain and encrypted), SEC1
	ModeOpenSSH                     // binary openssh-key-v1 containers
	ModeJWK                         // JWK/JWKS JSON objects with private members
	ModeRSARaw                      // primes and d of configured RSA keys
	ModeECRaw                       // private scalars of configured ECDSA keys
	ModeEd25519Raw                  // seeds / expanded keys of configured Ed25519 keys

	ModeFormats = ModePEM | ModeDER | ModeOpenSSH | ModeJWK
	ModeRaw     = ModeRSARaw | ModeECRaw | ModeEd25519Raw
	ModeAll     = ModeFormats | ModeRaw
)

// MaxMatch is the longest match the detector reports. Streams keep this many bytes of overlap
// between windows, so a match up to MaxMatch long is found wherever the buffer boundaries fall.
const MaxMatch = 32 << 10

// DefaultChunk is the number of new bytes scanned per window.
const DefaultChunk = 1 << 20

// Options configures a Detector.
type Options struct {
	// Keys are the public keys whose raw private material is searched for (ModeRaw), and to which
	// PEM/DER/JWK/OpenSSH findings are attributed.
	Keys []pubkeys.Key
	// Modes selects detectors; 0 means ModeAll. Raw modes only do work for keys of their type.
	Modes Mode
	// Align is the stream-offset alignment at which raw secrets (RSA primes and d, EC scalars,
	// Ed25519 seeds and expanded keys, in either byte order) are looked for: heap allocations are
	// at least 8-byte aligned, and ELF cores keep page alignment between memory and file offsets.
	// 0 means 8; 1 searches every offset, at 8 times the cost. Ed25519 seed||public-key pairs and
	// all PEM/DER/OpenSSH/JWK encodings are found at any offset whatever Align is.
	Align int
	// Chunk is the number of new bytes per scan window; 0 means DefaultChunk. Rounded up to a
	// multiple of 8.
	Chunk int
	// Fingerprints, if set, are searched for at Align-ed offsets (every encoding they list, with
	// no public-key arithmetic), and PEM/DER/OpenSSH/JWK findings are attributed to their keys.
	Fingerprints *FingerprintSet
}

// Detector finds private key material. It is immutable and safe for concurrent use; each Stream
// is used by one goroutine.
type Detector struct {
	modes Mode
	align int
	chunk int
	keys  []pubkeys.Key
	attr  []pubkeys.Key // keys findings are attributed to: keys and the fingerprinted keys
	fp    *fpMatcher
	// fpKeys names the fingerprinted keys: a PEM/DER/JWK copy of one of them is not learned
	// (learn.go), since its fingerprints already find every encoding of its secrets.
	fpKeys map[string]bool
	rsa    []*rsaKey
	ec     []*ecKey
	ed     []*edKey
	fracs  *fracTable
}

// New builds a Detector. It precomputes per-key tables; building one for many keys is cheap
// compared to scanning.
func New(opts Options) (*Detector, error) {
	d := &Detector{modes: opts.Modes, align: opts.Align, chunk: opts.Chunk, keys: opts.Keys}
	if d.modes == 0 {
		d.modes = ModeAll
	}
	if d.modes&^ModeAll != 0 {
		return nil, fmt.Errorf("detect: unknown mode bits %#x", uint32(d.modes&^ModeAll))
	}
	if d.align <= 0 {
		d.align = 8
	}
	if d.chunk <= 0 {
		d.chunk = DefaultChunk
	}
	d.chunk = (d.chunk + 7) &^ 7
	d.attr = opts.Keys
	if opts.Fingerprints != nil {
		fk, err := opts.Fingerprints.PublicKeys()
		if err != nil {
			return nil, err
		}
		d.attr = append(slices.Clone(opts.Keys), fk...)
		d.fp = newFPMatcher(opts.Fingerprints)
		d.fpKeys = map[string]bool{}
		for _, k := range fk {
			d.fpKeys[k.Name] = true
		}
	}
	for _, k := range opts.Keys {
		if d.modes&ModeRSARaw != 0 {
			rk, err := newRSAKey(k)
			if err != nil {
				return nil, err
			}
			if rk != nil {
				d.rsa = append(d.rsa, rk)
				if d.fracs == nil {
					d.fracs = newFracTable(fracMaxDen)
				}
				continue
			}
		}
		if d.modes&ModeECRaw != 0 {
			ek, err := newECKey(k)
			if err != nil {
				return nil, err
			}
			if ek != nil {
				d.ec = append(d.ec, ek)
				continue
			}
		}
		if d.modes&ModeEd25519Raw != 0 {
			ed, err := newEdKey(k)
			if err != nil {
				return nil, err
			}
			if ed != nil {
				d.ed = append(d.ed, ed)
			}
		}
	}
	d.ec = groupEC(d.ec)
	return d, nil
}

func (d *Detector) rawActive() bool { return len(d.rsa)+len(d.ec)+len(d.ed) > 0 }

// Stream scans a byte stream written to it in pieces, in memory bounded by Chunk+MaxMatch plus
// per-window scratch of the same order. Findings are delivered to the emit function given to
// NewStream, sorted by offset within each window; each match is delivered once.
type Stream struct {
	d          *Detector
	emit       func(Finding) error
	buf        []byte
	base       int64 // stream offset of buf[0]
	scannedEnd int64 // stream offset of the end of the last scanned window
	sc         scratch
	out        []Finding
	err        error
	closed     bool
}

// A match that straddles a window edge is found whole in the later window; if part of it is a
// match on its own (the seed of a seed||public-key pair, say), that part may also be delivered
// from the earlier window. Both cover key bytes, so a redactor can scrub both.
//
// NewStream returns a Stream that reports findings to emit. If emit returns an error, Write and
// Close return it and the stream stops.
func (d *Detector) NewStream(emit func(Finding) error) *Stream {
	return &Stream{d: d, emit: emit, buf: make([]byte, 0, MaxMatch+d.chunk)}
}

// Write feeds p to the scanner. It never retains p.
func (s *Stream) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(cap(s.buf)-len(s.buf), len(p))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
		if len(s.buf) == cap(s.buf) {
			if err := s.process(false); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// Close scans what is still buffered and delivers the remaining findings. The stream cannot be
// written after Close.
func (s *Stream) Close() error {
	if s.err != nil {
		return s.err
	}
	err := s.process(true)
	s.closed = true
	if err == nil {
		s.err = errors.New("detect: write after Close")
	}
	return err
}

// Settled returns the stream offset below which every finding has been delivered: a finding
// delivered later always has Offset >= Settled(). A redactor can release bytes before it.
func (s *Stream) Settled() int64 {
	if s.closed {
		return s.scannedEnd
	}
	return max(0, s.scannedEnd-MaxMatch)
}

// Offset returns the number of bytes written so far.
func (s *Stream) Offset() int64 { return s.base + int64(len(s.buf)) }

func (s *Stream) process(final bool) error {
	end := s.base + int64(len(s.buf))
	if end > s.scannedEnd {
		s.out = s.d.scanWindow(&s.sc, s.buf, s.base, s.out[:0])
		prev := s.scannedEnd
		for _, f := range s.out {
			if f.Offset+int64(f.Length) <= prev && !f.fresh {
				continue // wholly inside the previous window: already delivered
			}
			f.fresh = false
			if err := s.emit(f); err != nil {
				s.err = err
				return err
			}
		}
		s.scannedEnd = end
	}
	if !final && len(s.buf) > MaxMatch {
		keep := s.buf[len(s.buf)-MaxMatch:]
		s.base = end - MaxMatch
		s.buf = append(s.buf[:0], keep...)
	}
	return nil
}

// Scan reads r to the end and reports every finding to emit. It stops early when ctx is done or
// emit returns an error. It reads straight into the stream's window (no second copy).
func (d *Detector) Scan(ctx context.Context, r io.Reader, emit func(Finding) error) error {
	s := d.NewStream(emit)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		if len(s.buf) == cap(s.buf) {
			if perr := s.process(false); perr != nil {
				return perr
			}
		}
		if errors.Is(err, io.EOF) {
			return s.Close()
		}
		if err != nil {
			return fmt.Errorf("detect: read input at offset %d: %w", s.Offset(), err)
		}
	}
}

// ScanBytes returns every finding in b.
func (d *Detector) ScanBytes(b []byte) []Finding {
	var out []Finding
	s := d.NewStream(func(f Finding) error { out = append(out, f); return nil })
	_, _ = s.Write(b)
	_ = s.Close()
	return out
}

// scanWindow runs every detector over b (stream offset base) and returns the findings sorted by
// offset, with findings contained in another finding removed.
func (d *Detector) scanWindow(sc *scratch, b []byte, base int64, out []Finding) []Finding {
	w := window{b: b, base: base, sc: sc, out: out, fpKeys: d.fpKeys}
	if d.modes&ModePEM != 0 {
		d.findPEM(&w)
	}
	if d.modes&ModeDER != 0 {
		d.findDER(&w)
	}
	if d.modes&ModeOpenSSH != 0 {
		d.findOpenSSH(&w)
	}
	if d.modes&ModeJWK != 0 {
		d.findJWK(&w)
		d.findJWKEscaped(&w)
	}
	if d.fp != nil {
		d.findFingerprints(&w)
	}
	if d.rawActive() {
		sc.computeDensity(b)
		d.findRSA(&w)
		d.findEC(&w)
		d.findEd25519(&w)
	}
	d.findLearned(&w)
	sc.learned.settle()
	out = w.out
	if len(out) < 2 {
		return out
	}
	slices.SortFunc(out, func(a, b Finding) int {
		if a.Offset != b.Offset {
			if a.Offset < b.Offset {
				return -1
			}
			return 1
		}
		if a.Length != b.Length {
			return b.Length - a.Length // longest first at equal offsets
		}
		if a.fresh != b.fresh {
			if !a.fresh {
				return -1 // a detector's own finding before an identical learned one
			}
			return 1
		}
		return 0
	})
	// Drop findings contained in an earlier (longer or equal, starting no later) finding.
	kept := out[:1]
	for _, f := range out[1:] {
		last := kept[len(kept)-1]
		if f.Offset+int64(f.Length) <= last.Offset+int64(last.Length) {
			if f.Key != "" && last.Key == "" {
				kept[len(kept)-1].Key = f.Key
			}
			continue
		}
		kept = append(kept, f)
	}
	return kept
}

// window is the per-window state handed to each detector.
type window struct {
	b    []byte
	base int64
	sc   *scratch
	out  []Finding
	// fpKeys are the keys whose secrets the fingerprints find; they are not learned.
	fpKeys map[string]bool
}

func (w *window) add(off, length int, kind, key string) {
	w.out = append(w.out, Finding{Offset: w.base + int64(off), Length: length, Kind: kind, Key: key})
}

// learn records a parsed private key's secrets for exact search (learn.go), unless the
// fingerprints cover the key: they find its secrets in every encoding at aligned offsets at a
// fraction of the cost of the learned search's every-offset pass.
func (w *window) learn(pp privParts, key string) {
	if pp.present && !w.fpKeys[key] {
		w.sc.learned.learnParts(pp, key)
	}
}

// aligned returns the first index >= from whose stream offset is a multiple of a.
func (w *window) aligned(from, a int) int {
	r := int((w.base + int64(from)) % int64(a))
	if r == 0 {
		return from
	}
	return from + a - r
}

// Arithmetic reports whether the detector does public-key arithmetic per window (raw modes with
// keys of their type): thousands of times the cost per byte of the other searches, worth
// spreading over every core even for small files.
func (d *Detector) Arithmetic() bool { return d.rawActive() }
