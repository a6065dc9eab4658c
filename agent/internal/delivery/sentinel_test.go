package delivery

import (
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/collector/certgen"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
)

// buildAgent builds keyguard-agent and keyguard once per test binary (into the binaries' directory)
// and returns keyguard-agent's path (keyguard is beside it).
func buildAgent(tb testing.TB, b binaries) string {
	tb.Helper()
	agentOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			agentErr = err
			return
		}
		agentBin = filepath.Join(filepath.Dir(b.collector), "keyguard-agent")
		cmd := exec.Command("go", "build", "-o", filepath.Dir(b.collector)+"/", "./agent/cmd/keyguard-agent", "./agent/cmd/keyguard")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = err
			tb.Logf("go build keyguard-agent: %s", out)
		}
	})
	if agentErr != nil {
		tb.Fatalf("build keyguard-agent: %v", agentErr)
	}
	return agentBin
}

// TestSentinelToCollector: keyguard-agent sentinel, given the fingerprints of a signer's key,
// finds the raw Ed25519 seed in a dump copied into its watched directory, quarantines the dump, and
// the finding is stored at a real keyguard-collector (mTLS on loopback, SQLite) under the
// sentinel host's certificate identity within seconds.
func TestSentinelToCollector(t *testing.T) {
	b := buildBinaries(t)
	agent := buildAgent(t, b)
	k := newPKI(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	c := startCollector(t, b, k, "c1", dsn)
	dir := t.TempDir()
	keys := keytest.Generate()
	fp, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := fp.AddKey("signer-ed25519", keys.Ed); err != nil {
		t.Fatal(err)
	}
	fpFile := filepath.Join(dir, "fingerprints.json")
	if err := detect.WriteFingerprints(fpFile, fp.Set()); err != nil {
		t.Fatal(err)
	}
	watched, quarantine := filepath.Join(dir, "debug-share"), filepath.Join(dir, "quarantine")
	os.Mkdir(watched, 0o755)
	cert, key := k.host(t, "debug-box")
	p := startProc(t, "sentinel", dir, agent, "sentinel", "-watch", watched, "-fingerprints", fpFile,
		"-state", filepath.Join(dir, "state.json"), "-quarantine", quarantine, "-collector", c.addr,
		"-collector-ca", k.caFile, "-cert", cert, "-key", key, "-spool-dir", filepath.Join(dir, "spool"))
	time.Sleep(500 * time.Millisecond) // the watch is set up
	core := make([]byte, 4<<20)
	rand.Read(core)
	copy(core[3<<20:], keys.Ed.Seed())
	tmp := filepath.Join(dir, "core.signer.copy")
	if err := os.WriteFile(tmp, core, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := os.Rename(tmp, filepath.Join(watched, "core.signer.4242")); err != nil { // same filesystem: an atomic arrival
		t.Fatal(err)
	}
	db := openDB(t, dsn)
	var got *keyguardv1.KeyMaterialFound
	for deadline := time.Now().Add(30 * time.Second); got == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("no finding at the collector after %v; sentinel log:\n%s", time.Since(start), p.logTail())
		}
		got = storedFinding(t, db, "debug-box")
	}
	t.Logf("finding stored at the collector %v after the dump arrived", time.Since(start).Round(time.Millisecond))
	if got.GetOffset() != 3<<20 || got.GetEncoding() != detect.KindEd25519Seed || got.GetKey() != "signer-ed25519" || filepath.Dir(got.GetQuarantinePath()) != quarantine {
		t.Errorf("stored finding %v", got)
	}
	if _, err := os.Stat(got.GetQuarantinePath()); err != nil {
		t.Errorf("quarantined file: %v", err)
	}
}

func storedFinding(t *testing.T, db *sql.DB, host string) *keyguardv1.KeyMaterialFound {
	rows, err := db.Query(`SELECT payload FROM events WHERE host = $1`, host)
	if err != nil {
		return nil
	}
	defer rows.Close()
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			t.Fatal(err)
		}
		var ev keyguardv1.Event
		if err := proto.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		if m := ev.GetKeyMaterialFound(); m != nil {
			return m
		}
	}
	return nil
}

// TestFingerprintsPublishedToSentinel is the whole flow across three identities on loopback: the
// signing host publishes its keys' fingerprints to the collector (keyguard-agent
// publish-fingerprints, its own certificate), an operator fetches them (keyguard
// fetch-fingerprints), and a sentinel on a debug host finds a dump holding only the raw P-256
// scalar (as little-endian limbs, no PEM anywhere); the finding, attributed to the signer's key
// file, is stored at the collector and the dump quarantined.
func TestFingerprintsPublishedToSentinel(t *testing.T) {
	b := buildBinaries(t)
	agent := buildAgent(t, b)
	cli := filepath.Join(filepath.Dir(agent), "keyguard")
	k := newPKI(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	c := startCollector(t, b, k, "c1", dsn)
	dir := t.TempDir()
	keys := keytest.Generate()
	ecDER, err := x509.MarshalECPrivateKey(keys.P256)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "signer-p256.pem")
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	deploy := filepath.Join(dir, "deployment.key")
	writeFile(t, deploy, []byte(hex.EncodeToString(detect.NewDeploymentKey())+"\n"))
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), args[0], err, out)
		}
	}
	scert, skey := k.host(t, "signer")
	run(agent, "publish-fingerprints", "-deployment-key", deploy, "-collector", c.addr, "-collector-ca", k.caFile,
		"-cert", scert, "-key", skey, "-spool-dir", filepath.Join(dir, "fp-spool"), "-timeout", "30s", keyFile)
	ocert, okey := k.issue(t, "operator-alice", "alice", certgen.OUOperator, false)
	fpFile := filepath.Join(dir, "fetched.json")
	run(cli, "fetch-fingerprints", "-collector", c.addr, "-ca", k.caFile, "-cert", ocert, "-key", okey, "-o", fpFile)

	watched, quarantine := filepath.Join(dir, "crash"), filepath.Join(dir, "quarantine")
	os.Mkdir(watched, 0o755)
	dcert, dkey := k.host(t, "debug-box")
	p := startProc(t, "sentinel", dir, agent, "sentinel", "-watch", watched, "-fingerprints", fpFile,
		"-state", filepath.Join(dir, "state.json"), "-quarantine", quarantine, "-collector", c.addr,
		"-collector-ca", k.caFile, "-cert", dcert, "-key", dkey, "-spool-dir", filepath.Join(dir, "spool"))
	time.Sleep(500 * time.Millisecond)
	core := make([]byte, 2<<20)
	rand.Read(core)
	limbs := keys.P256.D.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		limbs[i], limbs[j] = limbs[j], limbs[i]
	}
	copy(core[777<<10:], limbs)
	start := time.Now()
	writeFile(t, filepath.Join(watched, "core.signer.77"), core)
	db := openDB(t, dsn)
	var got *keyguardv1.KeyMaterialFound
	for deadline := time.Now().Add(30 * time.Second); got == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("no finding at the collector after %v; sentinel log:\n%s", time.Since(start), p.logTail())
		}
		got = storedFinding(t, db, "debug-box")
	}
	t.Logf("finding stored %v after the dump was written", time.Since(start).Round(time.Millisecond))
	if got.GetOffset() != 777<<10 || got.GetEncoding() != detect.KindECScalarLE || got.GetKey() != keyFile || got.GetQuarantinePath() == "" {
		t.Errorf("stored finding %v", got)
	}
}
