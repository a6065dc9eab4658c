package detect

import (
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// FuzzDetector checks that no input makes the detector panic, that every finding lies inside the
// input, and that streaming in small windows finds what scanning in one piece finds.
func FuzzDetector(f *testing.F) {
	k := keytest.Generate()
	for _, e := range k.Encodings() {
		f.Add(e.Data)
	}
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n\\n\\\\n-----END PRIVATE KEY-----"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff, 0x02, 0x01, 0x00})
	f.Add([]byte(`{"kty":"RSA","d":"` + "\\\"" + `{"}`))
	// P-384 and P-521 keys are left out: their scalar multiplications make each input slow.
	var ks []pubkeys.Key
	for _, pk := range k.Pubs {
		if pk.Name != "p384.pem" && pk.Name != "p521.pem" {
			ks = append(ks, pk)
		}
	}
	d, err := New(Options{Keys: ks})
	if err != nil {
		f.Fatal(err)
	}
	small, err := New(Options{Keys: ks, Chunk: 64})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := d.ScanBytes(data)
		for _, fd := range got {
			if fd.Offset < 0 || fd.Length <= 0 || fd.Offset+int64(fd.Length) > int64(len(data)) || fd.Kind == "" {
				t.Fatalf("finding out of bounds: %+v (input %d bytes)", fd, len(data))
			}
		}
		covered := func(fs []Finding, want Finding) bool {
			for _, f := range fs {
				if f.Offset <= want.Offset && f.Offset+int64(f.Length) >= want.Offset+int64(want.Length) {
					return true
				}
			}
			return false
		}
		streamed := small.ScanBytes(data)
		for _, fd := range got {
			if !covered(streamed, fd) {
				t.Fatalf("finding %+v not covered when streamed in small windows: %+v", fd, streamed)
			}
		}
	})
}
