// Package operator carries out what the operator approves with tokens signed by the operator key
// (package optoken): the install check (the key and the approved policy pinned at the first start after
// boot, a changed policy only with a policy token), break-glass grants and uninstall.
package operator

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/loader"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

// configDigest binds the approved policy (the SHA-256 of its file, what a policy token names) and the
// enforcement flags the agent runs with: changing either after install needs a policy token.
func configDigest(policySHA [32]byte, lc loader.Config) [32]byte {
	h := sha256.New()
	fmt.Fprintf(h, "keyguard-config-v1\npolicy=%x\ndeny_traced=%v\n", policySHA, lc.DenyTraced)
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

// Fingerprint names an operator public key in messages: the first 8 bytes of its SHA-256, hex.
func Fingerprint(pub []byte) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// CheckInstall makes sure the operator has approved what this agent is about to enforce. On the first
// start after boot (nothing pinned) the operator key file and the policy are recorded in the pinned
// install map. Later starts use the pinned key, whatever the file now holds, and a changed policy (or
// enforcement flag) needs a policy token signed by that key. It returns the health events to emit.
func (o *Operator) CheckInstall(policySHA [32]byte) ([]*keyguardv1.Event, error) {
	policyHex := hex.EncodeToString(policySHA[:])
	fileKey, err := optoken.LoadPublicKey(o.cfg.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("%w\nkeyguard needs the operator's public key, which signs uninstall, break-glass and policy tokens: "+
			"make a key pair off this host with `keyguard token keygen -out operator` and install operator.pub as %s (or pass -operator-key)",
			err, o.cfg.KeyPath)
	}
	digest := configDigest(policySHA, o.cfg.Loader)
	in, ok, err := o.guard.Installed()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if !ok {
		in = loader.Install{InstalledUnix: uint64(now.Unix())}
		copy(in.OperatorKey[:], fileKey)
		in.ConfigSha256 = digest
		if err := o.guard.SetInstalled(in); err != nil {
			return nil, err
		}
		o.key = ed25519.PublicKey(in.OperatorKey[:])
		o.log.Info("operator key and policy recorded", "operator_key", Fingerprint(o.key), "policy_sha256", policyHex)
		return nil, nil
	}
	o.key = ed25519.PublicKey(bytes.Clone(in.OperatorKey[:]))
	var evs []*keyguardv1.Event
	if !bytes.Equal(fileKey, o.key) {
		msg := fmt.Sprintf("the operator key in %s (%s) is not the key installed at %s (%s); the installed key stays in force until keyguard is uninstalled or the host reboots",
			o.cfg.KeyPath, Fingerprint(fileKey), time.Unix(int64(in.InstalledUnix), 0).UTC().Format(time.RFC3339), Fingerprint(o.key))
		o.log.Warn(msg)
		evs = append(evs, events.Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_RUNNING, AgentVersion: o.cfg.Version, Detail: msg}))
	}
	if in.ConfigSha256 == digest {
		return evs, nil
	}
	tokPath := o.cfg.PolicyTokenPath
	refuse := func(why string) error {
		return fmt.Errorf("the policy or enforcement flags changed since they were approved, and %s.\n"+
			"Enforcement of the approved policy continues (it is pinned in the kernel). To apply the change, have an operator sign it:\n"+
			"  keyguard token sign -key operator.key -action policy -policy %s -host %s -operator NAME -reason TEXT > %s\n"+
			"and start the agent again (policy sha256 %s)", why, o.cfg.PolicyPath, o.cfg.Hostname, tokPath, policyHex)
	}
	raw, err := os.ReadFile(tokPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, refuse("there is no policy token at " + tokPath)
	} else if err != nil {
		return nil, refuse(fmt.Sprintf("the policy token could not be read: %v", err))
	}
	c, err := o.Verify(string(raw), optoken.ActionPolicy)
	if err != nil {
		return nil, refuse(fmt.Sprintf("the policy token at %s is not valid: %v", tokPath, err))
	}
	if c.PolicySHA256 != policyHex {
		return nil, refuse(fmt.Sprintf("the policy token at %s approves another policy (sha256 %s)", tokPath, c.PolicySHA256))
	}
	if err := o.guard.UseToken(c.Nonce, c.ExpiresAt); err != nil {
		return nil, refuse(err.Error())
	}
	in.ConfigSha256 = digest
	if err := o.guard.SetInstalled(in); err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("policy change approved by %s: %s (policy sha256 %s)", c.Operator, c.Reason, c.PolicySHA256)
	o.log.Warn(msg)
	evs = append(evs, events.Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_POLICY_APPROVED, AgentVersion: o.cfg.Version, Detail: msg}))
	return evs, nil
}

// Verify checks a token against the installed operator key, this host and the action. It does not
// mark it used.
func (o *Operator) Verify(tok, action string) (optoken.Claims, error) {
	if o.key == nil {
		return optoken.Claims{}, errors.New("no operator key is installed")
	}
	c, err := optoken.Verify(o.key, strings.TrimSpace(tok), time.Now())
	if err != nil {
		return c, err
	}
	if c.Action != action {
		return c, fmt.Errorf("the token authorises %q, not %q", c.Action, action)
	}
	if c.Host != o.cfg.Hostname {
		return c, fmt.Errorf("the token is for host %q, this is %q", c.Host, o.cfg.Hostname)
	}
	return c, nil
}
