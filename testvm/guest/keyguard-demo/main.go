// Command keyguard-demo is what `make demo` runs inside the VM: a sample signing service holds a real
// ECDSA key; root reads the key out of its memory; keyguard starts (agent + collector over mTLS); the
// same attacks are blocked; the blocked attempts are shown as stored in the collector.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/testvm/guest/demo"
)

const dir = "/tmp/demo"

func main() { demo.Main(run) }

var step = demo.Step

// scene is what the demo's steps share: the key, where things live, and what to stop at the end.
type scene struct {
	keyFile, pubFile, cores, certs string
	scalar                         []byte
	pid                            int // the first protected signer
	agent                          *exec.Cmd
	stop                           []func()
	blocked, attacks               int
}

// run is the demo: each step narrates one scene and fails the demo if keyguard did not hold.
func run() error {
	sc := &scene{cores: dir + "/cores", certs: dir + "/certs"}
	defer func() {
		for i := len(sc.stop) - 1; i >= 0; i-- {
			sc.stop[i]()
		}
	}()
	for _, f := range []func(*scene) error{
		writeKey, crashUnprotected, stealUnprotected, startKeyguard, attackProtected,
		crashProtected, showStored, switchOffRefused, summary,
	} {
		if err := f(sc); err != nil {
			return err
		}
	}
	return nil
}

// kill stops a started command when the demo ends.
func (sc *scene) kill(c *exec.Cmd) { sc.stop = append(sc.stop, func() { c.Process.Kill() }) }

// writeKey writes the signing key, its public half and the core_pattern of the unprotected host.
func writeKey(sc *scene) error {
	os.MkdirAll(dir+"/keys", 0o755)
	key, err := demo.NewSigningKey()
	if err != nil {
		return err
	}
	sc.keyFile, sc.pubFile, sc.scalar = dir+"/keys/signing.pem", dir+"/signing.pub.pem", key.Scalar
	if err := os.WriteFile(sc.keyFile, key.PrivatePEM, 0o600); err != nil {
		return err
	}
	os.WriteFile(sc.pubFile, key.PublicPEM, 0o644)
	os.MkdirAll(sc.cores, 0o755)
	return os.WriteFile("/proc/sys/kernel/core_pattern", []byte(sc.cores+"/core.%e.%p"), 0)
}

// crashUnprotected shows the Storm-0558 path: a crash dump that holds the key.
func crashUnprotected(sc *scene) error {
	step("Without keyguard: the signing service crashes, and its core dump holds the key (the Storm-0558 path)")
	crashed, err := startSigner(sc.keyFile)
	if err != nil {
		return err
	}
	time.Sleep(1500 * time.Millisecond)
	crashed.Process.Signal(syscall.SIGABRT)
	crashed.Wait()
	scan := exec.Command("/bin/keyguard", "scan", "-pubkeys", sc.pubFile, "-raw", "ec", sc.cores)
	scan.Stdout, scan.Stderr = os.Stdout, os.Stdout
	if err := scan.Run(); err == nil {
		return fmt.Errorf("keyguard scan found no key in the unprotected core dump")
	}
	fmt.Println("    (keyguard scan: what a security team can run over its crash dumps and debugging shares today)")
	os.RemoveAll(sc.cores)
	return os.MkdirAll(sc.cores, 0o755)
}

// stealUnprotected starts the signer that keyguard will protect later and reads it as root first.
func stealUnprotected(sc *scene) error {
	step("A signing service starts and loads its private key (%s)", sc.keyFile)
	signer, err := startSigner(sc.keyFile)
	if err != nil {
		return err
	}
	sc.kill(signer)
	sc.pid = signer.Process.Pid
	time.Sleep(1500 * time.Millisecond)
	step("Without keyguard: root reads the signer's memory through /proc/%d/mem", sc.pid)
	demo.StealFromMemory(sc.pid, sc.scalar)
	return nil
}

const policy = `version: 1
rules:
  - name: token-signer
    mode: enforce
    match:
      executables: [/bin/signer]
      key_files: ["/tmp/demo/keys/*.pem"]
`

// startKeyguard starts a collector (mTLS) and the agent with a policy naming the key files.
func startKeyguard(sc *scene) error {
	step("keyguard starts: a collector (mTLS) and the agent with a policy naming the key files")
	for _, args := range [][]string{{"certs", "init", "-dir", sc.certs}, {"certs", "host", "-dir", sc.certs, "-name", "signing-host-01"}, {"certs", "operator", "-dir", sc.certs, "-name", "security-team"}} {
		if out, err := exec.Command("/bin/keyguard-collector", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("certs: %v: %s", err, out)
		}
	}
	col := exec.Command("/bin/keyguard-collector", "serve", "-listen", "127.0.0.1:7443", "-db", dir+"/events.db",
		"-tls-cert", sc.certs+"/collector.crt", "-tls-key", sc.certs+"/collector.key", "-tls-client-ca", sc.certs+"/ca.crt",
		"-revoked-serials", sc.certs+"/revoked.txt")
	colLog, _ := os.Create(dir + "/collector.log")
	col.Stdout, col.Stderr = colLog, colLog
	if err := col.Start(); err != nil {
		return err
	}
	sc.kill(col)
	fmt.Print("    policy:\n      " + strings.ReplaceAll(strings.TrimSpace(policy), "\n", "\n      ") + "\n")
	os.WriteFile(dir+"/policy.yaml", []byte(policy), 0o644)
	// The operator's key pair: the public half is pinned at the agent's first start; uninstall,
	// break-glass and policy changes need tokens signed with the private half (kept off the host).
	if out, err := exec.Command("/bin/keyguard", "token", "keygen", "-out", dir+"/operator").CombinedOutput(); err != nil {
		return fmt.Errorf("operator key: %v: %s", err, out)
	}
	agentLog, _ := os.Create(dir + "/agent.log")
	sc.agent = exec.Command("/bin/keyguard-agent", "run", "-policy", dir+"/policy.yaml", "-events", dir+"/events.jsonl",
		"-operator-key", dir+"/operator.pub",
		"-state-dir", dir+"/state", "-control-socket", dir+"/agent.sock", "-collector", "127.0.0.1:7443",
		"-collector-ca", sc.certs+"/ca.crt", "-cert", sc.certs+"/signing-host-01.crt", "-key", sc.certs+"/signing-host-01.key",
		"-spool-dir", dir+"/spool")
	sc.agent.Stdout, sc.agent.Stderr = agentLog, agentLog
	if err := sc.agent.Start(); err != nil {
		return err
	}
	sc.kill(sc.agent)
	if err := waitFor(dir+"/events.jsonl", `"state":"AGENT_STATE_STARTED"`, 60*time.Second); err != nil {
		b, _ := os.ReadFile(dir + "/agent.log")
		return fmt.Errorf("agent did not start: %v\n%s", err, b)
	}
	fmt.Printf("    agent running; the signer (pid %d) was already running and is now protected\n", sc.pid)
	return nil
}

// attackProtected repeats the attacks against the running signer and a signer started afterwards.
func attackProtected(sc *scene) error {
	step("The same attacks, as root, against the running signer")
	attacks := append(demo.Attacks, demo.Attack{Op: "pidfd_getfd", What: "steal an open file descriptor with pidfd_getfd"})
	blocked, err := demo.RunAttacks("/bin/testproc", sc.pid, sc.scalar, attacks)
	if err != nil {
		return err
	}
	sc.blocked, sc.attacks = blocked, len(attacks)
	return nil
}

// crashProtected starts a signer under keyguard, reads it, crashes it: no dump anywhere.
func crashProtected(sc *scene) error {
	step("A new signer started while keyguard runs is protected from its first instruction")
	signer2, err := startSigner(sc.keyFile)
	if err != nil {
		return err
	}
	sc.kill(signer2)
	time.Sleep(500 * time.Millisecond)
	out, _ := exec.Command("/bin/testproc", "attack", "mem", strconv.Itoa(signer2.Process.Pid)).Output()
	fmt.Printf("    read /proc/%d/mem: %s\n", signer2.Process.Pid, strings.TrimSpace(string(out)))

	step("The protected signer crashes: no core dump is written, anywhere")
	signer2.Process.Signal(syscall.SIGABRT)
	signer2.Wait()
	if ents, _ := os.ReadDir(sc.cores); len(ents) != 0 {
		return fmt.Errorf("a core dump of the protected signer was written: %v", ents[0].Name())
	}
	fmt.Printf("    pid %d died of SIGABRT; %s is empty\n", signer2.Process.Pid, sc.cores)
	return nil
}

// showStored prints what the collector stored, as the security team sees it.
func showStored(sc *scene) error {
	step("The security team's view: what the collector stored (keyguard events)")
	time.Sleep(2 * time.Second)
	return demo.ShowEvents("/bin/keyguard", []string{"-collector", "127.0.0.1:7443", "-ca", sc.certs + "/ca.crt",
		"-cert", sc.certs + "/security-team.crt", "-key", sc.certs + "/security-team.key", "-limit", "20"},
		[]string{"-decision", "denied"}, []string{"-kind", "core_dump"})
}

// switchOffRefused tries, as root, to switch keyguard off: pins, uninstall, core_pattern, kcore, kill -9.
func switchOffRefused(sc *scene) error {
	step("Root tries to switch keyguard off")
	err := os.RemoveAll("/sys/fs/bpf/keyguard")
	fmt.Printf("    rm -rf /sys/fs/bpf/keyguard (its pinned programs): %v\n", errOrOK(err))
	if err == nil {
		return fmt.Errorf("root removed keyguard's pins")
	}
	out, err := exec.Command("/bin/keyguard-agent", "uninstall", "-socket", dir+"/agent.sock", "-token-file", "/dev/null").CombinedOutput()
	fmt.Printf("    keyguard-agent uninstall without an operator-signed token: %v\n", errOrOK(err))
	if err == nil {
		return fmt.Errorf("uninstall without a token succeeded: %s", out)
	}
	err = exec.Command("/bin/busybox", "sh", "-c", "echo '|/tmp/steal %p' > /proc/sys/kernel/core_pattern").Run()
	fmt.Printf("    echo '|/tmp/steal %%p' > /proc/sys/kernel/core_pattern: %v\n", errOrOK(err))
	if err == nil {
		return fmt.Errorf("root rewrote core_pattern")
	}
	out, _ = exec.Command("/bin/testproc", "open", "/proc/kcore", "r").Output()
	fmt.Printf("    open /proc/kcore: %s\n", strings.TrimSpace(string(out)))
	if !strings.HasPrefix(string(out), "ERR") {
		return fmt.Errorf("root opened /proc/kcore")
	}
	sc.agent.Process.Kill()
	sc.agent.Wait()
	out, _ = exec.Command("/bin/testproc", "attack", "mem", strconv.Itoa(sc.pid)).Output()
	fmt.Printf("    kill -9 the agent, then read /proc/%d/mem: %s (enforcement is pinned in the kernel)\n", sc.pid, strings.TrimSpace(string(out)))
	if !strings.HasPrefix(string(out), "ERR") {
		return fmt.Errorf("the signer became readable after the agent was killed")
	}
	return nil
}

func summary(sc *scene) error {
	step("Summary")
	fmt.Printf("    %d of %d attacks by root on the running signer were blocked and reported;\n", sc.blocked, sc.attacks)
	fmt.Println("    before keyguard, root read the signing key out of memory and out of a crash dump;")
	fmt.Println("    with keyguard, the protected signer's crash left no dump at all, and root could not")
	fmt.Println("    switch keyguard off by deleting its pins or killing its agent.")
	fmt.Println("    Event log: " + dir + "/events.jsonl; collector database: " + dir + "/events.db")
	if sc.blocked != sc.attacks {
		return fmt.Errorf("%d attacks were not blocked", sc.attacks-sc.blocked)
	}
	fmt.Println("\nDEMO OK")
	return nil
}

func waitFor(path, substr string, d time.Duration) error {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(substr)) {
			return nil
		}
	}
	return fmt.Errorf("%s never contained %s", filepath.Base(path), substr)
}

// startSigner starts the sample signer; GOTRACEBACK=crash makes the Go runtime dump core on SIGABRT
// like a C program would.
func startSigner(keyFile string) (*exec.Cmd, error) {
	c := exec.Command("/bin/signer", "-key", keyFile)
	c.Env = append(os.Environ(), "GOTRACEBACK=crash")
	c.Stdout = os.Stdout
	c.Stderr = io.Discard // the runtime's crash traceback
	c.Dir = dir
	var rl syscall.Rlimit
	rl.Cur, rl.Max = ^uint64(0), ^uint64(0)
	syscall.Setrlimit(syscall.RLIMIT_CORE, &rl)
	return c, c.Start()
}

func errOrOK(err error) string {
	if err == nil {
		return "succeeded"
	}
	return "refused (" + err.Error() + ")"
}
