package guard

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/keyguard/keyguard/proto/optoken"
	"github.com/keyguard/keyguard/testvm/guesttest"
)

// The suite's fixture is testvm/guesttest's; the names below are thin wrappers, kept so that tests
// written against this package's helpers compile unchanged.

func TestMain(m *testing.M) {
	guesttest.Main(m, guesttest.Options{Ready: ready})
}

// ready copies the fixture's state into this package's names.
func ready() {
	agent = guesttest.Agent
	early = wrap(guesttest.Early)
	operatorKey, strangerKey = guesttest.OperatorKey, guesttest.StrangerKey
	testKeys.rsa, testKeys.ec, testKeys.ed, testKeys.pem = guesttest.TestKeys.RSA, guesttest.TestKeys.EC, guesttest.TestKeys.Ed, guesttest.TestKeys.PEM
}

const (
	dir           = guesttest.Dir
	agentBin      = guesttest.AgentBin
	cliBin        = guesttest.CLIBin
	procBin       = guesttest.ProcBin
	eventsLog     = guesttest.EventsLog
	pinPath       = guesttest.PinPath
	ctlSock       = guesttest.CtlSock
	user          = guesttest.User
	policyYAML    = guesttest.PolicyYAML
	victimEnforce = guesttest.VictimEnforce
	victimLink    = guesttest.VictimLink
	victimCopy    = guesttest.VictimCopy
	victimAudit   = guesttest.VictimAudit
	victimPlain   = guesttest.VictimPlain
	victimRedact  = guesttest.VictimRedact
	debugger      = guesttest.Debugger
	bpfTool       = guesttest.BPFTool
	keyFile       = guesttest.KeyFile
	holderExe     = guesttest.HolderExe
	holderKey     = guesttest.HolderKey
	racerExe      = guesttest.RacerExe
	racerKey      = guesttest.RacerKey
	operatorPub   = guesttest.OperatorPub
	testKeysDir   = guesttest.TestKeysDir
	testPubDir    = guesttest.TestPubDir
	corePattern   = guesttest.CorePattern
)

var (
	agent       *exec.Cmd // guesttest.Agent, as of the last startAgent
	early       *victim   // guesttest.Early
	operatorKey ed25519.PrivateKey
	strangerKey ed25519.PrivateKey
	testKeys    struct {
		rsa *rsa.PrivateKey
		ec  *ecdsa.PrivateKey
		ed  ed25519.PrivateKey
		pem [][]byte
	}
)

type (
	event       = guesttest.Event
	proc        = guesttest.Proc
	health      = guesttest.Health
	gap         = guesttest.Gap
	finding     = guesttest.Finding
	healthEvent = guesttest.Event
)

func startAgent(extra ...string) error {
	err := guesttest.StartAgent(extra...)
	agent = guesttest.Agent
	return err
}

func stopAgent()                     { guesttest.StopAgent() }
func copyFile(src, dst string) error { return guesttest.CopyFile(src, dst) }
func readEvents() []event            { return guesttest.ReadEvents() }
func countLines(string) int          { return guesttest.Count() }

func waitEvent(t *testing.T, what string, pred func(event) bool) event {
	t.Helper()
	return guesttest.WaitEventAfter(t, 0, what, pred)
}

func waitEventAfter(t *testing.T, skip int, what string, pred func(event) bool) event {
	t.Helper()
	return guesttest.WaitEventAfter(t, skip, what, pred)
}

// victim is a guesttest.Victim with the field names this package's tests use.
type victim struct {
	v     *guesttest.Victim
	cmd   *exec.Cmd
	pid   int
	tids  []int
	addr  string
	child int
	stdin io.WriteCloser
}

func wrap(g *guesttest.Victim) *victim {
	if g == nil {
		return nil
	}
	return &victim{v: g, cmd: g.Cmd, pid: g.PID, tids: g.TIDs, addr: g.Addr, child: g.Child, stdin: g.Stdin}
}

func startVictim(t *testing.T, exe string, uid int, args ...string) *victim {
	t.Helper()
	return wrap(guesttest.StartVictim(t, exe, uid, args...))
}

func startVictimErr(exe string, uid int, args ...string) (*victim, error) {
	g, err := guesttest.StartVictimErr(exe, uid, args...)
	return wrap(g), err
}

func (v *victim) readLine() error {
	err := v.v.ReadLine()
	*v = *wrap(v.v)
	return err
}

func (v *victim) kill() { v.v.Kill() }

func attack(t *testing.T, exe string, uid int, op string, pid, tid int, addr string) (int, string) {
	t.Helper()
	return guesttest.Attack(t, exe, uid, op, pid, tid, addr)
}

func hostname(t *testing.T) string { t.Helper(); return guesttest.Hostname(t) }

func signToken(t *testing.T, key ed25519.PrivateKey, c optoken.Claims) string {
	t.Helper()
	return guesttest.SignToken(t, key, c)
}

func withStdin(cmd *exec.Cmd, s string) *exec.Cmd { return guesttest.WithStdin(cmd, s) }
func breakGlass(tok string) ([]byte, error)       { return guesttest.BreakGlass(tok) }
func uninstallWith(tok string) ([]byte, error)    { return guesttest.UninstallWith(tok) }
func setCorePattern(t *testing.T, p string)       { t.Helper(); guesttest.SetCorePattern(t, p) }
func names(es []os.DirEntry) []string             { return guesttest.Names(es) }
func keyEncodings() map[string][]byte             { return guesttest.KeyEncodings() }
func leaks(b []byte) []string                     { return guesttest.Leaks(b) }

func runAgentOnce(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	return guesttest.RunAgentOnce(t, extra...)
}

func crash(t *testing.T, exe string, args ...string) syscall.WaitStatus {
	t.Helper()
	return guesttest.Crash(t, exe, args...)
}

func kallsyms(t *testing.T, names ...string) map[string]bool { return guesttest.Kallsyms(t, names...) }
func fileop(t *testing.T, args ...string) string             { t.Helper(); return guesttest.FileOp(t, args...) }
