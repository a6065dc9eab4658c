package guard

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The agent's events reach a collector over mTLS and can be queried with the CLI.
func TestEventsReachCollector(t *testing.T) {
	certs := filepath.Join(dir, "certs")
	for _, args := range [][]string{
		{"certs", "init", "-dir", certs},
		{"certs", "host", "-dir", certs, "-name", "vm-signer"},
		{"certs", "operator", "-dir", certs, "-name", "alice"},
	} {
		if out, err := exec.Command("/bin/keyguard-collector", args...).CombinedOutput(); err != nil {
			t.Fatalf("keyguard-collector %v: %v: %s", args, err, out)
		}
	}
	addrFile := filepath.Join(dir, "collector.addr")
	col := exec.Command("/bin/keyguard-collector", "serve", "-listen", "127.0.0.1:0", "-addr-file", addrFile,
		"-db", filepath.Join(dir, "events.db"),
		"-tls-cert", filepath.Join(certs, "collector.crt"), "-tls-key", filepath.Join(certs, "collector.key"),
		"-tls-client-ca", filepath.Join(certs, "ca.crt"), "-revoked-serials", filepath.Join(certs, "revoked.txt"))
	col.Stdout, col.Stderr = os.Stdout, os.Stdout
	if err := col.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { col.Process.Kill(); col.Wait() }()
	var addr string
	for i := 0; i < 300 && addr == ""; i++ {
		b, _ := os.ReadFile(addrFile)
		addr = strings.TrimSpace(string(b))
		time.Sleep(50 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("collector did not start")
	}

	stopAgent()
	if err := startAgent("-collector", addr, "-collector-ca", filepath.Join(certs, "ca.crt"),
		"-cert", filepath.Join(certs, "vm-signer.crt"), "-key", filepath.Join(certs, "vm-signer.key"),
		"-spool-dir", filepath.Join(dir, "spool")); err != nil {
		t.Fatal(err)
	}
	v := startVictim(t, victimEnforce, 0)
	apid, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr)
	if res != "ERR EACCES" {
		t.Fatalf("attack: %q", res)
	}

	query := []string{"events", "-collector", addr, "-ca", filepath.Join(certs, "ca.crt"),
		"-cert", filepath.Join(certs, "alice.crt"), "-key", filepath.Join(certs, "alice.key"),
		"-json", "-pid", strconv.Itoa(apid), "-decision", "denied"}
	var stored map[string]any
	for i := 0; i < 100 && stored == nil; i++ {
		out, err := exec.Command(cliBin, query...).Output()
		if err != nil {
			t.Fatalf("keyguard events: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" {
				json.Unmarshal([]byte(line), &stored)
			}
		}
		if stored == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if stored == nil {
		t.Fatal("the denial never reached the collector")
	}
	b, _ := json.Marshal(stored)
	s := string(b)
	for _, want := range []string{`"host":"vm-signer"`, `"exe_path":"/bin/testproc"`, `"exe_path":"/tmp/kg/victim-enforce"`, `"proc_path":"/proc/`,
		`"operation":"ACCESS_OPERATION_PROC_OPEN"`, `"decision":"DECISION_DENIED"`, `"rule":"signer"`} {
		if !strings.Contains(s, want) {
			t.Errorf("stored event lacks %s: %s", want, s)
		}
	}
}
