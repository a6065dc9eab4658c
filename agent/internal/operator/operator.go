package operator

import (
	"crypto/ed25519"
	"log/slog"
	"sync"

	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/policy"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Config says where the operator's key and approvals are, and what tokens must name.
type Config struct {
	// KeyPath is the operator's Ed25519 public key (PEM), pinned on the first start after boot.
	KeyPath string
	// PolicyPath is the policy the agent enforces; PolicyTokenPath the token approving a change to it.
	PolicyPath, PolicyTokenPath string
	// Hostname is the host name tokens must carry.
	Hostname string
	// Version is the agent's version, in the health events this package reports.
	Version string
	// Loader holds the enforcement flags bound to the approved policy, and the pin path uninstall removes.
	Loader loader.Config
}

// Deps are what operator actions act on and report to.
type Deps struct {
	Guard  *loader.Guard
	Policy *policy.Policy
	// Emit reports an event (local log and export); Flush makes the local log durable, so an action
	// is recorded before it takes effect.
	Emit  func(*keyguardv1.Event)
	Flush func() error
	// Drain waits up to the given time for the collector to acknowledge what was emitted (nil: no export).
	Drain func()
	Log   *slog.Logger
}

// Operator carries out operator-approved actions for one running agent.
type Operator struct {
	cfg   Config
	guard *loader.Guard
	pol   *policy.Policy
	emit  func(*keyguardv1.Event)
	flush func() error
	drain func()
	log   *slog.Logger
	key   ed25519.PublicKey // the installed operator key, set by CheckInstall

	mu     sync.Mutex
	grants map[uint64]grant
	nextID uint64
}

// New returns an Operator; call CheckInstall before anything else.
func New(cfg Config, d Deps) *Operator {
	if d.Drain == nil {
		d.Drain = func() {}
	}
	return &Operator{cfg: cfg, guard: d.Guard, pol: d.Policy, emit: d.Emit, flush: d.Flush, drain: d.Drain, log: d.Log,
		grants: map[uint64]grant{}}
}
