package sentinel

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// The signer's key fingerprints, published by one agent identity (vm-fp), reach the collector; an
// operator fetches them; a sentinel with its own identity (vm-debug) finds a dump holding only the
// signer's raw P-256 scalar (little-endian limbs, no PEM or DER anywhere) written into its watched
// directory, quarantines it, and the finding is stored at the collector within seconds.
func TestSentinelFindsPublishedKey(t *testing.T) {
	vmenv.Require(t)
	col := guesttest.StartCollector(t, "sentinel", []string{"vm-fp", "vm-debug"}, []string{"alice"}, false)
	addr, certs := col.Addr, col.Certs
	ca := filepath.Join(certs, "ca.crt")
	run := func(bin string, args ...string) {
		t.Helper()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v: %s", bin, args[0], err, out)
		}
	}
	deploy := filepath.Join(guesttest.Dir, "fingerprint-deployment.key")
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(deploy, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(guesttest.TestKeysDir, "p256.pem")
	run(guesttest.AgentBin, "publish-fingerprints", "-deployment-key", deploy, "-collector", addr, "-collector-ca", ca,
		"-cert", filepath.Join(certs, "vm-fp.crt"), "-key", filepath.Join(certs, "vm-fp.key"),
		"-spool-dir", filepath.Join(guesttest.Dir, "fp-spool"), "-timeout", "60s",
		keyFile, filepath.Join(guesttest.TestKeysDir, "ed25519.pem"), filepath.Join(guesttest.TestKeysDir, "rsa.pem"))
	op := []string{"-collector", addr, "-ca", ca, "-cert", filepath.Join(certs, "alice.crt"), "-key", filepath.Join(certs, "alice.key")}
	fp := filepath.Join(guesttest.Dir, "fetched-fingerprints.json")
	run(guesttest.CLIBin, append([]string{"fetch-fingerprints", "-o", fp}, op...)...)

	watched, quarantine := filepath.Join(guesttest.Dir, "debug-share"), filepath.Join(guesttest.Dir, "quarantine")
	os.MkdirAll(watched, 0o755)
	sentinel := exec.Command(guesttest.AgentBin, "sentinel", "-watch", watched, "-fingerprints", fp, "-quarantine", quarantine,
		"-state", filepath.Join(guesttest.Dir, "sentinel-state.json"), "-collector", addr, "-collector-ca", ca,
		"-cert", filepath.Join(certs, "vm-debug.crt"), "-key", filepath.Join(certs, "vm-debug.key"),
		"-spool-dir", filepath.Join(guesttest.Dir, "sentinel-spool"))
	sentinel.Stdout, sentinel.Stderr = os.Stdout, os.Stdout
	if err := sentinel.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sentinel.Process.Kill(); sentinel.Wait() }()
	time.Sleep(time.Second) // its first walk adds the inotify watch

	core := make([]byte, 8<<20)
	rand.Read(core)
	limbs := vmKeys().P256.D.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		limbs[i], limbs[j] = limbs[j], limbs[i]
	}
	copy(core[5<<20:], limbs)
	start := time.Now()
	if err := os.WriteFile(filepath.Join(watched, "core.signer.copy"), core, 0o644); err != nil {
		t.Fatal(err)
	}
	var found string
	for time.Since(start) < 60*time.Second && found == "" {
		out, err := exec.Command(guesttest.CLIBin, append([]string{"events", "-kind", "key_material_found", "-json"}, op...)...).Output()
		if err != nil {
			t.Fatalf("keyguard events: %v", err)
		}
		found = strings.TrimSpace(string(out))
		if found == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if found == "" {
		t.Fatal("the finding never reached the collector")
	}
	t.Logf("finding stored at the collector %v after the dump was written", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{`"host":"vm-debug"`, `"encoding":"ec-scalar-le64"`, `"key":"` + keyFile + `"`, `"offset":"5242880"`, `"quarantine_path":"` + quarantine + `/`} {
		if !strings.Contains(found, want) {
			t.Errorf("stored finding lacks %s: %s", want, found)
		}
	}
	if _, err := os.Stat(filepath.Join(watched, "core.signer.copy")); err == nil {
		t.Error("the dump is still in the watched directory")
	}
}
