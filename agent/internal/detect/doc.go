// Package detect finds private key material in byte streams: the one detector used by the core-dump
// redactor, its verifier, and `keyguard scan`.
//
// What is found, and how:
//
//   - PEM: "-----BEGIN <X> PRIVATE KEY-----" … "-----END <X> PRIVATE KEY-----" with a base64 body
//     (real or escaped \n line breaks, RFC 1421 headers): PKCS#1 RSA (also legacy-encrypted),
//     PKCS#8, ENCRYPTED PRIVATE KEY, SEC1 EC, OPENSSH, and any other "PRIVATE KEY" label. Exact
//     string search; a block is reported even if its DER does not parse.
//   - DER without armour: PKCS#1, PKCS#8 (RSA, EC, Ed25519; X25519/Ed448/X448/DSA unattributed),
//     SEC1, and PKCS#8 EncryptedPrivateKeyInfo with PKCS#5/PKCS#12 algorithms. Anchored on the
//     version INTEGER or the PBE OID, then the whole element must parse with encoding/asn1 with no
//     trailing bytes and sane field ranges, so random bytes and certificates do not match.
//   - OpenSSH: the binary "openssh-key-v1" container, parsed field by field.
//   - JWK/JWKS: each JSON object with "kty" and a private member ("d", "p", "q", "dp", "dq", "qi",
//     "oth", or "k" of an oct key), also when written as an escaped JSON string inside another
//     document; parsed with encoding/json.
//
// Format findings are attributed (Finding.Key) to a configured public key when the private key
// parses and its public half equals that key; otherwise Key is empty.
//
// With configured public keys (Options.Keys), raw private material, found by structure because the
// public key does not reveal it. Every raw candidate must first "look random": each 32-byte stretch
// of it has at least 20 distinct byte values, a byte >= 0x80 and fewer than 6 zero bytes. A
// uniformly random secret fails this with probability below 4e-9 per stretch; zero pages,
// pointers, small integers and text fail it, which is what makes the raw searches cheap on real
// memory and costly only on random-looking data (compressed or encrypted buffers, key material).
//
//   - Raw secrets are looked for at Options.Align-ed stream offsets (default 8: heap allocations
//     are 8-byte aligned and an ELF core keeps page alignment between memory and file offsets);
//     Align 1 tries every offset at 8 times the cost.
//   - RSA primes p, q (⌈bits/2⌉-bit, balanced), big-endian and as little-endian 64-bit limbs
//     (math/big, OpenSSL BIGNUM on 64-bit hosts). Cheap filters — top bit set, at least N/2^(bits/2),
//     odd, looks random, no factor 3, 5, 7, 11, 13, 17, 31, 41, 241 — then one division of N (~0.4 µs).
//     Exact: a reported prime divides N.
//   - RSA d, big-endian (from its first non-zero byte, so right-aligned fixed-width buffers and
//     math/big Bytes() tails are found) and as limbs: the top bits of d are fixed by N, e and t/g
//     (see frac.go), so a float test and a bitmap lookup select candidates, and N is then factored
//     from the candidate. Exact. Covers d = e⁻¹ mod φ(N), and d = e⁻¹ mod λ(N) when
//     gcd(p-1, q-1) <= 256 (about 99.5% of keys; Go and OpenSSL 3 use λ), for e < 2^24. A d outside
//     that is not found raw (its primes still are).
//   - EC private scalars (P-256, P-384, P-521), fixed-width big-endian and little-endian limbs,
//     where the bytes look random: one scalar base multiplication per byte order and candidate
//     (crypto/ecdh). This is the expensive search: about 8.5 µs (P-256), 85 µs (P-384), 220 µs
//     (P-521; its zero top bits reject most candidates) per candidate, so random-looking memory is
//     scanned at about 0.5 MB/s for a P-256 key and 0.05 MB/s for a P-384 key with Align 8, while
//     zero pages, pointers and text cost almost nothing (BenchmarkDetect gives the figures).
//   - Ed25519: seed||public key pairs by exact search for the public key (cheap); bare seeds at
//     random-looking offsets (SHA-512 + one base-point multiplication each); expanded keys
//     (clamped scalar || prefix) with the clamping bits set (1 candidate in 32) by one base-point
//     multiplication. The product is compared with the decoded public point in projective
//     coordinates (filippo.io/edwards25519 Point.Equal: two field multiplications, no inversion
//     and no encoding per candidate: a third less CPU than encoding each product, by profile).
//     Random-looking memory is scanned at about 0.6–0.9 MB/s per Ed25519 key.
//
// Fingerprints (Options.Fingerprints, fingerprint.go, fpsearch.go): keyed fingerprints of every
// encoding of given private keys (DER/PEM bodies, JWK members, RSA p, q, d, CRT values, EC scalars,
// Ed25519 seeds and expanded keys, both byte orders) are searched for at every Align-ed offset
// with no public-key arithmetic: a 16-bit keyed prefilter of the 32 bytes there (two 64x64-bit
// multiplications and a bitmap lookup), then HMAC-SHA256 of the candidate encoding for the
// ~n/65536 offsets that pass. Exact (a 128-bit tag), about as fast as memory on any data. The
// fingerprinted keys' public keys attribute format findings. README.md holds what a fingerprint
// file reveals.
//
// Learned secrets: once a stream has seen a private key — parsed from PEM/DER/JWK, configured or
// not, or recovered from a raw prime or d — every secret value of that key (RSA d in both variants,
// p, q, dp, dq, qinv; EC scalar; Ed25519 seed), big- and little-endian, is searched for exactly at
// every offset from the start of that window on (learn.go). This adds unaligned copies, CRT values
// and raw material of keys that are not configured, but only after the key was first seen. A key
// the fingerprints cover is not learned: its fingerprints already find every one of those
// encodings (at Align-ed offsets), and the every-offset pass would cost more than the rest of a
// fingerprint scan.
//
// Not found: secrets split across non-adjacent memory or interleaved, 32-bit limb layouts, RSA CRT
// values before their key has been seen, Go's Montgomery-form Ed25519 scalars, raw material at
// offsets off the Align grid before its key has been seen, keys of other algorithms in raw form,
// raw material of keys neither configured nor seen earlier in the stream, PEM/DER/JWK material that is itself compressed or encrypted inside the stream
// (package scan decompresses whole zstd/lz4/xz/gzip files), and matches longer than MaxMatch.
//
// Streaming: a Stream scans windows of Options.Chunk new bytes plus MaxMatch bytes of overlap, so
// memory is bounded (about 2·Chunk + MaxMatch, 2.1 MiB by default, plus a 2 MiB table shared by a
// Detector with RSA keys) and a match up to MaxMatch bytes long is found wherever it falls. A
// finding is delivered once, after the window holding its end is scanned; Stream.Settled tells a
// redactor which bytes can no longer be part of a future finding. Within a window, findings
// contained in another are dropped.
package detect
