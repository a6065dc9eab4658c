// Command keyguard-demo is what `make demo` runs inside the VM: a sample signing service holds a real
// ECDSA key; root reads the key out of its memory; keyguard starts (agent + collector over mTLS); the
// same attacks are blocked; the blocked attempts are shown as stored in the collector.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/testvm/guest/memscan"
)

const dir = "/tmp/demo"

func main() {
	if err := run(); err != nil {
		fmt.Println("\nDEMO FAILED:", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func run() error {
	os.MkdirAll(dir+"/keys", 0o755)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := dir + "/keys/signing.pem"
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	scalar := key.D.FillBytes(make([]byte, 32))
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubFile := dir + "/signing.pub.pem"
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
	cores := dir + "/cores"
	os.MkdirAll(cores, 0o755)
	if err := os.WriteFile("/proc/sys/kernel/core_pattern", []byte(cores+"/core.%e.%p"), 0); err != nil {
		return err
	}

	step("Without keyguard: the signing service crashes, and its core dump holds the key (the Storm-0558 path)")
	crashed, err := startSigner(keyFile)
	if err != nil {
		return err
	}
	time.Sleep(1500 * time.Millisecond)
	crashed.Process.Signal(syscall.SIGABRT)
	crashed.Wait()
	scan := exec.Command("/bin/keyguard", "scan", "-pubkeys", pubFile, "-raw", "ec", cores)
	scan.Stdout, scan.Stderr = os.Stdout, os.Stdout
	if err := scan.Run(); err == nil {
		return fmt.Errorf("keyguard scan found no key in the unprotected core dump")
	}
	fmt.Println("    (keyguard scan: what a security team can run over its crash dumps and debugging shares today)")
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o755)

	step("A signing service starts and loads its private key (%s)", keyFile)
	signer, err := startSigner(keyFile)
	if err != nil {
		return err
	}
	defer signer.Process.Kill()
	pid := signer.Process.Pid
	time.Sleep(1500 * time.Millisecond)

	step("Without keyguard: root reads the signer's memory through /proc/%d/mem", pid)
	if off, ok := memscan.Find(pid, scalar); ok {
		fmt.Printf("    STOLEN: the private key's 32-byte scalar found at 0x%x in pid %d's memory\n", off, pid)
	} else {
		fmt.Printf("    root read pid %d's memory (the scalar's layout was not found this time, but every byte was readable)\n", pid)
	}

	step("keyguard starts: a collector (mTLS) and the agent with a policy naming the key files")
	certs := dir + "/certs"
	for _, args := range [][]string{{"certs", "init", "-dir", certs}, {"certs", "host", "-dir", certs, "-name", "signing-host-01"}, {"certs", "operator", "-dir", certs, "-name", "security-team"}} {
		if out, err := exec.Command("/bin/keyguard-collector", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("certs: %v: %s", err, out)
		}
	}
	col := exec.Command("/bin/keyguard-collector", "serve", "-listen", "127.0.0.1:7443", "-db", dir+"/events.db",
		"-tls-cert", certs+"/collector.crt", "-tls-key", certs+"/collector.key", "-tls-client-ca", certs+"/ca.crt",
		"-revoked-serials", certs+"/revoked.txt")
	colLog, _ := os.Create(dir + "/collector.log")
	col.Stdout, col.Stderr = colLog, colLog
	if err := col.Start(); err != nil {
		return err
	}
	defer col.Process.Kill()
	policy := `version: 1
rules:
  - name: token-signer
    mode: enforce
    match:
      executables: [/bin/signer]
      key_files: ["/tmp/demo/keys/*.pem"]
`
	fmt.Print("    policy:\n      " + strings.ReplaceAll(strings.TrimSpace(policy), "\n", "\n      ") + "\n")
	os.WriteFile(dir+"/policy.yaml", []byte(policy), 0o644)
	// The operator's key pair: the public half is pinned at the agent's first start; uninstall,
	// break-glass and policy changes need tokens signed with the private half (kept off the host).
	if out, err := exec.Command("/bin/keyguard", "token", "keygen", "-out", dir+"/operator").CombinedOutput(); err != nil {
		return fmt.Errorf("operator key: %v: %s", err, out)
	}
	agentLog, _ := os.Create(dir + "/agent.log")
	agent := exec.Command("/bin/keyguard-agent", "run", "-policy", dir+"/policy.yaml", "-events", dir+"/events.jsonl",
		"-operator-key", dir+"/operator.pub",
		"-state-dir", dir+"/state", "-control-socket", dir+"/agent.sock", "-collector", "127.0.0.1:7443",
		"-collector-ca", certs+"/ca.crt", "-cert", certs+"/signing-host-01.crt", "-key", certs+"/signing-host-01.key",
		"-spool-dir", dir+"/spool")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return err
	}
	defer agent.Process.Kill()
	if err := waitFor(dir+"/events.jsonl", `"state":"AGENT_STATE_STARTED"`, 60*time.Second); err != nil {
		b, _ := os.ReadFile(dir + "/agent.log")
		return fmt.Errorf("agent did not start: %v\n%s", err, b)
	}
	fmt.Printf("    agent running; the signer (pid %d) was already running and is now protected\n", pid)

	step("The same attacks, as root, against the running signer")
	blocked := 0
	attacks := []struct{ op, what string }{
		{"mem", "read /proc/PID/mem (what memory scrapers do)"},
		{"attach", "ptrace attach (what gdb -p does)"},
		{"seize", "ptrace seize"},
		{"vmreadv", "process_vm_readv"},
		{"environ", "read /proc/PID/environ"},
		{"pidfd_getfd", "steal an open file descriptor with pidfd_getfd"},
	}
	for _, a := range attacks {
		out, _ := exec.Command("/bin/testproc", "attack", a.op, strconv.Itoa(pid)).Output()
		res := strings.TrimSpace(string(out))
		verdict := "NOT BLOCKED"
		if strings.HasPrefix(res, "ERR") {
			verdict = "BLOCKED"
			blocked++
		}
		fmt.Printf("    %-48s %-8s (%s)\n", a.what, verdict, res)
	}
	if _, ok := memscan.Find(pid, scalar); ok {
		return fmt.Errorf("the key scalar is still readable with keyguard running")
	}

	step("A new signer started while keyguard runs is protected from its first instruction")
	signer2, err := startSigner(keyFile)
	if err != nil {
		return err
	}
	defer signer2.Process.Kill()
	time.Sleep(500 * time.Millisecond)
	out, _ := exec.Command("/bin/testproc", "attack", "mem", strconv.Itoa(signer2.Process.Pid)).Output()
	fmt.Printf("    read /proc/%d/mem: %s\n", signer2.Process.Pid, strings.TrimSpace(string(out)))

	step("The protected signer crashes: no core dump is written, anywhere")
	signer2.Process.Signal(syscall.SIGABRT)
	signer2.Wait()
	if ents, _ := os.ReadDir(cores); len(ents) != 0 {
		return fmt.Errorf("a core dump of the protected signer was written: %v", ents[0].Name())
	}
	fmt.Printf("    pid %d died of SIGABRT; %s is empty\n", signer2.Process.Pid, cores)

	step("The security team's view: what the collector stored (keyguard events)")
	time.Sleep(2 * time.Second)
	for _, filter := range [][]string{{"-decision", "denied"}, {"-kind", "core_dump"}} {
		cli := exec.Command("/bin/keyguard", append([]string{"events", "-collector", "127.0.0.1:7443", "-ca", certs + "/ca.crt",
			"-cert", certs + "/security-team.crt", "-key", certs + "/security-team.key", "-limit", "20"}, filter...)...)
		cli.Stdout, cli.Stderr = os.Stdout, os.Stdout
		if err := cli.Run(); err != nil {
			return fmt.Errorf("keyguard events: %w", err)
		}
		fmt.Println()
	}

	step("Root tries to switch keyguard off")
	err = os.RemoveAll("/sys/fs/bpf/keyguard")
	fmt.Printf("    rm -rf /sys/fs/bpf/keyguard (its pinned programs): %v\n", errOrOK(err))
	if err == nil {
		return fmt.Errorf("root removed keyguard's pins")
	}
	out, err = exec.Command("/bin/keyguard-agent", "uninstall", "-socket", dir+"/agent.sock", "-token-file", "/dev/null").CombinedOutput()
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
	agent.Process.Kill()
	agent.Wait()
	out, _ = exec.Command("/bin/testproc", "attack", "mem", strconv.Itoa(pid)).Output()
	fmt.Printf("    kill -9 the agent, then read /proc/%d/mem: %s (enforcement is pinned in the kernel)\n", pid, strings.TrimSpace(string(out)))
	if !strings.HasPrefix(string(out), "ERR") {
		return fmt.Errorf("the signer became readable after the agent was killed")
	}

	step("Summary")
	fmt.Printf("    %d of %d attacks by root on the running signer were blocked and reported;\n", blocked, len(attacks))
	fmt.Println("    before keyguard, root read the signing key out of memory and out of a crash dump;")
	fmt.Println("    with keyguard, the protected signer's crash left no dump at all, and root could not")
	fmt.Println("    switch keyguard off by deleting its pins or killing its agent.")
	fmt.Println("    Event log: " + dir + "/events.jsonl; collector database: " + dir + "/events.db")
	if blocked != len(attacks) {
		return fmt.Errorf("%d attacks were not blocked", len(attacks)-blocked)
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
