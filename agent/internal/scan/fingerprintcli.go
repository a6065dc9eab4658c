package scan

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

// FingerprintSummary is the summary line of `keyguard fingerprint`.
const FingerprintSummary = "write keyed fingerprints of private keys, for scan -fingerprints and the sentinel"

// FingerprintCommand is `keyguard fingerprint`: it derives the fingerprints of every private key in
// the given key files under a deployment key and writes them to a file.
func FingerprintCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := cmdline.NewFlagSet("keyguard fingerprint", "-deployment-key FILE -o OUT KEYFILE...",
		"Writes keyed, truncated fingerprints of every encoding of each private key (PEM, DER, JWK,\n"+
			"RSA p, q, d, CRT values, EC scalars, Ed25519 seeds and expanded keys, big- and little-endian)\n"+
			"to OUT, for 'keyguard scan -fingerprints OUT' and the agent's sentinel. OUT does not let anyone\n"+
			"recover a key or test a guess cheaper than brute force on the key (README.md, Fingerprints).")
	keyPath := fl.String("deployment-key", "", "file holding the per-deployment fingerprint key (64 hex digits); created with a fresh random key if it does not exist")
	out := fl.String("o", "", "fingerprint file to write (mode 0600)")
	if code, done := cmdline.Parse(fl, args, stdout, stderr); done {
		return code
	}
	if *keyPath == "" || *out == "" || fl.NArg() == 0 {
		return cmdline.Usagef(fl, stderr, "give -deployment-key, -o and at least one key file")
	}
	deploy, created, err := LoadDeploymentKey(*keyPath, true)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard fingerprint: %v\n", err)
		return ExitError
	}
	if created {
		fmt.Fprintf(stderr, "keyguard fingerprint: created deployment key %s (use the same one for every key of this deployment)\n", *keyPath)
	}
	fp, err := detect.NewFingerprinter(deploy)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard fingerprint: %v\n", err)
		return ExitError
	}
	for _, p := range fl.Args() {
		data, err := os.ReadFile(p)
		if err == nil {
			_, err = fp.AddKeyFile(p, data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "keyguard fingerprint: %v\n", err)
			return ExitError
		}
	}
	set := fp.Set()
	if err := detect.WriteFingerprints(*out, set); err != nil {
		fmt.Fprintf(stderr, "keyguard fingerprint: write %s: %v\n", *out, err)
		return ExitError
	}
	fmt.Fprintf(stdout, "%s: %d keys, %d fingerprints\n", *out, len(set.Keys), len(set.Entries))
	return ExitClean
}

// LoadDeploymentKey reads a hex deployment key; if path does not exist and create is set, it writes
// a fresh one (mode 0600) and reports created.
func LoadDeploymentKey(path string, create bool) (key []byte, created bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		k := detect.NewDeploymentKey()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("create deployment key: %w", err)
		}
		_, err = fmt.Fprintln(f, hex.EncodeToString(k))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return k, true, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("read deployment key: %w", err)
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != detect.DeploymentKeySize {
		return nil, false, fmt.Errorf("deployment key %s must hold %d hex digits", path, 2*detect.DeploymentKeySize)
	}
	return k, false, nil
}
