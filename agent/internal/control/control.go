// Package control is the protocol between the keyguard CLI and the running agent: one JSON request and
// one JSON response per connection on a root-only unix socket.
package control

import (
	"encoding/json"
	"fmt"
	"net"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/agent/internal/posture"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// DefaultSocket is where the agent listens by default.
const DefaultSocket = "/run/keyguard/agent.sock"

// Request is one command to the agent's control socket (one JSON object per line).
type Request struct {
	Op string `json:"op"` // status, break-glass, revoke, uninstall, report-dump

	// break-glass and uninstall: an operator token (keyguard token sign) that says who, why and what.
	Token string `json:"token,omitempty"`

	// break-glass
	Executable string `json:"executable,omitempty"`
	UID        *int64 `json:"uid,omitempty"` // -1: any uid
	Rule       string `json:"rule,omitempty"`
	Duration   string `json:"duration,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Operator   string `json:"operator,omitempty"`

	// revoke
	GrantID uint64 `json:"grant_id,omitempty"`

	// report-dump (from keyguard's core-dump handler): a core_dump event, and the id of the rule that
	// protects the process when the handler could not name it (the agent names it).
	Dump       *Event `json:"dump,omitempty"`
	DumpRuleID uint32 `json:"dump_rule_id,omitempty"`
}

// Event carries a keyguard.v1 event in a request, as protojson (proto field names).
type Event struct{ *keyguardv1.Event }

// MarshalJSON implements json.Marshaler.
func (e Event) MarshalJSON() ([]byte, error) {
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(e.Event)
}

// UnmarshalJSON implements json.Unmarshaler.
func (e *Event) UnmarshalJSON(b []byte) error {
	e.Event = &keyguardv1.Event{}
	return protojson.Unmarshal(b, e.Event)
}

// Response is the agent's answer.
type Response struct {
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
	Grant  *Grant  `json:"grant,omitempty"`
}

// Status is what `keyguard status` shows.
type Status struct {
	Version       string            `json:"version"`
	Build         string            `json:"build"`
	Adopted       bool              `json:"adopted"`
	PinPath       string            `json:"pin_path"`
	Rules         []string          `json:"rules"`
	Counters      map[string]uint64 `json:"counters"`
	KernelLost    uint64            `json:"kernel_lost"`
	Posture       []posture.Finding `json:"posture"`
	ActiveGrants  []Grant           `json:"active_grants"`
	EventLog      string            `json:"event_log"`
	PolicyPath    string            `json:"policy_path"`
	ProtectedNow  int               `json:"protected_processes"`
	ProtectedPIDs []int             `json:"protected_pids"`
}

// Grant is an active break-glass exception.
type Grant struct {
	ID         uint64    `json:"id"`
	Executable string    `json:"executable"`
	UID        int64     `json:"uid"`
	Rule       string    `json:"rule"`
	Reason     string    `json:"reason"`
	Operator   string    `json:"operator"`
	Expires    time.Time `json:"expires"`
}

// Call sends one request to the agent and returns its response. A response carrying an error is
// returned as an error.
func Call(socket string, req Request) (*Response, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent at %s: %w (is keyguard-agent running? are you root?)", socket, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, fmt.Errorf("send request: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("read the agent's answer: %w", err)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("agent: %s", resp.Error)
	}
	return &resp, nil
}
