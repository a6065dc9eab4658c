package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/daemon"
	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/fppublish"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/collector/certgen"
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
	writeFile(t, ecFile, keytest.PrivatePEM(keys.P256))
	writeFile(t, edFile, keytest.PrivatePEM(keys.Ed))
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

	deploy := detect.NewDeploymentKey()
	pub := signerPublisher(t, k, c, "signer", deploy)
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
	writeFile(t, ecFile, keytest.PrivatePEM(other)) // the key is rotated
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

// signerPublisher is the publishing half of a signing host's agent: the daemon's publisher and an
// export pipeline with host's certificate to c.
func signerPublisher(t *testing.T, k *pki, c *collector, host string, deploy []byte) *fppublish.Publisher {
	cert, key := k.host(t, host)
	p, err := export.New(export.Config{Collector: c.addr, CAFile: k.caFile, CertFile: cert, KeyFile: key, SpoolDir: filepath.Join(t.TempDir(), "spool")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran; p.Close() })
	pub, err := fppublish.New(deploy, func(ev *keyguardv1.Event) bool { return p.Submit(ev, export.PriorityOf(ev)) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestSentinelFetchesPublishedFingerprints: a sentinel host keeps its fingerprint file current
// (keyguard fetch-fingerprints -every, an operator identity) and the sentinel reloads it (-reload):
// a key the signer's agent publishes after the sentinel started is found in the next dump, raw
// P-256 scalar only, stored at the collector and the dump quarantined.
func TestSentinelFetchesPublishedFingerprints(t *testing.T) {
	b := buildBinaries(t)
	agent := buildAgent(t, b)
	cli := filepath.Join(filepath.Dir(agent), "keyguard")
	k := newPKI(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	c := startCollector(t, b, k, "c1", dsn)
	dir := t.TempDir()
	keys := keytest.Generate()
	keyFile := filepath.Join(dir, "signer.pem")
	writeFile(t, keyFile, keytest.PrivatePEM(keys.Ed))
	pub := signerPublisher(t, k, c, "signer", detect.NewDeploymentKey())
	if _, err := pub.Update([]string{keyFile}); err != nil {
		t.Fatal(err)
	}
	ocert, okey := k.issue(t, "operator-alice", "alice", certgen.OUOperator, false)
	fpFile := filepath.Join(dir, "fetched.json")
	startProc(t, "fetch", dir, cli, "fetch-fingerprints", "-every", "200ms", "-collector", c.addr, "-ca", k.caFile, "-cert", ocert, "-key", okey, "-o", fpFile)
	fileHas := func(want *ecdsa.PrivateKey) bool {
		set, err := detect.LoadFingerprints(fpFile)
		if err != nil {
			return false
		}
		if want == nil {
			return len(set.Keys) == 1
		}
		der, _ := x509.MarshalPKIXPublicKey(&want.PublicKey)
		return slices.ContainsFunc(set.Keys, func(fk detect.FingerprintKey) bool { return string(fk.PublicKey) == string(der) })
	}
	waitFor(t, "the first fetched fingerprint file", func() bool { return fileHas(nil) })

	watched, quarantine := filepath.Join(dir, "crash"), filepath.Join(dir, "quarantine")
	os.Mkdir(watched, 0o755)
	dcert, dkey := k.host(t, "debug-box")
	p := startProc(t, "sentinel", dir, agent, "sentinel", "-watch", watched, "-fingerprints", fpFile, "-reload", "200ms",
		"-state", filepath.Join(dir, "state.json"), "-quarantine", quarantine, "-collector", c.addr,
		"-collector-ca", k.caFile, "-cert", dcert, "-key", dkey, "-spool-dir", filepath.Join(dir, "spool"))
	waitFor(t, "sentinel start", func() bool { return strings.Contains(p.logTail(), "export: connected") })

	rotated, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, keyFile, keytest.PrivatePEM(rotated))
	if sent, err := pub.Update([]string{keyFile}); !sent || err != nil {
		t.Fatalf("Update after the rotation: %v %v", sent, err)
	}
	waitFor(t, "the rotated key in the fetched file", func() bool { return fileHas(rotated) })
	time.Sleep(time.Second) // the sentinel's reload period, and then some
	core := keytest.Filler(mrand.New(mrand.NewPCG(7, 8)), 2<<20, true)
	copy(core[640<<10:], rotated.D.FillBytes(make([]byte, 32)))
	start := time.Now()
	writeFile(t, filepath.Join(watched, "core.signer.99"), core)
	db := openDB(t, dsn)
	var got *keyguardv1.KeyMaterialFound
	for deadline := time.Now().Add(30 * time.Second); got == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("no finding at the collector after %v; sentinel log:\n%s", time.Since(start), p.logTail())
		}
		got = storedFinding(t, db, "debug-box")
	}
	t.Logf("finding stored %v after the dump was written", time.Since(start).Round(time.Millisecond))
	if got.GetOffset() != 640<<10 || got.GetEncoding() != detect.KindECScalarBE || got.GetKey() != keyFile || got.GetQuarantinePath() == "" {
		t.Errorf("stored finding %v", got)
	}
	if !strings.Contains(p.logTail(), "fingerprint file reloaded") {
		t.Errorf("the sentinel did not reload the fingerprint file; its log:\n%s", p.logTail())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 30s", what)
		}
	}
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
