package fppublish

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestUpdate: a set is submitted when it differs from the last one accepted, not otherwise; files
// that hold no usable private key are left out; a refused submission is retried at the next Update.
func TestUpdate(t *testing.T) {
	k := keytest.Generate()
	dir := t.TempDir()
	write := func(name string, priv any) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, keytest.PrivatePEM(priv), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ed, ec := write("ed.pem", k.Ed), write("p256.pem", k.P256)
	pub := filepath.Join(dir, "ed.pub")
	os.WriteFile(pub, []byte("not a private key"), 0o600)
	var sent []*detect.FingerprintSet
	refuse := false
	p, err := New(detect.NewDeploymentKey(), func(ev *keyguardv1.Event) bool {
		if refuse {
			return false
		}
		s, err := detect.FingerprintsFromProto(ev.GetKeyFingerprints())
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, s)
		return true
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		files   []string
		refuse  bool
		want    bool // submitted
		wantErr bool
		keys    int // keys in the newest set submitted
	}{
		{"nothing to publish yet", []string{pub}, false, false, false, 0},
		{"start", []string{ec, ed, pub}, false, true, false, 2},
		{"same files, other order, duplicates", []string{ed, ed, ec}, false, false, false, 2},
		{"a key file removed", []string{ed}, false, true, false, 1},
		{"export queue full", []string{ed, ec}, true, false, true, 1},
		{"retried", []string{ed, ec}, false, true, false, 2},
	}
	for _, s := range steps {
		refuse = s.refuse
		got, err := p.Update(s.files)
		if got != s.want || (err != nil) != s.wantErr {
			t.Fatalf("%s: submitted %v, error %v; want %v, error %v", s.name, got, err, s.want, s.wantErr)
		}
		if n := len(sent); s.keys > 0 && len(sent[n-1].Keys) != s.keys {
			t.Errorf("%s: newest set has %d keys, want %d", s.name, len(sent[n-1].Keys), s.keys)
		}
	}
	if len(sent) != 3 {
		t.Errorf("%d sets submitted, want 3", len(sent))
	}
}
