package guesttest

import (
	"crypto/ed25519"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"
)

func writeOperatorKey() error {
	pub, priv, err := optoken.GenerateKey()
	if err != nil {
		return err
	}
	OperatorKey = priv
	if _, StrangerKey, err = optoken.GenerateKey(); err != nil {
		return err
	}
	b, err := optoken.MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	return os.WriteFile(OperatorPub, b, 0o644)
}

// Hostname is the guest's host name, as operator tokens name it.
func Hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// SignToken signs c with key, valid for an hour from a second ago unless c says when.
func SignToken(t *testing.T, key ed25519.PrivateKey, c optoken.Claims) string {
	t.Helper()
	tok, err := sign(key, c)
	if err != nil {
		t.Fatalf("sign %+v: %v", c, err)
	}
	return tok
}

func sign(key ed25519.PrivateKey, c optoken.Claims) (string, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now().Add(-time.Second)
		c.ExpiresAt = c.IssuedAt.Add(time.Hour)
	}
	return optoken.Sign(key, c)
}

// WithStdin gives cmd s as its standard input.
func WithStdin(cmd *exec.Cmd, s string) *exec.Cmd {
	cmd.Stdin = strings.NewReader(s)
	return cmd
}

// BreakGlass asks the running agent for a break-glass grant with the token.
func BreakGlass(tok string) ([]byte, error) {
	return WithStdin(exec.Command(CLIBin, "break-glass", "-socket", CtlSock, "-token-file", "-"), tok).CombinedOutput()
}

// UninstallWith asks the running agent to uninstall with the token.
func UninstallWith(tok string) ([]byte, error) {
	return WithStdin(exec.Command(AgentBin, "uninstall", "-socket", CtlSock, "-token-file", "-"), tok).CombinedOutput()
}

// RunAgentOnce starts the agent expecting it to refuse, and returns its output.
func RunAgentOnce(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(AgentBin, append([]string{"run", "-policy", Dir + "/policy.yaml", "-events", EventsLog,
		"-state-dir", Dir + "/state", "-control-socket", CtlSock, "-operator-key", OperatorPub}, extra...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the agent did not refuse within 60 s: %s", out)
	}
	return string(out), err
}
