// Package guesttest is the fixture that keyguard's VM tests share, wherever they live: the real agent
// binary started with the suite's policy, its event log read incrementally, victim processes and
// attacks by testproc, operator tokens, test keys, core_pattern and a collector. A package with VM
// tests calls Main from its TestMain; its VM tests call vmenv.Require first, so that they skip on the
// host.
//
// Every package's test binary runs on its own in the guest (testvm/cmd/vmtest runs the packages of
// testvm/suites.txt one after another): Main sets the fixture up once for the package (a fresh Dir,
// the agent started once) and, at the end, uninstalls the agent with an operator token, so the next
// package starts from a kernel without keyguard's pins. It is test code: runtime code never imports
// it.
package guesttest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// Paths in the guest (testvm/bins.txt puts the binaries in /bin).
const (
	Dir       = "/tmp/kg"
	AgentBin  = "/bin/keyguard-agent"
	CLIBin    = "/bin/keyguard"
	ProcBin   = "/bin/testproc"
	EventsLog = Dir + "/events.jsonl"
	PinPath   = "/sys/fs/bpf/keyguard"
	CtlSock   = Dir + "/agent.sock"
	User      = 1000 // the unprivileged user victims and attackers run as
)

// The policy's executables and key files (copies of testproc, written by Main).
const (
	VictimEnforce = Dir + "/victim-enforce"
	VictimLink    = Dir + "/victim-enforce-link" // hard link: same file, also protected
	VictimCopy    = Dir + "/victim-enforce-copy" // copy: another file, not protected
	VictimAudit   = Dir + "/victim-audit"
	VictimPlain   = Dir + "/victim-plain"
	VictimRedact  = Dir + "/victim-redact"
	Debugger      = Dir + "/debugger" // allowed accessor (uid 0) of the signer rule
	BPFTool       = Dir + "/bpf-tool" // allowed BPF loader (uid 0)
	KeyFile       = Dir + "/keys/signing.pem"
	HolderExe     = VictimRedact           // the redactor rule's executable: its key files are its alone
	HolderKey     = Dir + "/hkeys/h.pem"   // the redactor rule's key file
	RacerExe      = Dir + "/racer"         // opens a keyholder key file (openers: any): protected by that open
	RacerKey      = Dir + "/keys/race.pem" // a keyholder rule key file
	StrictExe     = Dir + "/victim-strict" // the strictsigner rule's executable (a copy of testproc)
	StrictKey     = Dir + "/skeys/s.pem"   // the strictsigner rule's key file
	LoopKeyDir    = Dir + "/loopkeys"      // the redactor rule's key files on a loop device (romfs), when a test mounts it
	DiskReader    = Dir + "/disk-reader"   // the policy's raw_disk_readers entry (uid 0)
	OperatorPub   = Dir + "/operator.pub"
)

// PolicyYAML is the suites' policy; %[1]s is the test binary, which sets core_pattern for the dump
// tests and is the key manager and package manager; %[2]s is testproc's SHA-256 (hex), the strictsigner
// rule's one approved digest.
const PolicyYAML = `version: 1
bpf_loaders:
  - executable: /tmp/kg/bpf-tool
    uid: 0
sysctl_writers:
  - executable: %[1]s
    uid: 0
key_managers:
  - executable: %[1]s
    uid: 0
package_managers:
  - executable: %[1]s
    uid: 0
raw_disk_readers:
  - executable: /tmp/kg/disk-reader
    uid: 0
rules:
  - name: signer
    mode: enforce
    match:
      executables: [/tmp/kg/victim-enforce]
    allow:
      - executable: /tmp/kg/debugger
        uid: 0
  - name: signer-audit
    mode: audit
    match:
      executables: [/tmp/kg/victim-audit]
  - name: keyholder
    mode: enforce
    match:
      key_files: ["/tmp/kg/keys/*.pem"]
    openers: any
  - name: container
    mode: enforce
    match:
      cgroups: [/kg-signer]
  - name: redactor
    mode: enforce
    dumps: redact
    match:
      executables: [/tmp/kg/victim-redact]
      key_files: ["/tmp/kg/hkeys/*.pem", "/tmp/kg/loopkeys/*.pem"]
    public_keys: ["/tmp/kg/testpub/*.pem"]
  - name: strictsigner
    mode: enforce
    match:
      executables: [/tmp/kg/victim-strict]
      key_files: ["/tmp/kg/skeys/*.pem"]
    strict: true
    digests: ["sha256:%[2]s"]
`

// The fixture's processes and keys, set by Main. Tests may stop, restart and replace the agent
// (StartAgent, StopAgent); Main uninstalls whatever agent runs at the end.
var (
	Agent       *exec.Cmd          // the running agent; nil or exited when a test stopped it
	Early       *Victim            // a signer started before the agent: found by the procfs scan
	OperatorKey ed25519.PrivateKey // the operator's key, installed as OperatorPub
	StrangerKey ed25519.PrivateKey // anyone else's
)

// Options says what a package's VM tests need.
type Options struct {
	// Tests names the package's VM tests. In the guest only these run (unless -test.run is given);
	// on the host Main runs the package's other tests as usual. Empty: every test of the package is
	// a VM test, and on the host Main runs none.
	Tests []string
	// NoAgent: set up Dir and the test keys but start no agent (tests that only run binaries).
	NoAgent bool
	// Keys returns the test signer's keys (see TestKeys), called in the guest only; nil: Main
	// generates them.
	Keys func() *Keys
	// Ready, if set, is called once the fixture is set up, before the tests run.
	Ready func()
}

// Main runs the package's tests: on the host, its host tests; in the guest, its VM tests with the
// fixture set up before and the agent uninstalled after. Call it from TestMain.
func Main(m *testing.M, o Options) {
	os.Exit(run(m, o))
}

func run(m *testing.M, o Options) int {
	if !vmenv.InVM() {
		if len(o.Tests) == 0 {
			fmt.Println("skipping VM tests: they run inside testvm (make vmtest)")
			return 0
		}
		return m.Run()
	}
	flag.Parse()
	if !selected(o.Tests) {
		return m.Run() // -test.run names none of the VM tests: no fixture needed
	}
	start := time.Now()
	if err := setup(o); err != nil {
		fmt.Println("guesttest setup failed:", err)
		return 1
	}
	fmt.Printf("guesttest: fixture ready in %s\n", time.Since(start).Round(time.Millisecond))
	if o.Ready != nil {
		o.Ready()
	}
	code := m.Run()
	if err := teardown(o); err != nil {
		fmt.Println("guesttest teardown failed:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// selected restricts -test.run to the VM tests when it is unset, and reports whether any VM test is
// to run.
func selected(tests []string) bool {
	f := flag.Lookup("test.run")
	if f == nil || len(tests) == 0 {
		return true
	}
	pat := f.Value.String()
	if pat == "" {
		f.Value.Set("^(" + strings.Join(tests, "|") + ")$")
		return true
	}
	top, _, _ := strings.Cut(pat, "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return true // go test reports the bad pattern
	}
	for _, name := range tests {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

func setup(o Options) error {
	// Yama must not decide before keyguard does (scope 1 would deny unprivileged attaches first).
	if err := writePtraceScope(); err != nil {
		return err
	}
	if _, err := os.Stat(PinPath); err == nil {
		return fmt.Errorf("%s exists: an earlier suite's agent was not uninstalled", PinPath)
	}
	if err := removeAll(Dir); err != nil {
		return err
	}
	for _, d := range []string{Dir + "/keys", Dir + "/cwd"} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			return err
		}
	}
	os.Chmod(Dir, 0o755)
	os.Chmod(Dir+"/keys", 0o755)
	var keys *Keys
	if o.Keys != nil {
		keys = o.Keys()
	}
	if err := writeKeys(keys); err != nil {
		return err
	}
	if o.NoAgent {
		return nil
	}
	for _, p := range []string{VictimEnforce, VictimCopy, VictimAudit, VictimPlain, VictimRedact, Debugger, BPFTool, RacerExe, StrictExe, DiskReader} {
		if err := CopyFile(ProcBin, p); err != nil {
			return err
		}
	}
	if err := os.Link(VictimEnforce, VictimLink); err != nil {
		return err
	}
	if err := os.WriteFile(KeyFile, []byte("-----BEGIN PRIVATE KEY-----\ntest\n-----END PRIVATE KEY-----\n"), 0o644); err != nil {
		return err
	}
	if err := writeKeyFiles(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(ProcBin)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(bin)
	if err := os.WriteFile(Dir+"/policy.yaml", []byte(fmt.Sprintf(PolicyYAML, self, hex.EncodeToString(sum[:]))), 0o644); err != nil {
		return err
	}
	if err := writeOperatorKey(); err != nil {
		return err
	}
	if Early, err = StartVictimErr(VictimEnforce, 0); err != nil {
		return fmt.Errorf("start early victim: %w", err)
	}
	return StartAgent()
}

// writePtraceScope sets Yama's ptrace_scope to 0. It retries for a while: the sysctl guard of an
// agent uninstalled a moment ago (by the previous suite) refuses the write until the kernel has
// released its links, from a workqueue, seconds later under TCG.
func writePtraceScope() error {
	var err error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err = os.WriteFile("/proc/sys/kernel/yama/ptrace_scope", []byte("0"), 0); err == nil {
			return nil
		}
	}
	return fmt.Errorf("set kernel.yama.ptrace_scope: %w", err)
}

// removeAll removes dir, retrying for a few seconds: the links of an agent uninstalled a moment ago
// are released by the kernel from a workqueue, and until then its key files stay refused.
func removeAll(dir string) error {
	var err error
	for i := 0; i < 300; i++ {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("remove %s left by an earlier suite: %w", dir, err)
}

// teardown uninstalls the agent (starting it if a test left it down), so that no pin outlives the
// package's test binary.
func teardown(o Options) error {
	defer func() {
		if Early != nil {
			Early.Kill()
		}
	}()
	if o.NoAgent {
		return nil
	}
	if _, err := os.Stat(PinPath); errors.Is(err, os.ErrNotExist) && (Agent == nil || Agent.ProcessState != nil) {
		return nil // uninstalled by a test
	}
	if Agent == nil || Agent.ProcessState != nil {
		if err := StartAgent(); err != nil {
			return fmt.Errorf("start the agent to uninstall it: %w", err)
		}
	}
	host, err := os.Hostname()
	if err != nil {
		return err
	}
	tok, err := sign(OperatorKey, optoken.Claims{Action: optoken.ActionUninstall, Host: host, Operator: "guesttest",
		Reason: "end of the suite"})
	if err != nil {
		return err
	}
	if out, err := UninstallWith(tok); err != nil {
		return fmt.Errorf("uninstall: %w: %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- Agent.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		Agent.Process.Kill()
		return fmt.Errorf("the agent did not stop after uninstall")
	}
	if _, err := os.Stat(PinPath); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s still exists after uninstall: %v", PinPath, err)
	}
	// Hand the next suite a kernel without keyguard's programs: wait until its sysctl guard is gone.
	return writePtraceScope()
}

// CopyFile copies src to dst as an executable.
func CopyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// AgentCmd is the command StartAgent runs: the agent with the suite's policy and extra flags.
func AgentCmd(extra ...string) *exec.Cmd {
	return exec.Command(AgentBin, append([]string{"run", "-policy", Dir + "/policy.yaml", "-events", EventsLog,
		"-state-dir", Dir + "/state", "-control-socket", CtlSock, "-operator-key", OperatorPub, "-posture-interval", "3s"}, extra...)...)
}

// StartAgent starts the agent with the suite's policy and extra flags, and waits until it reported
// its health (after attaching and scanning).
func StartAgent(extra ...string) error {
	before := Count()
	Agent = AgentCmd(extra...)
	Agent.Stdout = os.Stdout
	Agent.Stderr = os.Stdout
	if err := Agent.Start(); err != nil {
		return err
	}
	// Under TCG with other VMs on the same cores a start (attach, probe, scan, dump handler) has taken
	// over 60 s; 180 s still ends a hang well inside the suite timeout.
	const ready = 180 * time.Second
	deadline := time.Now().Add(ready)
	for time.Now().Before(deadline) {
		for _, ev := range Since(before) {
			if ev.Kind == "health" && ev.Health != nil && (ev.Health.State == "started" || ev.Health.State == "adopted") {
				return nil
			}
		}
		if Agent.ProcessState != nil {
			return fmt.Errorf("agent exited")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent not ready after %s", ready)
}

// StopAgent stops the agent with SIGTERM (its pins stay: enforcement holds) and waits for it.
func StopAgent() {
	if Agent != nil && Agent.Process != nil && Agent.ProcessState == nil {
		Agent.Process.Signal(syscall.SIGTERM)
		Agent.Wait()
	}
}
