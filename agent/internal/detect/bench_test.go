package detect

import (
	"crypto/rand"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	mrand "math/rand/v2"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// BenchmarkDetect reports throughput (MB/s) per mode on three inputs: "memory-no-random" (zero
// runs, pointers, small integers, text), "memory-20%-random" (the same with a fifth of random
// stretches, like compressed or encrypted buffers) and "random" (every byte random: the worst case
// for the raw searches, which then test every aligned candidate).
func BenchmarkDetect(b *testing.B) {
	k := keytest.Generate()
	sub := func(names ...string) []pubkeys.Key {
		var out []pubkeys.Key
		for _, p := range k.Pubs {
			for _, n := range names {
				if p.Name == n {
					out = append(out, p)
				}
			}
		}
		return out
	}
	mem := keytest.Filler(mrand.New(mrand.NewPCG(11, 12)), 8<<20, true)
	plain := keytest.Filler(mrand.New(mrand.NewPCG(13, 14)), 8<<20, false)
	rnd := make([]byte, 8<<20)
	rand.Read(rnd)
	fps := fingerprintSet(b)
	modes := []struct {
		name string
		opts Options
	}{
		{"pem", Options{Modes: ModePEM}},
		{"der", Options{Modes: ModeDER}},
		{"openssh", Options{Modes: ModeOpenSSH}},
		{"jwk", Options{Modes: ModeJWK}},
		{"formats", Options{Modes: ModeFormats}},
		{"fingerprints-5-keys", Options{Modes: ModeFormats, Fingerprints: fps}},
		{"rsa2048-raw", Options{Modes: ModeRSARaw, Keys: sub("rsa.pem")}},
		{"p256-raw", Options{Modes: ModeECRaw, Keys: sub("p256.pem")}},
		{"p384-raw", Options{Modes: ModeECRaw, Keys: sub("p384.pem")}},
		{"ed25519-raw", Options{Modes: ModeEd25519Raw, Keys: sub("ed.pem")}},
		{"all-rsa-p256-ed25519", Options{Keys: sub("rsa.pem", "p256.pem", "ed.pem")}},
	}
	for _, m := range modes {
		d, err := New(m.opts)
		if err != nil {
			b.Fatal(err)
		}
		for _, in := range []struct {
			name string
			data []byte
		}{{"memory-no-random", plain}, {"memory-20%-random", mem}, {"random", rnd}} {
			data := in.data
			if m.opts.Modes&(ModeECRaw|ModeEd25519Raw) != 0 || m.opts.Modes == 0 {
				data = data[:256<<10] // the expensive searches: keep each iteration short
			}
			b.Run(m.name+"/"+in.name, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					s := d.NewStream(func(Finding) error { return nil })
					_, _ = s.Write(data)
					_ = s.Close()
				}
			})
		}
	}
}
