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
