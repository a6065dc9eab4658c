// Package demo holds the steps the two demos (keyguard-demo in the small VM, keyguard-demo-systemd in
// the systemd VM) share: the narration, the signing key, root stealing it from memory, the attack
// table, and the security team's view of the collector.
package demo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/keyguard/keyguard/testvm/guest/memscan"
)

// Main runs a demo and exits 1 after printing "DEMO FAILED" when it returns an error.
func Main(run func() error) {
	if err := run(); err != nil {
		fmt.Println("\nDEMO FAILED:", err)
		os.Exit(1)
	}
}

// Step announces a step of the demo.
func Step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

// SigningKey is the sample signer's ECDSA P-256 key.
type SigningKey struct {
	PrivatePEM, PublicPEM []byte
	// Scalar is the private scalar, the 32 bytes searched for in memory and core dumps.
	Scalar []byte
}

// NewSigningKey makes a fresh signing key.
func NewSigningKey() (SigningKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return SigningKey{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return SigningKey{}, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return SigningKey{}, err
	}
	return SigningKey{
		PrivatePEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		PublicPEM:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
		Scalar:     key.D.FillBytes(make([]byte, 32)),
	}, nil
}

// StealFromMemory is root reading the signer's memory without keyguard: it reports where the scalar is.
func StealFromMemory(pid int, scalar []byte) {
	if off, ok := memscan.Find(pid, scalar); ok {
		fmt.Printf("    STOLEN: the private key's 32-byte scalar is at 0x%x in pid %d's memory\n", off, pid)
	} else {
		fmt.Printf("    root read all of pid %d's memory (the scalar's layout was not found this time)\n", pid)
	}
}

// Attack is one way root tries to read the signer (a testproc attack operation).
type Attack struct{ Op, What string }

// Attacks are the attacks both demos run.
var Attacks = []Attack{
	{"attach", "ptrace attach (what gdb -p does)"},
	{"mem", "read /proc/PID/mem (what memory scrapers do)"},
	{"vmreadv", "process_vm_readv"},
	{"seize", "ptrace seize"},
	{"environ", "read /proc/PID/environ"},
}

// RunAttacks runs each attack with testproc against pid, prints a table and returns how many were
// blocked. The key must not be readable afterwards either.
func RunAttacks(testproc string, pid int, scalar []byte, attacks []Attack) (blocked int, err error) {
	for _, a := range attacks {
		out, _ := exec.Command(testproc, "attack", a.Op, strconv.Itoa(pid)).Output()
		res := strings.TrimSpace(string(out))
		verdict := "NOT BLOCKED"
		if strings.HasPrefix(res, "ERR") {
			verdict = "BLOCKED"
			blocked++
		}
		fmt.Printf("    %-48s %-11s (%s)\n", a.What, verdict, res)
	}
	if _, ok := memscan.Find(pid, scalar); ok {
		return blocked, fmt.Errorf("the key scalar is still readable with keyguard running")
	}
	return blocked, nil
}

// ShowEvents prints what the collector stored: `keyguard events` with base arguments and each filter.
func ShowEvents(keyguard string, base []string, filters ...[]string) error {
	for _, filter := range filters {
		cli := exec.Command(keyguard, append(append([]string{"events"}, base...), filter...)...)
		cli.Stdout, cli.Stderr = os.Stdout, os.Stdout
		if err := cli.Run(); err != nil {
			return fmt.Errorf("keyguard events: %w", err)
		}
		fmt.Println()
	}
	return nil
}
