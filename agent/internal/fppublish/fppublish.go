// Package fppublish publishes the key fingerprints of a signing host: the agent daemon derives the
// fingerprints (detect.Fingerprinter, under the deployment key) of every key file its policy
// protects, at start and whenever the policy's resolution or a key file changes, and sends them
// to the collector as one KeyFingerprints event over its own mTLS export; sentinel hosts and
// `keyguard fetch-fingerprints` read them from there. A set equal to the last one published is not
// sent again.
package fppublish

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/keyguard/keyguard/agent/internal/detect"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/proto"
)

// Publisher derives and publishes fingerprint sets. It is used by one goroutine at a time.
type Publisher struct {
	deploy []byte
	submit func(*keyguardv1.Event) bool
	log    *slog.Logger
	last   [sha256.Size]byte
	sent   bool
}

// New returns a Publisher keyed with deploy (detect.DeploymentKeySize bytes) that hands each new
// set to submit (the daemon's export; false: the event was not queued and is retried at the next
// Update).
func New(deploy []byte, submit func(*keyguardv1.Event) bool, log *slog.Logger) (*Publisher, error) {
	if _, err := detect.NewFingerprinter(deploy); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{deploy: slices.Clone(deploy), submit: submit, log: log}, nil
}

// Update derives the fingerprints of the private keys in files (paths; duplicates and order do
// not matter) and publishes them unless they equal the last set published. A file that cannot be
// read or parsed (a public key, an encrypted key) is logged and left out: the others are still
// published. It reports whether a new set was submitted.
func (p *Publisher) Update(files []string) (bool, error) {
	files = slices.Clone(files)
	slices.Sort(files)
	files = slices.Compact(files)
	fp, err := detect.NewFingerprinter(p.deploy)
	if err != nil {
		return false, err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err == nil {
			_, err = fp.AddKeyFile(f, data)
		}
		if err != nil {
			p.log.Warn("key file left out of the published fingerprints", "file", f, "error", err)
		}
	}
	set := fp.Set()
	msg := set.Proto()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return false, fmt.Errorf("fingerprints: %w", err)
	}
	sum := sha256.Sum256(b)
	if (p.sent && sum == p.last) || (!p.sent && len(set.Keys) == 0) {
		return false, nil // unchanged, or nothing to publish yet
	}
	if !p.submit(&keyguardv1.Event{Kind: &keyguardv1.Event_KeyFingerprints{KeyFingerprints: msg}}) {
		return false, fmt.Errorf("fingerprints of %d keys not queued for the collector (export queue full); they are sent at the next change or restart", len(set.Keys))
	}
	p.last, p.sent = sum, true
	p.log.Info("published key fingerprints", "keys", len(set.Keys), "fingerprints", len(set.Entries))
	return true, nil
}
