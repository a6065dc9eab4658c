package daemon

import (
	"fmt"
	"maps"
	"slices"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/fppublish"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/scan"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// newFingerprintPublisher sets up the publishing of the protected keys' fingerprints when a
// deployment key is configured and events go to a collector.
func (a *Agent) newFingerprintPublisher() error {
	if a.cfg.FingerprintDeploymentKey == "" {
		return nil
	}
	if a.exp == nil {
		a.log.Warn("fingerprint_deployment_key is set but there is no collector: key fingerprints are not published")
		return nil
	}
	deploy, _, err := scan.LoadDeploymentKey(a.cfg.FingerprintDeploymentKey, false)
	if err != nil {
		return fmt.Errorf("key fingerprints: %w", err)
	}
	a.fpPub, err = fppublish.New(deploy, func(ev *keyguardv1.Event) bool {
		ev.AgentVersion = a.cfg.Version
		return a.exp.Submit(ev, export.PriorityOf(ev))
	}, a.log)
	return err
}

// publishFingerprints publishes the fingerprints of the key files res protects, if they changed.
func (a *Agent) publishFingerprints(res *policy.Resolved) {
	if a.fpPub == nil || res == nil {
		return
	}
	if _, err := a.fpPub.Update(KeyFilePaths(res)); err != nil {
		a.log.Error("publishing key fingerprints", "error", err)
	}
}

// KeyFilePaths lists the key files of every rule of res, sorted, each once.
func KeyFilePaths(res *policy.Resolved) []string {
	var out []string
	for _, fs := range res.KeyFiles {
		out = append(out, slices.Collect(maps.Values(fs))...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
