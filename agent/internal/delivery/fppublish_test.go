package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/daemon"
	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/fppublish"
	"github.com/keyguard/keyguard/agent/internal/policy"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestAgentPublishesFingerprints: the signing host's agent publishes its protected keys'
// fingerprints itself. The daemon's path without the kernel: the policy's key files as the daemon
// resolves them (policy.Resolve, daemon.KeyFilePaths), the publisher the daemon runs, and an export
// pipeline with the host's certificate to a real keyguard-collector (mTLS on loopback, SQLite).
// The collector stores one set at start, none for an unchanged resolution, a new one when a key
// file is replaced, and the stored set finds the new key's raw scalar and not the old one's.
func TestAgentPublishesFingerprints(t *testing.T) {
	b := buildBinaries(t)
	k := newPKI(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	c := startCollector(t, b, k, "c1", dsn)
	dir := t.TempDir()
	keys := keytest.Generate()
	os.Mkdir(filepath.Join(dir, "keys"), 0o700)
	ecFile, edFile := filepath.Join(dir, "keys", "signer-p256.pem"), filepath.Join(dir, "keys", "signer-ed.pem")
	writeFile(t, ecFile, pemKey(t, keys.P256))
	writeFile(t, edFile, pemKey(t, keys.Ed))
	polFile := filepath.Join(dir, "policy.yaml")
	writeFile(t, polFile, fmt.Appendf(nil, "version: 1\nrules:\n  - name: signer\n    openers: any\n    match: {key_files: [%q]}\n", filepath.Join(dir, "keys", "*.pem")))
	resolved := func() []string {
		pol, err := policy.LoadOffline(polFile)
		if err != nil {
			t.Fatal(err)
		}
		return daemon.KeyFilePaths(policy.Resolve(pol, ""))
	}
	if got := resolved(); !slices.Equal(got, []string{edFile, ecFile}) {
		t.Fatalf("key files %q", got)
	}

	cert, key := k.host(t, "signer")
	p, err := export.New(export.Config{Collector: c.addr, CAFile: k.caFile, CertFile: cert, KeyFile: key, SpoolDir: filepath.Join(dir, "spool")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran; p.Close() })
	deploy := detect.NewDeploymentKey()
	pub, err := fppublish.New(deploy, func(ev *keyguardv1.Event) bool { return p.Submit(ev, export.PriorityOf(ev)) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, dsn)
	publish := func(want bool) {
		t.Helper()
		sent, err := pub.Update(resolved())
		if err != nil || sent != want {
			t.Fatalf("Update: sent %v, %v; want sent %v", sent, err, want)
		}
	}

	start := time.Now()
	publish(true) // the daemon's start
	first := waitSets(t, db, "signer", 1)[0]
	t.Logf("fingerprints stored at the collector %v after the start", time.Since(start).Round(time.Millisecond))
	if len(first.Keys) != 2 || string(first.DeploymentKey) != string(deploy) {
		t.Fatalf("stored set: %d keys", len(first.Keys))
	}
	publish(false) // a policy re-resolution with the same key files

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, ecFile, pemKey(t, other)) // the key is rotated
	publish(true)
	sets := waitSets(t, db, "signer", 2)
	det, err := detect.New(detect.Options{Modes: detect.ModeFormats, Fingerprints: sets[1]})
	if err != nil {
		t.Fatal(err)
	}
	dump := keytest.Filler(mrand.New(mrand.NewPCG(1, 2)), 1<<20, true)
	copy(dump[64<<10:], other.D.FillBytes(make([]byte, 32)))
	copy(dump[512<<10:], keys.P256.D.FillBytes(make([]byte, 32)))
	got := det.ScanBytes(dump)
	if len(got) != 1 || got[0].Offset != 64<<10 || got[0].Kind != detect.KindECScalarBE || got[0].Key != ecFile {
		t.Errorf("the newest set finds %+v, want the rotated key's scalar at %d only", got, 64<<10)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(storedSets(t, db, "signer")); n != 2 {
		t.Errorf("%d sets stored, want 2 (the unchanged resolution published nothing)", n)
	}
}

func pemKey(t *testing.T, priv any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// waitSets waits until host has n fingerprint sets stored and returns them, oldest first.
func waitSets(t *testing.T, db *sql.DB, host string, n int) []*detect.FingerprintSet {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s := storedSets(t, db, host); len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d fingerprint sets of %s at the collector after 30s", n, host)
		}
	}
}

func storedSets(t *testing.T, db *sql.DB, host string) []*detect.FingerprintSet {
	rows, err := db.Query(`SELECT payload FROM events WHERE host = $1 ORDER BY seq`, host)
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []*detect.FingerprintSet
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			t.Fatal(err)
		}
		var ev keyguardv1.Event
		if err := proto.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		if m := ev.GetKeyFingerprints(); m != nil {
			s, err := detect.FingerprintsFromProto(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
	}
	return out
}
