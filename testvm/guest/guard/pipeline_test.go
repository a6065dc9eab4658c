package guard

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
)

// The agent's events reach a collector over mTLS and can be queried with the CLI.
func TestEventsReachCollector(t *testing.T) {
	col := guesttest.StartCollector(t, "pipeline", []string{"vm-signer"}, []string{"alice"}, false)
	addr, certs := col.Addr, col.Certs

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
