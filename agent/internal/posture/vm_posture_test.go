package posture

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

type finding = guesttest.Finding

func statusPosture(t *testing.T) map[string]finding {
	t.Helper()
	out, err := exec.Command(guesttest.CLIBin, "status", "-socket", guesttest.CtlSock, "-json").Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st struct {
		Posture []finding `json:"posture"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v: %s", err, out)
	}
	m := map[string]finding{}
	for _, f := range st.Posture {
		m[f.Name] = f
		t.Logf("%-8s %s = %s", f.Severity, f.Name, f.Value)
	}
	return m
}

func kernelValue(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return "unavailable"
	}
	return strings.TrimSpace(string(b))
}

// keyguard status lists the host's posture with the values the kernel shows, and a protected
// process's own core-dump limit, filter, dumpability and tracer, as set on the real process.
func TestPostureStatus(t *testing.T) {
	vmenv.Require(t)
	if guesttest.Agent == nil {
		if err := guesttest.StartAgent(); err != nil {
			t.Fatal(err)
		}
	}
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, guesttest.User)
	if err := unix.Prlimit(v.PID, unix.RLIMIT_CORE, &unix.Rlimit{Cur: 4096, Max: 8192}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/coredump_filter", v.PID), []byte("0x13"), 0); err != nil {
		t.Fatalf("coredump_filter: %v", err)
	}
	post := statusPosture(t)

	for _, name := range []string{"kernel.yama.ptrace_scope", "kernel.perf_event_paranoid", "kernel.unprivileged_bpf_disabled",
		"fs.suid_dumpable", "kernel.core_pattern", "kernel.core_pipe_limit", "kernel.kexec_load_disabled", "kernel.modules_disabled"} {
		want := kernelValue(t, "/proc/sys/"+strings.ReplaceAll(name, ".", "/"))
		f, ok := post[name]
		if !ok || !strings.HasPrefix(f.Value, want) {
			t.Errorf("%s: %+v, the kernel says %q", name, f, want)
		}
	}
	if f, want := post["lockdown"], kernelValue(t, "/sys/kernel/security/lockdown"); f.Value != want {
		t.Errorf("lockdown %+v, the kernel says %q", f, want)
	} else if strings.Contains(want, "[none]") && f.Severity != "low" {
		// The suite's policy keeps the defaults side_doors: enforce and modules: deny, so keyguard
		// itself refuses /proc/kcore, /dev/mem and module and kexec loads.
		t.Errorf("lockdown none under keyguard's side-door guards: severity %s, want low", f.Severity)
	}
	for _, n := range []string{"kernel.modules_disabled", "kernel.kexec_load_disabled"} {
		if f := post[n]; f.Value == "0" && f.Severity != "low" {
			t.Errorf("%s = 0 with modules: deny: %+v, want low", n, f)
		}
	}
	// The redactor rule makes keyguard's handler the expected core_pattern, and the agent raised the
	// pipe limit.
	if f := post["kernel.core_pattern"]; !strings.Contains(f.Value, " dump-handler ") || f.Severity != "info" {
		t.Errorf("core_pattern with a redact rule: %+v, want keyguard's handler, info", f)
	}
	if f := post["kernel.core_pipe_limit"]; f.Value != "16" || f.Severity != "info" {
		t.Errorf("core_pipe_limit: %+v, want 16 info", f)
	}
	swaps := kernelValue(t, "/proc/swaps")
	if n := len(strings.Split(swaps, "\n")); n == 1 && post["swap"].Value != "none" {
		t.Errorf("no swap in the VM, finding %+v", post["swap"])
	}
	for _, n := range []string{"hibernation", "kdump"} {
		if f, ok := post[n]; !ok || f.Severity == "" || f.Value == "" {
			t.Errorf("%s: %+v", n, f)
		}
	}
	if f := post["kdump"]; kernelValue(t, "/sys/kernel/kexec_crash_loaded") == "0" && !strings.HasPrefix(f.Value, "no crash kernel loaded") {
		t.Errorf("kdump: %+v, but no crash kernel is loaded", f)
	}
	// Debian's kernels build in IMA: keyguard hashes executables at exec (the suite's policy has a strict
	// rule, which would make anything else high).
	if f := post["executable_digest"]; !strings.HasPrefix(f.Value, "bpf_ima_file_hash") || f.Severity != "info" {
		t.Errorf("executable_digest: %+v, want bpf_ima_file_hash, info", f)
	}

	// The protected process, as the test set it up.
	p := fmt.Sprintf("process.%d.", v.PID)
	for item, w := range map[string]finding{
		"rlimit_core":     {Value: "soft 4096, hard 8192", Severity: "low"},
		"coredump_filter": {Value: "0x13 (anon-private anon-shared elf-headers)", Severity: "low"},
		"dumpable":        {Value: "1", Severity: "low"},
		"tracer":          {Value: "0", Severity: "info"},
	} {
		f, ok := post[p+item]
		if !ok || f.Value != w.Value || f.Severity != w.Severity {
			t.Errorf("%s: %+v, want %q %s", p+item, f, w.Value, w.Severity)
		}
		if ok && !strings.Contains(f.Remediation, "rule signer") {
			t.Errorf("%s remediation does not name the rule: %q", p+item, f.Remediation)
		}
	}
	// The agent protects itself and checks itself too.
	if _, ok := post[fmt.Sprintf("process.%d.rlimit_core", guesttest.Agent.Process.Pid)]; !ok {
		t.Errorf("no findings for the agent's own process %d", guesttest.Agent.Process.Pid)
	}
	// The key file of the keyholder rule is world-readable (0644).
	if f := post["key_file:"+guesttest.KeyFile]; f.Value != "owner 0:0 mode 0644" || f.Severity != "high" {
		t.Errorf("key file: %+v, want owner 0:0 mode 0644, high", f)
	}
	if f := post["key_folder:"+guesttest.Dir+"/keys"]; f.Value != "owner 0:0 mode 0755" || f.Severity != "info" {
		t.Errorf("key folder: %+v, want owner 0:0 mode 0755, info", f)
	}

	out, err := exec.Command(guesttest.CLIBin, "status", "-socket", guesttest.CtlSock).Output()
	if err != nil || !strings.Contains(string(out), "posture (worst first):") || !strings.Contains(string(out), p+"rlimit_core = soft 4096, hard 8192") {
		t.Errorf("status text: %v\n%s", err, out)
	}
}

// healthEvent is an event of kind health.
type healthEvent = guesttest.Event

// waitPostureEvent waits for a "running" health event whose message contains want (the guard suite's
// agent checks posture every 3 s).
func waitPostureEvent(t *testing.T, want string) healthEvent {
	t.Helper()
	return waitPostureEventFunc(t, want, func(msg string) bool { return strings.Contains(msg, want) })
}

func waitPostureEventFunc(t *testing.T, what string, pred func(msg string) bool) healthEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range healthEvents(t) {
			if pred(ev.Health.Message) {
				return ev
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no posture change event: %s", what)
	return healthEvent{}
}

// healthEvents returns the "running" health events (posture changes) in the event log.
func healthEvents(t *testing.T) []healthEvent {
	t.Helper()
	var out []healthEvent
	for _, ev := range guesttest.ReadEvents() {
		if ev.Kind == "health" && ev.Health != nil && ev.Health.State == "running" {
			out = append(out, ev)
		}
	}
	return out
}

// A posture change while the agent runs is reported: a sysctl weakened and restored, a key file that
// appears and goes away; a protected process that comes and goes with ordinary settings is not.
func TestPostureChangeEvents(t *testing.T) {
	vmenv.Require(t)
	if guesttest.Agent == nil {
		if err := guesttest.StartAgent(); err != nil {
			t.Fatal(err)
		}
	}
	const paranoid = "/proc/sys/kernel/perf_event_paranoid"
	orig := kernelValue(t, paranoid)
	if err := os.WriteFile(paranoid, []byte("-1"), 0); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(paranoid, []byte(orig), 0)
	ev := waitPostureEvent(t, "kernel.perf_event_paranoid=-1 (medium)")
	found := false
	for _, f := range ev.Health.Posture {
		found = found || (f.Name == "kernel.perf_event_paranoid" && f.Value == "-1" && f.Severity == "medium")
	}
	if !found {
		t.Errorf("the change event does not carry the new finding: %+v", ev.Health.Posture)
	}
	if err := os.WriteFile(paranoid, []byte(orig), 0); err != nil {
		t.Fatal(err)
	}
	waitPostureEvent(t, "kernel.perf_event_paranoid="+orig+" (")

	// A key file that appears (group-readable) and goes away.
	newKey := guesttest.Dir + "/keys/posture-new.pem"
	if err := os.WriteFile(newKey, []byte("-----BEGIN PRIVATE KEY-----\nposture\n-----END PRIVATE KEY-----\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(newKey)
	waitPostureEvent(t, "new key_file:"+newKey+"=owner 0:0 mode 0640 (high)")
	if err := os.Remove(newKey); err != nil {
		t.Fatal(err)
	}
	waitPostureEventFunc(t, newKey+" gone", func(msg string) bool {
		_, gone, ok := strings.Cut(msg, "gone ")
		return ok && strings.Contains(gone, "key_file:"+newKey)
	})

	// A protected process that starts and exits with ordinary settings is not a posture change.
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, guesttest.User)
	time.Sleep(3500 * time.Millisecond)
	v.Kill()
	time.Sleep(3500 * time.Millisecond)
	for _, ev := range healthEvents(t) {
		if strings.Contains(ev.Health.Message, fmt.Sprintf("process.%d.", v.PID)) {
			t.Errorf("change event for an ordinary protected process: %q", ev.Health.Message)
		}
	}
}
