// Package systemd holds keyguard's tests on a real Debian 12 system with systemd as PID 1 (vmtest
// -systemd): the .deb packages installed with dpkg, the units started by systemd, core dumps handed
// to systemd-coredump, an upgrade under attack, and removal with and without an operator's token.
// The tests run in file order and build on each other. Anywhere else they skip.
package systemd

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"

	"github.com/keyguard/keyguard/proto/optoken"
	"github.com/keyguard/keyguard/testvm/guest/demo"
)

const (
	signerExe   = "/usr/local/bin/signer"        // protected (policy below), dumps redacted
	plainExe    = "/usr/local/bin/plain-crasher" // the same program, unprotected
	keysDir     = "/etc/signer/keys"
	pubDir      = "/etc/signer/pub"
	policyPath  = "/etc/keyguard/policy.yaml"
	operatorPub = "/etc/keyguard/operator.pub"
	tokenPath   = "/etc/keyguard/uninstall.token"
	eventLog    = "/var/log/keyguard/events.jsonl"
	pins        = "/sys/fs/bpf/keyguard"
	agentUnit   = "keyguard-agent.service"
	collUnit    = "keyguard-collector.service"
	coreDir     = "/var/tmp/cores"
)

const policy = `version: 1
rules:
  - name: signer
    mode: enforce
    dumps: redact
    match:
      executables: [/usr/local/bin/signer]
    public_keys: ["/etc/signer/pub/*.pem"]
  - name: token-signer
    mode: enforce
    dumps: redact
    match:
      executables: [/usr/local/bin/token-signer]
`

var (
	testRoot    = os.Getenv("KEYGUARD_TEST_ROOT")
	operatorKey ed25519.PrivateKey
	origPattern string // systemd-coredump's core_pattern, before keyguard
)

func TestMain(m *testing.M) {
	if os.Getenv("KEYGUARD_SYSTEMD") != "1" {
		fmt.Println("skipping systemd VM tests: they run in the systemd VM (make vmtest-systemd)")
		os.Exit(0)
	}
	if err := setup(); err != nil {
		fmt.Println("setup failed:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func setup() error {
	out, _ := exec.Command("systemctl", "is-system-running", "--wait").CombinedOutput()
	fmt.Printf("system state: %s", out)
	if failed, _ := exec.Command("systemctl", "--failed", "--no-legend", "--plain").CombinedOutput(); len(bytes.TrimSpace(failed)) > 0 {
		fmt.Printf("failed units before the tests:\n%s", failed)
	}
	b, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		return err
	}
	origPattern = strings.TrimSpace(string(b))
	if !strings.HasPrefix(origPattern, "|/lib/systemd/systemd-coredump ") {
		return fmt.Errorf("core_pattern is %q, not systemd-coredump's", origPattern)
	}
	// Crashers inherit an unlimited core size (services get a soft limit of 0).
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{Cur: ^uint64(0), Max: ^uint64(0)}); err != nil {
		return err
	}
	for _, p := range []string{signerExe, plainExe} {
		if err := copyFile(filepath.Join(testRoot, "bin/testproc"), p, 0o755); err != nil {
			return err
		}
	}
	if err := writeTestKeys(); err != nil {
		return err
	}
	if err := setupTokenSigner(); err != nil {
		return err
	}
	_, operatorKey, err = ed25519.GenerateKey(rand.Reader)
	return err
}

// --- helpers ------------------------------------------------------------------------------------

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	os.MkdirAll(filepath.Dir(dst), 0o755)
	return os.WriteFile(dst, b, mode)
}

// sh runs a command and returns its combined output and error; it logs both.
func sh(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("$ %s %s  (%.1f s, err=%v)\n%s", name, strings.Join(args, " "), time.Since(start).Seconds(), err, out)
	return string(out), err
}

func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := sh(t, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

func deb(pkg, version string) string {
	return filepath.Join(testRoot, "debs", fmt.Sprintf("%s_%s_amd64.deb", pkg, version))
}

func unitState(unit string) string {
	out, _ := exec.Command("systemctl", "is-active", unit).Output()
	return strings.TrimSpace(string(out))
}

func mainPID(unit string) int {
	out, _ := exec.Command("systemctl", "show", "-p", "MainPID", "--value", unit).Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

func corePattern(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func pkgStatus(pkg string) string {
	out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output()
	return string(out)
}

// waitFor polls cond every 250 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// event is what the assertions read from a core_dump event of the agent's log.
type event struct {
	Kind   string
	Target *struct{ PID uint32 }
	Dump   *struct{ Action, Reason string }
}

// events reads the agent's event log (format version 2: a header line, then one protojson
// keyguard.v1.Event per line) and keeps its core_dump events.
func events() []event {
	f, err := os.Open(eventLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		ev := &keyguardv1.Event{}
		if protojson.Unmarshal(sc.Bytes(), ev) != nil || ev.GetCoreDump() == nil {
			continue
		}
		d := ev.GetCoreDump()
		out = append(out, event{Kind: "core_dump", Target: &struct{ PID uint32 }{d.GetProcess().GetPid()},
			Dump: &struct{ Action, Reason string }{strings.ToLower(strings.TrimPrefix(d.GetAction().String(), "CORE_DUMP_ACTION_")), d.GetReason()}})
	}
	return out
}

// --- test keys (as in testvm/guest/guard) -------------------------------------------------------

var testKeys struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	pem [][]byte
}

func writeTestKeys() error {
	var err error
	if testKeys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return err
	}
	if testKeys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return err
	}
	if _, testKeys.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return err
	}
	os.MkdirAll(keysDir, 0o755)
	os.MkdirAll(pubDir, 0o755)
	for name, k := range map[string]crypto.Signer{"rsa": testKeys.rsa, "p256": testKeys.ec, "ed25519": testKeys.ed} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		testKeys.pem = append(testKeys.pem, p)
		if err := os.WriteFile(filepath.Join(keysDir, name+".pem"), p, 0o644); err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(k.Public())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(pubDir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// leaks returns the names of the test keys' encodings found in b: PEM, PKCS#8 and PKCS#1 DER, and
// the raw numbers big-endian and as little-endian limbs.
func leaks(b []byte) []string {
	enc := map[string][]byte{}
	for i, p := range testKeys.pem {
		blk, _ := pem.Decode(p)
		enc[fmt.Sprintf("pem%d", i)] = bytes.Split(p, []byte("\n"))[1]
		enc[fmt.Sprintf("pkcs8-der%d", i)] = blk.Bytes
	}
	enc["pkcs1-der"] = x509.MarshalPKCS1PrivateKey(testKeys.rsa)
	num := func(name string, x *big.Int, n int) {
		be := x.FillBytes(make([]byte, n))
		le := make([]byte, n)
		for i := range be {
			le[i] = be[n-1-i]
		}
		enc[name+"-be"], enc[name+"-le"] = be, le
	}
	num("rsa-p", testKeys.rsa.Primes[0], 128)
	num("rsa-q", testKeys.rsa.Primes[1], 128)
	num("rsa-d", testKeys.rsa.D, 256)
	num("ec-d", testKeys.ec.D, 32)
	enc["ed25519-seed"] = testKeys.ed.Seed()
	var found []string
	for name, e := range enc {
		if bytes.Contains(b, e) {
			found = append(found, name)
		}
	}
	return found
}

// --- crashes ------------------------------------------------------------------------------------

// crash runs exe's crash mode with the test keys loaded and returns the crashing pid and its
// thread count.
func crash(t *testing.T, exe string, args ...string) (pid, threads int) {
	t.Helper()
	cmd := exec.Command(exe, append([]string{"crash", "-keys", keysDir}, args...)...)
	out, _ := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "CRASHING") {
			fmt.Sscanf(l, "CRASHING pid=%d keys=%d threads=%d", &pid, new(int), &threads)
		}
	}
	if pid == 0 {
		t.Fatalf("%s crash said %q", exe, out)
	}
	return pid, threads
}

// coredump waits until systemd-coredump has stored pid's dump and returns it (coredumpctl dump).
func coredump(t *testing.T, pid int) []byte {
	t.Helper()
	os.MkdirAll(coreDir, 0o700)
	file := filepath.Join(coreDir, fmt.Sprintf("core.%d", pid))
	var last []byte
	if !waitFor(3*time.Minute, func() bool {
		out, err := exec.Command("coredumpctl", "--no-pager", "-q", "dump", strconv.Itoa(pid), "-o", file).CombinedOutput()
		last = out
		return err == nil
	}) {
		list, _ := exec.Command("coredumpctl", "--no-pager", "list").CombinedOutput()
		j, _ := exec.Command("journalctl", "--no-pager", "-n", "40", "-t", "systemd-coredump", "-t", "keyguard-dump-handler").CombinedOutput()
		t.Fatalf("systemd-coredump has no dump of pid %d: %s\ncoredumpctl list:\n%s\njournal:\n%s", pid, last, list, j)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	info := must(t, "coredumpctl", "--no-pager", "list", strconv.Itoa(pid))
	if !strings.Contains(info, "present") {
		t.Errorf("coredumpctl list %d does not say the core file is present", pid)
	}
	return b
}

// scan runs `keyguard scan` (with the test keys' public halves) on a file and returns its exit code.
func scan(t *testing.T, file string) int {
	t.Helper()
	pubs, _ := filepath.Glob(pubDir + "/*.pem")
	cmd := exec.Command("keyguard", "scan", "-pubkeys", strings.Join(pubs, ","), file)
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("keyguard scan %s: %v: %s", file, err, lines[len(lines)-1]) // the summary line
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func countThreads(t *testing.T, b []byte) int {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil || f.Type != elf.ET_CORE {
		t.Fatalf("not an ELF core: %v", err)
	}
	n := 0
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		d := make([]byte, p.Filesz)
		p.ReadAt(d, 0)
		for len(d) >= 12 {
			namesz, descsz := int(le32(d[0:])), int(le32(d[4:]))
			if le32(d[8:]) == 1 { // NT_PRSTATUS, one per thread
				n++
			}
			adv := 12 + (namesz+3)&^3 + (descsz+3)&^3
			if adv > len(d) {
				break
			}
			d = d[adv:]
		}
	}
	return n
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// --- victims and attacks ------------------------------------------------------------------------

type victim struct {
	cmd  *exec.Cmd
	pid  int
	addr string
}

func startVictim(t *testing.T, exe string) *victim {
	t.Helper()
	cmd := exec.Command(exe, "hold")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stdin = nil
	cmd.Stderr = os.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("victim: %v (%q)", err, line)
	}
	v := &victim{cmd: cmd}
	for _, kv := range strings.Fields(line)[1:] {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "pid":
			v.pid, _ = strconv.Atoi(val)
		case "addr":
			v.addr = val
		}
	}
	if v.pid == 0 {
		t.Fatalf("victim said %q", line)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return v
}

// attack: root tries to ptrace-attach to the victim and read it. "ERR EPERM" means denied.
func (v *victim) attack() string {
	out, err := exec.Command(filepath.Join(testRoot, "bin/testproc"), "attack", "attach", strconv.Itoa(v.pid), strconv.Itoa(v.pid), v.addr).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("error %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// startLimit starts the unconfigured agent: it fails (no policy), systemd restarts it until the start
// limit trips, and then keyguard-agent-failed.service logs an alert saying nothing is enforced, clears
// the failed state and arms the retry timer. The timer is stopped again afterwards.
func startLimit(t *testing.T) {
	t.Helper()
	since := time.Now().Add(-time.Second).Format("2006-01-02 15:04:05")
	sh(t, "systemctl", "start", agentUnit)
	var alert string
	ok := waitFor(90*time.Second, func() bool {
		out, _ := exec.Command("journalctl", "-q", "-o", "cat", "-p", "alert", "-t", "keyguard-agent-failed", "--since", since).Output()
		alert = strings.TrimSpace(string(out))
		return alert != ""
	})
	if !ok {
		t.Fatalf("no alert after the agent's start limit tripped; agent %s; journal:\n%s", unitState(agentUnit),
			must(t, "journalctl", "-q", "--no-pager", "-u", agentUnit, "-u", "keyguard-agent-failed.service", "--since", since))
	}
	t.Logf("alert: %s", alert)
	// The alert comes only once the unit is failed, i.e. systemd stopped restarting it (on systemd 252
	// the unit's Result stays "exit-code" when the start limit trips).
	if !strings.Contains(alert, "NOTHING IS ENFORCED") || !strings.Contains(alert, "stopped restarting") {
		t.Errorf("alert does not say nothing is enforced after the start limit: %s", alert)
	}
	if !waitFor(20*time.Second, func() bool { return unitState("keyguard-agent-retry.timer") == "active" }) {
		out, _ := sh(t, "systemctl", "status", "--no-pager", "keyguard-agent-retry.timer")
		t.Errorf("retry timer not armed: %s", out)
	}
	sh(t, "systemctl", "stop", "keyguard-agent-retry.timer", agentUnit)
	sh(t, "systemctl", "reset-failed", agentUnit)
}

// --- the tests, in order ------------------------------------------------------------------------

// Both packages install; neither starts before it is configured, and each says what it needs.
// Once configured, systemd runs both and the agent takes over core_pattern.
func TestInstall(t *testing.T) {
	// The operator CLI is its own package; the agent's depends on it.
	must(t, "dpkg", "-i", deb("keyguard", "1.0"))
	if owner := strings.TrimSpace(must(t, "dpkg-query", "-S", "/usr/bin/keyguard")); owner != "keyguard: /usr/bin/keyguard" {
		t.Errorf("/usr/bin/keyguard belongs to %q", owner)
	}
	if out := must(t, "keyguard", "token", "-h"); !strings.Contains(out, "keyguard token keygen") {
		t.Errorf("keyguard token -h from its own package: %s", out)
	}
	out := must(t, "dpkg", "-i", deb("keyguard-collector", "1.0"))
	if !strings.Contains(out, "not started: missing") || unitState(collUnit) == "active" {
		t.Errorf("collector without certificates: state %s, output does not say what is missing", unitState(collUnit))
	}
	out = must(t, "dpkg", "-i", deb("keyguard-agent", "1.0"))
	if !strings.Contains(out, policyPath) || !strings.Contains(out, operatorPub) || unitState(agentUnit) == "active" {
		t.Errorf("agent without policy: state %s, output does not name %s and %s", unitState(agentUnit), policyPath, operatorPub)
	}
	if p := corePattern(t); p != origPattern {
		t.Errorf("core_pattern changed before the agent ran: %q", p)
	}
	startLimit(t)
	for pkg, want := range map[string][]string{
		"keyguard-agent":     {"/etc/default/keyguard-agent"},
		"keyguard-collector": {"/etc/default/keyguard-collector", "/etc/keyguard/collector.yaml"},
	} {
		conf := must(t, "dpkg-query", "-W", "-f=${Conffiles}", pkg)
		for _, f := range want {
			if !strings.Contains(conf, f) {
				t.Errorf("%s: %s is not a conffile: %q", pkg, f, conf)
			}
		}
	}

	// The collector, with a trial PKI, as its postinst says.
	must(t, "keyguard-collector", "certs", "init", "-dir", "/etc/keyguard", "-server-name", "localhost")
	host, _ := os.Hostname()
	must(t, "keyguard-collector", "certs", "host", "-dir", "/etc/keyguard", "-name", host)
	must(t, "systemctl", "start", collUnit)

	// The agent: policy, operator key, collector connection; then what its postinst says.
	pub, err := optoken.MarshalPublicKeyPEM(operatorKey.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(operatorPub, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyPath, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	def := fmt.Sprintf("KEYGUARD_COLLECTOR=localhost:7443\nKEYGUARD_COLLECTOR_CA=/etc/keyguard/ca.crt\nKEYGUARD_CERT=/etc/keyguard/%s.crt\nKEYGUARD_KEY=/etc/keyguard/%s.key\n", host, host)
	if err := os.WriteFile("/etc/default/keyguard-agent", []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, "systemctl", "enable", "--now", agentUnit)
	if !waitFor(90*time.Second, func() bool { return exec.Command("keyguard", "status").Run() == nil }) {
		sh(t, "journalctl", "--no-pager", "-u", agentUnit)
		t.Fatalf("the agent does not answer keyguard status (unit %s)", unitState(agentUnit))
	}
	if unitState(collUnit) != "active" {
		sh(t, "journalctl", "--no-pager", "-u", collUnit)
		t.Errorf("collector unit is %s", unitState(collUnit))
	}
	if p := corePattern(t); !strings.HasPrefix(p, "|/usr/bin/keyguard-agent dump-handler ") {
		t.Errorf("core_pattern = %q, want keyguard's handler", p)
	}
	if !exists(pins) {
		t.Errorf("nothing pinned in %s", pins)
	}
}

// Routine tools against a protected signing service raise nothing at warning level, while an attack in
// the same window does and is an alert: for KEYGUARD_NOISE_DURATION (default 10 minutes) the signer
// logs to journald every 5 s, crashes once (systemd-coredump stores its redacted dump; systemd restarts
// it), and ps, top -b -n 1, systemctl status, pgrep and journalctl look at it every 15 s; halfway, root
// attacks it (ptrace attach, /proc/PID/mem). Afterwards the collector must hold no event at warning
// level or above from the window except the attacks and the crash's own core_dump record, and each
// attack must have reached a webhook receiver in the test as a signed alert.
func TestRoutineToolsQuietAttacksAlerted(t *testing.T) {
	d := noiseDuration(t)
	rcv := alertsToWebhook(t)
	conn := operatorArgs(t)
	start := time.Now().Add(-time.Second)
	pid := startTokenSigner(t)
	crashed := pid
	exec.Command("kill", "-ABRT", strconv.Itoa(crashed)).Run()
	pid = newPID(t, tokenSignerUnit, crashed)
	t.Logf("token signer pid %d crashed (SIGABRT); restarted as pid %d; routine tools for %s", crashed, pid, d)

	attacks := []demo.Attack{{Op: "attach", What: "ptrace attach"}, {Op: "mem", What: "read /proc/PID/mem"}}
	attacked, rounds := 0, 0
	for end := start.Add(d); time.Now().Before(end); rounds++ {
		if rounds > 0 {
			time.Sleep(15 * time.Second)
		}
		if p := mainPID(tokenSignerUnit); p != pid {
			t.Fatalf("the token signer's pid changed from %d to %d during the window", pid, p)
		}
		for _, f := range toolRound(pid) {
			t.Errorf("round %d: %s", rounds, f)
		}
		if attacked == 0 && time.Since(start) > d/2 {
			attacked = attackSigner(t, pid, attacks)
		}
	}
	if attacked == 0 { // a window too short for a round after its middle
		attacked = attackSigner(t, pid, attacks)
	}
	if !waitFor(5*time.Minute, func() bool {
		for _, e := range events() {
			if e.Target != nil && e.Target.PID == uint32(crashed) && e.Dump != nil && (e.Dump.Action == "redacted" || e.Dump.Action == "discarded") {
				return true
			}
		}
		return false
	}) {
		t.Errorf("no final core_dump event for the crashed signer (pid %d)", crashed)
	}

	// Every attack is an alert at the webhook (signature checked by the receiver).
	alerted := map[string]bool{}
	waitFor(2*time.Minute, func() bool {
		for _, al := range rcv.Alerts() {
			for _, a := range attacks {
				if al.Event != nil && int(al.Event.GetMemoryAccess().GetTarget().GetPid()) == attacked && a.Shows(al.Event) {
					alerted[a.Op] = true
				}
			}
		}
		return len(alerted) == len(attacks)
	})
	for _, a := range attacks {
		if !alerted[a.Op] {
			t.Errorf("attack %s (pid %d) did not reach the webhook as an alert; alerts received: %+v", a.What, attacked, rcv.Alerts())
		}
	}
	if r := rcv.Refused(); len(r) > 0 {
		t.Errorf("the webhook receiver refused %d requests: %v", len(r), r)
	}

	since := append(conn, "-since", start.UTC().Format(time.RFC3339))
	all, err := demo.Stored("keyguard", "info", since...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d tool rounds in %s; all events stored in the window, per actor, kind and severity:\n%s", rounds, time.Since(start).Round(time.Second), perActor(all))
	warn, err := demo.StoredAtWarning("keyguard", since...)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	var noise []*keyguardv1.StoredEvent
	for _, se := range warn {
		ev := se.GetEvent()
		m, dump := ev.GetMemoryAccess(), ev.GetCoreDump()
		switch {
		case m != nil && int(m.GetTarget().GetPid()) == attacked && strings.HasSuffix(demo.Actor(ev), "/testproc"):
			for _, a := range attacks {
				if a.Shows(ev) {
					stored[a.Op] = true
				}
			}
		case dump != nil && int(dump.GetProcess().GetPid()) == crashed:
			// The crash's own record (a protected process dumped core; redacted: medium), not the tools.
		default:
			noise = append(noise, se)
		}
	}
	if len(noise) > 0 {
		var first []string
		for _, se := range noise[:min(len(noise), 10)] {
			first = append(first, demo.Describe(se.GetEvent()))
		}
		t.Errorf("%d events stored at warning level or above are not attacks of the test; per actor, kind and severity:\n%s\nthe first ones:\n  %s",
			len(noise), perActor(noise), strings.Join(first, "\n  "))
	}
	for _, a := range attacks {
		if !stored[a.Op] {
			t.Errorf("attack %s is not stored at warning level or above", a.What)
		}
	}
}

// An unprotected crasher's dump goes through keyguard's handler to systemd-coredump untouched:
// every encoding of the keys it held is in the stored dump, and keyguard scan finds them.
func TestUnprotectedDumpReachesCoredump(t *testing.T) {
	pid, threads := crash(t, plainExe, "-sig", "SEGV")
	b := coredump(t, pid)
	l := leaks(b)
	if len(l) < 10 {
		t.Errorf("the unprotected dump (%d bytes) holds only %v of the key encodings: it was altered, or the search is broken", len(b), l)
	}
	if n := countThreads(t, b); n < threads { // the Go runtime may start a thread after the count
		t.Errorf("dump has %d threads, the process had %d", n, threads)
	}
	if code := scan(t, filepath.Join(coreDir, fmt.Sprintf("core.%d", pid))); code != 1 {
		t.Errorf("keyguard scan on the unprotected dump exited %d, want 1 (key material found)", code)
	}
}

// A protected crasher's dump is redacted by keyguard, handed to systemd-coredump and listed by
// coredumpctl; the stored dump holds no key material and still parses with all its threads.
func TestProtectedDumpRedactedIntoCoredump(t *testing.T) {
	// One crash: each redaction of the ~80 MB core takes minutes under TCG; the guard suite covers
	// signals, threads and forked children.
	for _, c := range []struct {
		sig    string
		thread bool
	}{{"SEGV", false}} {
		t.Run(c.sig, func(t *testing.T) {
			args := []string{"-sig", c.sig}
			if c.thread {
				args = append(args, "-thread")
			}
			pid, threads := crash(t, signerExe, args...)
			var ev event
			if !waitFor(5*time.Minute, func() bool {
				for _, e := range events() {
					if e.Kind == "core_dump" && e.Target != nil && e.Target.PID == uint32(pid) && e.Dump != nil &&
						(e.Dump.Action == "redacted" || e.Dump.Action == "discarded") { // not "to_handler"
						ev = e
						return true
					}
				}
				return false
			}) {
				t.Fatalf("no core_dump event for pid %d", pid)
			}
			if ev.Dump.Action != "redacted" {
				t.Fatalf("dump of pid %d: %s (%s)", pid, ev.Dump.Action, ev.Dump.Reason)
			}
			b := coredump(t, pid)
			if l := leaks(b); len(l) > 0 {
				t.Errorf("the stored dump still holds %v", l)
			}
			if n := countThreads(t, b); n < threads { // the Go runtime may start a thread after the count
				t.Errorf("redacted dump has %d threads, the process had %d", n, threads)
			}
			if code := scan(t, filepath.Join(coreDir, fmt.Sprintf("core.%d", pid))); code != 0 {
				t.Errorf("keyguard scan on the redacted dump exited %d, want 0 (nothing found)", code)
			}
		})
	}
}

// Upgrading the agent package while root keeps attacking a protected process: every attack is
// denied, before, during and after; the running agent trusts the new binary, postinst restarts
// the unit only then, and the new agent takes over.
func TestUpgradeKeepsEnforcing(t *testing.T) {
	v := startVictim(t, signerExe)
	if r := v.attack(); r != "ERR EPERM" {
		t.Fatalf("attack before the upgrade: %q, want ERR EPERM", r)
	}
	before := mainPID(agentUnit)
	var (
		mu       sync.Mutex
		attempts int
		bad      []string
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			r := v.attack()
			time.Sleep(100 * time.Millisecond) // leave the (single-threaded TCG) guest some CPU for dpkg
			mu.Lock()
			attempts++
			if r != "ERR EPERM" {
				bad = append(bad, r)
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	out, err := sh(t, "dpkg", "-i", deb("keyguard-agent", "1.1"))
	took := time.Since(start)
	time.Sleep(2 * time.Second) // attacks on the new agent too
	close(stop)
	<-done
	t.Logf("upgrade took %.1f s; %d attacks meanwhile", took.Seconds(), attempts)
	if err != nil {
		t.Fatalf("dpkg -i 1.1: %v", err)
	}
	if len(bad) > 0 || attempts == 0 {
		t.Fatalf("%d attacks during the upgrade, not denied: %v", attempts, bad)
	}
	if !strings.Contains(out, "trusted the new binary") {
		t.Errorf("postinst did not hand over to the new binary")
	}
	if pkgStatus("keyguard-agent") != "install ok installed" || !strings.Contains(must(t, "dpkg-query", "-W", "-f=${Version}", "keyguard-agent"), "1.1") {
		t.Errorf("keyguard-agent 1.1 is not installed")
	}
	after := mainPID(agentUnit)
	if after == 0 || after == before || unitState(agentUnit) != "active" {
		t.Errorf("agent unit %s, main pid %d -> %d: not restarted", unitState(agentUnit), before, after)
	}
	if !waitFor(30*time.Second, func() bool { return exec.Command("keyguard", "status").Run() == nil }) {
		t.Errorf("the upgraded agent does not answer")
	}
	if r := v.attack(); r != "ERR EPERM" {
		t.Errorf("attack after the upgrade: %q", r)
	}
	if restarts := must(t, "systemctl", "show", "-p", "NRestarts", "--value", agentUnit); strings.TrimSpace(restarts) != "0" {
		t.Errorf("the agent unit restarted by itself %s times (crashed)", restarts)
	}
}

// Without a token, removal is refused and nothing changes.
func TestRemoveWithoutTokenRefused(t *testing.T) {
	os.Remove(tokenPath)
	v := startVictim(t, signerExe)
	out, err := sh(t, "dpkg", "-r", "keyguard-agent")
	if err == nil {
		t.Fatal("dpkg -r without a token succeeded")
	}
	if !strings.Contains(out, "refusing to remove") || !strings.Contains(out, "keyguard token sign") {
		t.Errorf("the refusal does not say why and what to do")
	}
	// dpkg records the wish ("deinstall") but the package stays installed.
	if s := pkgStatus("keyguard-agent"); !strings.HasSuffix(s, " ok installed") {
		t.Errorf("package status after a refused removal: %q", s)
	}
	if !exists("/usr/bin/keyguard-agent") || !exists(pins) || unitState(agentUnit) != "active" {
		t.Errorf("refused removal changed things: binary %v, pins %v, unit %s", exists("/usr/bin/keyguard-agent"), exists(pins), unitState(agentUnit))
	}
	if r := v.attack(); r != "ERR EPERM" {
		t.Errorf("attack after the refused removal: %q", r)
	}
	if p := corePattern(t); !strings.HasPrefix(p, "|/usr/bin/keyguard-agent dump-handler ") {
		t.Errorf("core_pattern = %q after a refused removal", p)
	}
}

// With an operator-signed token, removal switches keyguard off: core_pattern is systemd-coredump's
// again, the pins are gone, the unit stays stopped, and the process is no longer protected.
func TestRemoveWithToken(t *testing.T) {
	v := startVictim(t, signerExe)
	host, _ := os.Hostname()
	now := time.Now()
	tok, err := optoken.Sign(operatorKey, optoken.Claims{Action: optoken.ActionUninstall, Host: host, Operator: "vmtest",
		Reason: "systemd VM test removes the package", IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenPath, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := sh(t, "dpkg", "-r", "keyguard-agent"); err != nil {
		sh(t, "journalctl", "--no-pager", "-n", "50", "-u", agentUnit)
		t.Fatalf("dpkg -r with a token: %v", err)
	}
	if p := corePattern(t); p != origPattern {
		t.Errorf("core_pattern after removal = %q, want systemd-coredump's %q", p, origPattern)
	}
	if exists(pins) {
		t.Errorf("%s still exists", pins)
	}
	if exists(tokenPath) || exists("/usr/bin/keyguard-agent") {
		t.Errorf("left behind: token %v, binary %v", exists(tokenPath), exists("/usr/bin/keyguard-agent"))
	}
	if s := pkgStatus("keyguard-agent"); !strings.HasPrefix(s, "deinstall ok config-files") {
		t.Errorf("package status after removal: %q", s)
	}
	time.Sleep(4 * time.Second) // longer than the unit's RestartSec
	if s := unitState(agentUnit); s == "active" || s == "activating" {
		t.Errorf("the agent unit is %s after removal", s)
	}
	if r := v.attack(); !strings.HasPrefix(r, "OK") {
		t.Errorf("attack after removal: %q, want OK (protection ended)", r)
	}
	if !strings.Contains(must(t, "keyguard-collector", "verify", "-db", "/var/lib/keyguard-collector/events.db"), "chain intact") {
		t.Errorf("the collector's chain is not intact")
	}
	// After removal a crash goes straight to systemd-coredump again.
	pid, _ := crash(t, plainExe, "-sig", "SEGV")
	if l := leaks(coredump(t, pid)); len(l) < 10 {
		t.Errorf("dump after removal holds only %v", l)
	}
	must(t, "dpkg", "-r", "keyguard-collector")
	if s := unitState(collUnit); s == "active" {
		t.Errorf("collector unit %s after removal", s)
	}
}
