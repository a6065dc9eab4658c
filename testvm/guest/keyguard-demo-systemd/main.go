// Command keyguard-demo-systemd is what `make demo-systemd` (vmtest -demo -systemd) runs inside the
// Debian 12 + systemd VM, as the keyguard-vmtest.service: a sample signing service runs as a systemd
// unit holding a real ECDSA key; root steals the key from its memory and from a crash dump stored by
// systemd-coredump; then keyguard is installed from its .deb packages (agent + collector with the web
// console on :8443, which QEMU forwards to 127.0.0.1:8443 on the host); the same attacks are blocked,
// the protected crash is redacted into systemd-coredump, and the VM stays up for the operator to log in.
//
// The host passes KEYGUARD_DEMO_HOLD=<seconds> on the kernel command line: how long to keep the VM up
// after the summary (-1: until the host stops it).
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/testvm/guest/demo"
)

const (
	testRoot   = "/opt/keyguard-test"
	signerExe  = "/usr/local/bin/signer"
	signerUnit = "demo-signer.service"
	keyFile    = "/etc/signer/keys/signing.pem"
	pubFile    = "/etc/signer/pub/signing.pem"
	usersFile  = "/etc/keyguard/console-users"
	eventLog   = "/var/log/keyguard/events.jsonl"
	consoleURL = "https://127.0.0.1:8443"
)

const signerUnitDef = `[Unit]
Description=Sample token-signing service (keyguard demo)

[Service]
ExecStart=/usr/local/bin/signer -key /etc/signer/keys/signing.pem
Environment=GOTRACEBACK=crash
LimitCORE=infinity
Restart=always
RestartSec=1
StandardOutput=journal

[Install]
WantedBy=multi-user.target
`

const policy = `version: 1
rules:
  - name: token-signer
    mode: enforce
    dumps: redact
    match:
      executables: [/usr/local/bin/signer]
    public_keys: ["/etc/signer/pub/*.pem"]
`

// The collector's console: on every guest address (QEMU forwards only the host's loopback to it),
// its users file handed to the sandboxed (DynamicUser) service as a systemd credential.
const collectorDropIn = `[Service]
LoadCredential=console-users:/etc/keyguard/console-users
LoadCredential=alert-webhook.key:/etc/keyguard/alert-webhook.key
`

// The webhook alert output's HMAC key: root-only on disk, handed to the collector as a credential.
const (
	webhookKey     = "/etc/keyguard/alert-webhook.key"
	webhookKeyCred = "/run/credentials/keyguard-collector.service/alert-webhook.key"
)

const collectorDefault = `KEYGUARD_COLLECTOR_FLAGS=-console-listen 0.0.0.0:8443 -console-users /run/credentials/keyguard-collector.service/console-users
`

func main() { demo.Main(run) }

var step = demo.Step

func sh(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func shIn(stdin, name string, args ...string) error {
	c := exec.Command(name, args...)
	c.Stdin = strings.NewReader(stdin)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func write(p, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), mode)
}

func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func mainPID(unit string) int {
	out, _ := exec.Command("systemctl", "show", "-p", "MainPID", "--value", unit).Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// scene is what the demo's steps share.
type scene struct {
	start    time.Time
	scalar   []byte
	pid      int // the signer's main pid (a new one after each crash)
	oncall   *demo.WebhookReceiver
	password string
	attacks  []demo.Attack
	blocked  int
}

// run is the demo: each step narrates one scene and fails the demo if keyguard did not hold.
func run() error {
	sc := &scene{start: time.Now(), attacks: demo.Attacks}
	exec.Command("systemctl", "is-system-running", "--wait").Run()
	defer func() {
		if sc.oncall != nil {
			sc.oncall.Close()
		}
	}()
	for _, f := range []func(*scene) error{
		startNetwork, startSigner, stealUnprotected, install, attackProtected, crashProtected,
		showStored, showAlerts, summary,
	} {
		if err := f(sc); err != nil {
			return err
		}
	}
	hold(holdSeconds())
	return nil
}

func startNetwork(*scene) error {
	step("Network: virtio-net and a static address, so the host reaches the console through QEMU's forward")
	return networkUp()
}

// startSigner installs the sample signer as a systemd unit with a fresh key.
func startSigner(sc *scene) error {
	step("A sample token-signing service runs as a systemd unit (%s) with a real ECDSA P-256 key", signerUnit)
	key, err := demo.NewSigningKey()
	if err != nil {
		return err
	}
	sc.scalar = key.Scalar
	for _, e := range []error{
		write(keyFile, string(key.PrivatePEM), 0o600),
		write(pubFile, string(key.PublicPEM), 0o644),
		copyFile(filepath.Join(testRoot, "bin/signer"), signerExe),
		write("/etc/systemd/system/"+signerUnit, signerUnitDef, 0o644),
	} {
		if e != nil {
			return e
		}
	}
	if _, err := sh("systemctl", "daemon-reload"); err != nil {
		return err
	}
	if _, err := sh("systemctl", "enable", "--now", signerUnit); err != nil {
		return err
	}
	if sc.pid = signerPID(0); sc.pid == 0 {
		return fmt.Errorf("%s did not start", signerUnit)
	}
	time.Sleep(1500 * time.Millisecond)
	fmt.Printf("    %s active, main pid %d, key %s\n", signerUnit, sc.pid, keyFile)
	return nil
}

// stealUnprotected reads the key out of memory and out of a crash dump before keyguard is installed.
func stealUnprotected(sc *scene) error {
	step("Without keyguard: root reads the signer's memory (/proc/%d/mem)", sc.pid)
	demo.StealFromMemory(sc.pid, sc.scalar)

	step("Without keyguard: the signer crashes (SIGABRT) and systemd-coredump stores its dump")
	leaked, err := crashAndDump(sc.pid, sc.scalar)
	if err != nil {
		return err
	}
	if !leaked {
		return fmt.Errorf("the unprotected dump of pid %d does not hold the key: the search is broken", sc.pid)
	}
	fmt.Printf("    STOLEN: `coredumpctl dump %d` holds the private key scalar (the Storm-0558 path)\n", sc.pid)
	return nil
}

// install installs keyguard's packages with the console and an alert rule to the on-call webhook.
func install(sc *scene) error {
	step("keyguard is installed from its .deb packages: collector (with the web console and an alert rule) and agent")
	oncall, err := demo.NewWebhookReceiver()
	if err != nil {
		return err
	}
	sc.oncall = oncall
	if sc.password, err = installKeyguard(oncall); err != nil {
		return err
	}
	fmt.Printf("    keyguard-agent and keyguard-collector active; console on :8443 (host: %s)\n", consoleURL)
	fmt.Printf("    alert rule: every event at warning level or above -> the on-call webhook %s (HMAC-SHA256 signed)\n", oncall.URL)
	return nil
}

func attackProtected(sc *scene) error {
	sc.pid = signerPID(sc.pid)
	step("The same attacks, as root, against the running signer (pid %d)", sc.pid)
	blocked, err := demo.RunAttacks(filepath.Join(testRoot, "bin/testproc"), sc.pid, sc.scalar, sc.attacks)
	sc.blocked = blocked
	return err
}

func crashProtected(sc *scene) error {
	step("The protected signer crashes: keyguard redacts the dump before systemd-coredump stores it")
	leaked, err := crashAndDump(sc.pid, sc.scalar)
	if err != nil {
		return err
	}
	action := dumpAction(sc.pid)
	fmt.Printf("    keyguard core_dump event for pid %d: %s; key in the stored dump: %v\n", sc.pid, action, leaked)
	if leaked || action != "redacted" {
		return fmt.Errorf("the protected crash was not redacted (action %q, key found %v)", action, leaked)
	}
	return nil
}

func showStored(*scene) error {
	step("The security team's view: what the collector stored (keyguard events, mTLS)")
	waitFor(30*time.Second, func() bool {
		out, _ := exec.Command("keyguard", eventsArgs("-decision", "denied")...).Output()
		return strings.Count(string(out), "\n")-1 >= 3
	})
	return demo.ShowEvents("keyguard", eventsArgs()[1:], []string{"-decision", "denied"}, []string{"-kind", "core_dump"})
}

func showAlerts(sc *scene) error {
	step("Alerts: what reached the on-call webhook (signature checked), and nothing else at warning level")
	return checkAlerts(sc.oncall, sc.pid, sc.attacks)
}

func summary(sc *scene) error {
	step("Summary")
	fmt.Printf("    %d of %d attacks by root on the running signer were BLOCKED (ptrace attach, /proc/PID/mem,\n", sc.blocked, len(sc.attacks))
	fmt.Println("    process_vm_readv, ...); the protected crash was REDACTED into systemd-coredump.")
	fmt.Println("    Before keyguard, root read the key from the signer's memory and from its crash dump.")
	fmt.Printf("    Web console:  %s   (self-signed certificate from keyguard-collector certs)\n", consoleURL)
	fmt.Println("    Login:        admin")
	fmt.Printf("    Password:     %s\n", sc.password)
	fmt.Printf("    DEMO CONSOLE url=%s user=admin password=%s\n", consoleURL, sc.password)
	fmt.Printf("    (guest time %.0f s)\n", time.Since(sc.start).Seconds())
	if sc.blocked != len(sc.attacks) {
		return fmt.Errorf("%d attacks were not blocked", len(sc.attacks)-sc.blocked)
	}
	fmt.Println("\nDEMO OK")
	return nil
}

// hold keeps the VM up after the demo: until the host (vmtest) has logged in to the console through the
// forwarded port and read the events page, then for DEMO_HOLD (hold > 0) or until Ctrl-C (hold < 0).
func hold(hold int) {
	if hold >= 0 {
		if waitFor(3*time.Minute, func() bool {
			out, _ := exec.Command("journalctl", "--no-pager", "-q", "-u", "keyguard-collector", "-g", "console login").CombinedOutput()
			return bytes.Contains(out, []byte("console login"))
		}) {
			fmt.Println("The collector logged the host's console login.")
			time.Sleep(20 * time.Second) // the host still reads the events pages
		} else {
			fmt.Println("No console login from the host within 3 minutes.")
		}
	}
	switch {
	case hold < 0:
		fmt.Println("The VM stays up: open the console, then press Ctrl-C here to stop it.")
		for {
			time.Sleep(time.Hour) // not select{}: with no other goroutine the runtime calls that a deadlock
		}
	case hold > 0:
		fmt.Printf("The VM stays up for %d s (DEMO_HOLD); Ctrl-C stops it earlier.\n", hold)
		time.Sleep(time.Duration(hold) * time.Second)
	}
}

func holdSeconds() int {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, w := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(w, "KEYGUARD_DEMO_HOLD="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// networkUp loads virtio-net (a module in Debian's kernel; the host put it in testRoot/modules) and
// lets systemd-networkd give it QEMU user networking's guest address (the host wrote
// /etc/systemd/network/10-keyguard-demo.network).
func networkUp() error {
	for _, m := range []string{"failover", "net_failover", "virtio_net"} {
		if out, err := exec.Command("insmod", filepath.Join(testRoot, "modules", m+".ko")).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("File exists")) {
			return fmt.Errorf("insmod %s: %v: %s", m, err, out)
		}
	}
	if _, err := sh("systemctl", "start", "systemd-networkd"); err != nil {
		return err
	}
	if !waitFor(30*time.Second, func() bool {
		out, _ := exec.Command("networkctl", "status", "--no-pager").CombinedOutput()
		return bytes.Contains(out, []byte("10.0.2.15"))
	}) {
		out, _ := exec.Command("networkctl", "--no-pager").CombinedOutput()
		return fmt.Errorf("the guest has no 10.0.2.15 address: %s", out)
	}
	fmt.Println("    10.0.2.15/24 up (QEMU forwards host 127.0.0.1:8443 to guest :8443)")
	return nil
}

// signerPID waits for the signer unit's main pid to be a running process other than old.
func signerPID(old int) int {
	pid := 0
	waitFor(60*time.Second, func() bool {
		pid = mainPID(signerUnit)
		return pid != 0 && pid != old
	})
	if pid == old {
		return 0
	}
	return pid
}

// crashAndDump sends SIGABRT to pid (GOTRACEBACK=crash makes Go dump core like C), waits until
// systemd-coredump has stored the dump and reports whether the key scalar is in it.
func crashAndDump(pid int, scalar []byte) (bool, error) {
	if _, err := sh("kill", "-ABRT", strconv.Itoa(pid)); err != nil {
		return false, err
	}
	file := fmt.Sprintf("/var/tmp/core.%d", pid)
	var last []byte
	if !waitFor(5*time.Minute, func() bool {
		out, err := exec.Command("coredumpctl", "--no-pager", "-q", "dump", strconv.Itoa(pid), "-o", file).CombinedOutput()
		last = out
		return err == nil
	}) {
		return false, fmt.Errorf("systemd-coredump has no dump of pid %d: %s", pid, last)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return false, err
	}
	info, _ := exec.Command("coredumpctl", "--no-pager", "list", strconv.Itoa(pid)).CombinedOutput()
	fmt.Printf("    coredumpctl list %d:\n      %s\n", pid, strings.ReplaceAll(strings.TrimSpace(string(info)), "\n", "\n      "))
	return containsKey(b, scalar), nil
}

func containsKey(b, scalar []byte) bool {
	rev := make([]byte, len(scalar))
	for i := range scalar {
		rev[i] = scalar[len(scalar)-1-i]
	}
	return bytes.Contains(b, scalar) || bytes.Contains(b, rev)
}

// installKeyguard installs and configures both packages as an operator would and returns the
// console admin's generated password.
func installKeyguard(oncall *demo.WebhookReceiver) (string, error) {
	host, _ := os.Hostname()
	pw := make([]byte, 15)
	rand.Read(pw)
	password := base64.RawURLEncoding.EncodeToString(pw)
	steps := []func() error{
		func() error {
			_, err := sh("dpkg", "-i", testRoot+"/debs/keyguard-collector_1.0_amd64.deb")
			return err
		},
		func() error { _, err := sh("dpkg", "-i", testRoot+"/debs/keyguard_1.0_amd64.deb"); return err },
		func() error { _, err := sh("dpkg", "-i", testRoot+"/debs/keyguard-agent_1.0_amd64.deb"); return err },
		func() error {
			_, err := sh("keyguard-collector", "certs", "init", "-dir", "/etc/keyguard")
			return err
		},
		func() error {
			_, err := sh("keyguard-collector", "certs", "host", "-dir", "/etc/keyguard", "-name", host)
			return err
		},
		func() error {
			_, err := sh("keyguard-collector", "certs", "operator", "-dir", "/etc/keyguard", "-name", "security-team")
			return err
		},
		func() error {
			return shIn(password+"\n", "keyguard-collector", "console", "user", "add", "-users", usersFile, "-name", "admin", "-role", "admin")
		},
		func() error {
			return write("/etc/systemd/system/keyguard-collector.service.d/console.conf", collectorDropIn, 0o644)
		},
		func() error { return write("/etc/default/keyguard-collector", collectorDefault, 0o644) },
		func() error { return oncall.WriteSecret(webhookKey) },
		func() error { return appendFile("/etc/keyguard/collector.yaml", oncall.AlertsConfig(webhookKeyCred)) },
		func() error { _, err := sh("systemctl", "daemon-reload"); return err },
		func() error { _, err := sh("systemctl", "restart", "keyguard-collector.service"); return err },
		func() error { _, err := sh("keyguard", "token", "keygen", "-out", "/root/operator"); return err },
		func() error { return copyFile("/root/operator.pub", "/etc/keyguard/operator.pub") },
		func() error { return write("/etc/keyguard/policy.yaml", policy, 0o644) },
		func() error {
			return write("/etc/default/keyguard-agent", fmt.Sprintf("KEYGUARD_COLLECTOR=localhost:7443\nKEYGUARD_COLLECTOR_CA=/etc/keyguard/ca.crt\nKEYGUARD_CERT=/etc/keyguard/%s.crt\nKEYGUARD_KEY=/etc/keyguard/%s.key\n", host, host), 0o644)
		},
		func() error { _, err := sh("systemctl", "enable", "--now", "keyguard-agent.service"); return err },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return "", err
		}
	}
	if !waitFor(90*time.Second, func() bool { return exec.Command("keyguard", "status").Run() == nil }) {
		j, _ := exec.Command("journalctl", "--no-pager", "-n", "30", "-u", "keyguard-agent").CombinedOutput()
		return "", fmt.Errorf("the agent does not answer keyguard status:\n%s", j)
	}
	if !waitFor(30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:8443", time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		j, _ := exec.Command("journalctl", "--no-pager", "-n", "30", "-u", "keyguard-collector").CombinedOutput()
		return "", fmt.Errorf("the collector's console is not listening on :8443:\n%s", j)
	}
	return password, nil
}

func eventsArgs(filter ...string) []string {
	return append([]string{"events", "-collector", "localhost:7443", "-ca", "/etc/keyguard/ca.crt",
		"-cert", "/etc/keyguard/security-team.crt", "-key", "/etc/keyguard/security-team.key", "-limit", "20"}, filter...)
}

// dumpAction waits for the agent's core_dump event about pid and returns its final action.
func dumpAction(pid int) string {
	action := ""
	waitFor(5*time.Minute, func() bool {
		f, err := os.Open(eventLog)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			// The event log: a header line, then one protojson keyguard.v1.Event per line. The kernel's
			// own report (streaming to the handler) has no action; the handler's has the final one.
			ev := &keyguardv1.Event{}
			if protojson.Unmarshal(sc.Bytes(), ev) != nil {
				continue
			}
			if d := ev.GetCoreDump(); d != nil && int(d.GetProcess().GetPid()) == pid && d.GetAction() != keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_UNSPECIFIED {
				action = strings.ToLower(strings.TrimPrefix(d.GetAction().String(), "CORE_DUMP_ACTION_"))
				return true
			}
		}
		return false
	})
	return action
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return write(dst, string(b), 0o755)
}

func appendFile(p, content string) error {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkAlerts waits until every attack of the table is an alert at the webhook (signature checked by
// the receiver) and then checks that the collector stored no event at warning level or above other
// than the attacks (memory accesses by testproc, and by the demo's own search for the key, against the
// signer) and the protected crash's dump.
func checkAlerts(oncall *demo.WebhookReceiver, pid int, attacks []demo.Attack) error {
	alerted := map[string]demo.WebhookAlert{}
	waitFor(3*time.Minute, func() bool {
		for _, al := range oncall.Alerts() {
			for _, a := range attacks {
				if _, ok := alerted[a.Op]; !ok && al.Event != nil && int(al.Event.GetMemoryAccess().GetTarget().GetPid()) == pid && a.Shows(al.Event) {
					alerted[a.Op] = al
				}
			}
		}
		return len(alerted) == len(attacks)
	})
	for _, a := range attacks {
		if al, ok := alerted[a.Op]; ok {
			fmt.Printf("    %-48s ALERTED  #%d %s: %s\n", a.What, al.ID, al.Severity, al.Summary)
		} else {
			fmt.Printf("    %-48s NO ALERT\n", a.What)
		}
	}
	if r := oncall.Refused(); len(r) > 0 {
		return fmt.Errorf("the webhook receiver refused %d requests: %v", len(r), r)
	}
	if len(alerted) != len(attacks) {
		return fmt.Errorf("%d of %d attacks reached the webhook as alerts (%d alerts received)", len(alerted), len(attacks), len(oncall.Alerts()))
	}
	stored, err := demo.StoredAtWarning("keyguard", eventsArgs()[1:9]...)
	if err != nil {
		return err
	}
	// The attacks are testproc's, and the demo's own search for the key in the signer's memory
	// (memscan: /proc/PID/maps and mem) after them.
	self, _ := os.Executable()
	var noise []string
	attacksStored := 0
	for _, se := range stored {
		ev := se.GetEvent()
		switch m, d := ev.GetMemoryAccess(), ev.GetCoreDump(); {
		case m != nil && int(m.GetTarget().GetPid()) == pid && (strings.HasSuffix(demo.Actor(ev), "/testproc") || demo.Actor(ev) == self):
			attacksStored++
		case d != nil && int(d.GetProcess().GetPid()) == pid:
			// The demo's own protected crash (redacted: medium).
		default:
			noise = append(noise, demo.Describe(ev))
		}
	}
	fmt.Printf("    stored at warning level or above: %d events, %d of them the attacks (testproc and the demo's key search), %d the protected crash, %d others\n",
		len(stored), attacksStored, len(stored)-attacksStored-len(noise), len(noise))
	if len(noise) > 0 {
		return fmt.Errorf("%d stored events at warning level or above are not from the demo's attacks:\n    %s", len(noise), strings.Join(noise, "\n    "))
	}
	return nil
}
