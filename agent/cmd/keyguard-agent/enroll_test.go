package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/collector/collectortest"
)

// The agent's -enroll-url path against the real collector binary: with no certificate it enrolls with
// the token file (then deleted) as its host name; with a certificate it needs no token.
func TestEnrollAndRenew(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin)
	dir := t.TempDir()
	if out, err := exec.Command(bin, "enroll", "token-key", "-out", dir+"/tk").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	collectortest.Start(t, bin, collectortest.Options{PKI: pki, Args: []string{"-enroll-listen", "127.0.0.1:0",
		"-enroll-ca-dir", pki.Dir, "-enroll-token-key", dir + "/tk", "-enroll-addr-file", dir + "/addr"}})
	addr, _ := os.ReadFile(dir + "/addr")
	tok, err := exec.Command(bin, "enroll", "token", "-token-key", dir+"/tk", "-scope", "web1").Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/bootstrap.token", tok, 0o600); err != nil {
		t.Fatal(err)
	}
	tf := dir + "/bootstrap.token"
	f := enrollConfig{URL: "https://" + strings.TrimSpace(string(addr)), TokenFile: tf, Timeout: 20 * time.Second}
	exp := &export.Config{CAFile: pki.File("ca.crt"), CertFile: dir + "/agent.pem", KeyFile: dir + "/agent-key.pem"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := enrollAndRenew(ctx, f, exp, "web1", log); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(exp.CertFile); err != nil {
		t.Fatalf("no certificate after enrollment: %v", err)
	}
	if _, err := os.Stat(tf); !os.IsNotExist(err) {
		t.Errorf("the spent token is still there: %v", err)
	}
	if err := enrollAndRenew(ctx, f, exp, "web1", log); err != nil {
		t.Errorf("restart with a certificate: %v", err)
	}
	// Another host with no certificate and no token says what to do.
	exp2 := &export.Config{CAFile: pki.File("ca.crt"), CertFile: dir + "/b.pem", KeyFile: dir + "/b-key.pem"}
	if err := enrollAndRenew(ctx, f, exp2, "db1", log); err == nil || !strings.Contains(err.Error(), "enroll token -scope db1") {
		t.Errorf("no token: %v", err)
	}
}

// The Kubernetes path (deploy/kubernetes, the Helm chart): one node-pool token with a use count in a
// read-only Secret file, each agent enrolling as its node name (-host-name $(NODE_NAME) from the
// downward API) against the real collector binary. Two nodes enroll and the token file stays for the
// next; a third use, a name outside the pattern and, after a collector restart (the registry is in
// its database), a second enrollment of a live node name are refused.
func TestEnrollNodePool(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin)
	dir := t.TempDir()
	if out, err := exec.Command(bin, "enroll", "token-key", "-out", dir+"/tk").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	col := collectortest.Start(t, bin, collectortest.Options{PKI: pki, Args: []string{"-enroll-listen", "localhost:0", // not 127.0.0.1:0, which Restart reuses for -listen
		"-enroll-ca-dir", pki.Dir, "-enroll-token-key", dir + "/tk", "-enroll-addr-file", dir + "/addr",
		"-revoked-serials", dir + "/revoked.txt"}}) // not there yet, as on the chart's fresh data volume
	tok, err := exec.Command(bin, "enroll", "token", "-token-key", dir+"/tk", "-scope", "node-*", "-uses", "2", "-ttl", "168h").Output()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/revoked.txt"); err != nil {
		t.Errorf("the collector did not create its revocation file: %v", err)
	}
	secret := dir + "/secret/bootstrap.token"
	os.Mkdir(dir+"/secret", 0o755)
	if err := os.WriteFile(secret, tok, 0o400); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	enrollNode := func(node, state string) error {
		addr, _ := os.ReadFile(dir + "/addr")
		f := enrollConfig{URL: "https://" + strings.TrimSpace(string(addr)), TokenFile: secret, Timeout: 20 * time.Second}
		exp := &export.Config{CAFile: pki.File("ca.crt"), CertFile: state + "/tls/agent.pem", KeyFile: state + "/tls/agent-key.pem"}
		return enrollAndRenew(ctx, f, exp, node, log)
	}
	for _, c := range []struct {
		node, want string
	}{
		{"node-a", ""}, {"node-b", ""}, {"node-c", "403"}, // the third use of a 2-use token
		{"web1", "403"}, // outside the token's scope
	} {
		err := enrollNode(c.node, t.TempDir())
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.node, err, c.want)
		}
		if _, err := os.Stat(secret); err != nil {
			t.Fatalf("the node pool's token is gone after %s: %v", c.node, err)
		}
	}
	col.Stop()
	col.Restart(t)
	tok2, err := exec.Command(bin, "enroll", "token", "-token-key", dir+"/tk", "-scope", "node-*", "-uses", "5", "-ttl", "1h").Output()
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(secret, 0o600)
	if err := os.WriteFile(secret, tok2, 0o400); err != nil { // the operator rotated the token
		t.Fatal(err)
	}
	if err := enrollNode("node-a", t.TempDir()); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("node-a again after a collector restart: %v, want 409 (live name)", err)
	}
	if err := enrollNode("node-d", t.TempDir()); err != nil {
		t.Errorf("node-d with the rotated token: %v", err)
	}
}
