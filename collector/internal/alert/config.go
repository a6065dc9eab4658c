// Package alert turns stored events into alerts that reach a person: alert rules (match on severity,
// kind, host and policy rule; a grouping window; a rate limit) routed to outputs (a webhook signed with
// HMAC-SHA256, a Slack-compatible webhook, syslog RFC 5424 over TCP+TLS with JSON or CEF payloads, and
// the Alertmanager v2 API).
//
// Delivery is at least once from an outbox in the event store (tables alert_cursor, alert_outbox,
// alert_silent; store migration 4). An evaluator walks each host's chain from a per-host cursor and, in
// the same transaction that advances the cursor, writes the alerts it raises; a sender claims due alerts
// with a lease (FOR UPDATE SKIP LOCKED on PostgreSQL), sends them and marks them delivered. So an alert
// survives a collector restart (it is sent when the collector is back) and, with several collectors on
// one PostgreSQL database, each event is evaluated once and each alert is sent once (again only if a
// collector dies holding a lease, after the lease runs out). Agents that go silent (no batch for
// Config.SilentAfter) raise an alert of kind "agent_silent".
package alert

import (
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Kinds of alerts raised by the collector itself rather than by a stored event.
const (
	// KindAgentSilent: a host not heard from for Config.SilentAfter.
	KindAgentSilent = "agent_silent"
	// KindChainFailed: a verification of a host's hash chain found events modified, deleted or relinked
	// (critical).
	KindChainFailed = "chain_failed"
)

// Rule is one alert rule: which events raise alerts and where they go.
type Rule struct {
	// Name identifies the rule (unique).
	Name string `yaml:"name"`
	// MinSeverity: only events at or above it (info, low, medium, high, critical; default high).
	MinSeverity string `yaml:"min_severity"`
	// Kinds: only these event kinds (memory_access, core_dump, ..., agent_silent); empty for all.
	Kinds []string `yaml:"kinds"`
	// Hosts: only these hosts; empty for all.
	Hosts []string `yaml:"hosts"`
	// PolicyRules: only events of these keyguard policy rules; empty for all.
	PolicyRules []string `yaml:"policy_rules"`
	// GroupWindow: events of one group (host, kind, decision, policy rule, actor executable) within this
	// window of the group's first event become one alert with a count, sent when the window closes.
	// 0 sends each event at once.
	GroupWindow time.Duration `yaml:"group_window"`
	// RateLimit: at most this many alerts per minute per output (0 = no limit); further events are
	// folded into an alert still waiting, else counted as suppressed.
	RateLimit int `yaml:"rate_limit"`
	// Outputs: names of the outputs to send to.
	Outputs []string `yaml:"outputs"`

	minSev pb.Severity
}

// Output is one destination.
type Output struct {
	// Name identifies the output (unique).
	Name string `yaml:"name"`
	// Type: webhook, slack, syslog or alertmanager.
	Type string `yaml:"type"`
	// URL: webhook and slack: the URL posted to; alertmanager: its base URL (…/api/v2/alerts is added).
	URL string `yaml:"url"`
	// SecretFile (webhook): file holding the HMAC-SHA256 key; the signature goes in X-Keyguard-Signature.
	SecretFile string `yaml:"secret_file"`
	// Address (syslog): host:port of the TLS syslog receiver (RFC 5425).
	Address string `yaml:"address"`
	// Format (syslog): json (default) or cef.
	Format string `yaml:"format"`
	// CAFile: CA bundle trusted for the receiver's certificate (default: the system roots).
	CAFile string `yaml:"ca_file"`
	// Timeout per delivery (default 10s).
	Timeout time.Duration `yaml:"timeout"`

	secret []byte
}

// Config is the alerting configuration (the collector's `alerts:` section).
type Config struct {
	Rules   []Rule   `yaml:"rules"`
	Outputs []Output `yaml:"outputs"`
	// SilentAfter: a host that sent nothing for this long raises an agent_silent alert (0 = off).
	SilentAfter time.Duration `yaml:"silent_after"`
	// Poll: how often the evaluator and the sender run (default 1s).
	Poll time.Duration `yaml:"poll"`
	// Lease: how long a collector holds alerts it is sending before another may retry them (default 1m).
	Lease time.Duration `yaml:"lease"`
}

var outputTypes = []string{"webhook", "slack", "syslog", "alertmanager"}

// check validates the configuration and fills in defaults.
func (c *Config) check() error {
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Lease <= 0 {
		c.Lease = time.Minute
	}
	outs := map[string]bool{}
	for i := range c.Outputs {
		o := &c.Outputs[i]
		if o.Name == "" || outs[o.Name] {
			return fmt.Errorf("alerts: output %d: name %q is empty or used twice: give each output a unique name", i, o.Name)
		}
		outs[o.Name] = true
		if !slices.Contains(outputTypes, o.Type) {
			return fmt.Errorf("alerts: output %q: type %q is not one of %s", o.Name, o.Type, strings.Join(outputTypes, ", "))
		}
		if o.Timeout <= 0 {
			o.Timeout = 10 * time.Second
		}
		switch {
		case o.Type == "syslog" && o.Address == "":
			return fmt.Errorf("alerts: output %q: syslog needs address (host:port of a TLS syslog receiver)", o.Name)
		case o.Type == "syslog" && o.Format != "" && o.Format != "json" && o.Format != "cef":
			return fmt.Errorf("alerts: output %q: format %q is not json or cef", o.Name, o.Format)
		case o.Type != "syslog" && o.URL == "":
			return fmt.Errorf("alerts: output %q: %s needs url", o.Name, o.Type)
		case o.Type == "webhook" && o.SecretFile == "" && o.secret == nil:
			return fmt.Errorf("alerts: output %q: a webhook needs secret_file (the HMAC-SHA256 key the receiver checks)", o.Name)
		}
	}
	names := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Name == "" || names[r.Name] {
			return fmt.Errorf("alerts: rule %d: name %q is empty or used twice", i, r.Name)
		}
		names[r.Name] = true
		r.minSev = pb.Severity_SEVERITY_HIGH
		if r.MinSeverity != "" {
			sv, ok := pb.ParseSeverity(r.MinSeverity)
			if !ok {
				return fmt.Errorf("alerts: rule %q: min_severity %q is not info, low, medium, high or critical", r.Name, r.MinSeverity)
			}
			r.minSev = sv
		}
		if len(r.Outputs) == 0 {
			return fmt.Errorf("alerts: rule %q has no outputs", r.Name)
		}
		for _, o := range r.Outputs {
			if !outs[o] {
				return fmt.Errorf("alerts: rule %q: unknown output %q", r.Name, o)
			}
		}
	}
	return nil
}

// matches reports whether the rule selects an event of this severity, kind, host and policy rule.
func (r *Rule) matches(sev pb.Severity, kind, host, policyRule string) bool {
	if sev < r.minSev {
		return false
	}
	if len(r.Kinds) > 0 && !slices.Contains(r.Kinds, kind) {
		return false
	}
	if len(r.Hosts) > 0 && !slices.Contains(r.Hosts, host) {
		return false
	}
	if len(r.PolicyRules) > 0 && !slices.Contains(r.PolicyRules, policyRule) {
		return false
	}
	return true
}
