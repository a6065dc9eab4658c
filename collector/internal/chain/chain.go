// Package chain computes the per-host tamper-evident hash chain: every stored event's hash commits to the
// event's content, its place (host, seq, chain position) and the hash of the host's previous stored event.
//
// Without a key the chain detects edits and deletions made by anyone who does not recompute every later
// hash. With a key (HMAC-SHA256), someone with write access to the database but not the key cannot forge
// a consistent chain at all.
package chain

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Size is the length of digests and chain hashes in bytes.
const Size = sha256.Size

const domain = "keyguard-chain-v1\x00"

// Genesis is the previous-hash of a host's first event.
func Genesis(host string) []byte {
	h := sha256.New()
	h.Write([]byte(domain + "genesis\x00"))
	h.Write([]byte(host))
	return h.Sum(nil)
}

// Digest is the SHA-256 of an event's stored bytes.
func Digest(payload []byte) []byte {
	d := sha256.Sum256(payload)
	return d[:]
}

// Hasher computes link hashes, keyed or not. The zero value is unkeyed.
type Hasher struct {
	key []byte
}

// NewHasher returns a Hasher; a nil or empty key gives plain SHA-256.
func NewHasher(key []byte) Hasher {
	return Hasher{key: append([]byte(nil), key...)}
}

// Keyed reports whether the hasher uses a secret key.
func (c Hasher) Keyed() bool { return len(c.key) > 0 }

// Link returns the chain hash of the event at position pos of host's chain with sequence number seq,
// content digest digest, following the event whose chain hash is prev.
func (c Hasher) Link(prev []byte, host string, seq, pos uint64, digest []byte) []byte {
	var h hash.Hash
	if len(c.key) > 0 {
		h = hmac.New(sha256.New, c.key)
	} else {
		h = sha256.New()
	}
	var n [8]byte
	h.Write([]byte(domain))
	h.Write(prev)
	binary.BigEndian.PutUint64(n[:], uint64(len(host)))
	h.Write(n[:])
	h.Write([]byte(host))
	binary.BigEndian.PutUint64(n[:], seq)
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], pos)
	h.Write(n[:])
	h.Write(digest)
	return h.Sum(nil)
}
