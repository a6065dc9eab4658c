package operator

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/loader"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

// MaxBreakGlass is the longest exception a break-glass grant may give.
const MaxBreakGlass = 4 * time.Hour

type grant struct {
	control.Grant
	key loader.AccessorKey
}

func (o *Operator) ruleID(name string) (uint32, bool) {
	for _, r := range o.pol.Rules {
		if r.Name == name {
			return r.ID, true
		}
	}
	return 0, false
}

// BreakGlass gives the exception a break-glass token describes: the grant is recorded (and the local
// log flushed) before the kernel lets the accessor in.
func (o *Operator) BreakGlass(token string) (*control.Grant, error) {
	if token == "" {
		return nil, errors.New("a break-glass grant needs a token signed by the operator key: " +
			"keyguard token sign -action break-glass -host HOST -rule RULE -executable PATH -uid N -for 15m -operator NAME -reason TEXT")
	}
	c, err := o.Verify(token, optoken.ActionBreakGlass)
	if err != nil {
		return nil, fmt.Errorf("break-glass token refused: %w", err)
	}
	req := control.Request{Op: "break-glass", Executable: c.Executable, UID: c.UID, Rule: c.Rule, Duration: c.Duration,
		Reason: c.Reason, Operator: c.Operator}
	d, key, err := o.checkGrant(req)
	if err != nil {
		return nil, err
	}
	if err := o.guard.UseToken(c.Nonce, c.ExpiresAt); err != nil {
		return nil, fmt.Errorf("break-glass token refused: %w", err)
	}
	o.mu.Lock()
	o.nextID++
	gid := uint64(time.Now().UnixNano())<<8 | o.nextID&0xff
	o.mu.Unlock()
	g := grant{Grant: control.Grant{ID: gid, Executable: req.Executable, UID: *req.UID, Rule: req.Rule, Reason: req.Reason,
		Operator: req.Operator, Expires: time.Now().Add(d)}, key: key}
	// The event is written before the exception takes effect.
	o.emit(breakGlassEvent("granted", g.Grant))
	if err := o.flush(); err != nil {
		return nil, fmt.Errorf("could not record the grant, so it was not given: %w", err)
	}
	if err := o.guard.Grant(key, g.Expires, gid); err != nil {
		return nil, fmt.Errorf("write grant into the kernel: %w", err)
	}
	o.mu.Lock()
	o.grants[gid] = g
	o.mu.Unlock()
	return &g.Grant, nil
}

// checkGrant validates what a break-glass token asks for and returns its duration and kernel key.
func (o *Operator) checkGrant(req control.Request) (time.Duration, loader.AccessorKey, error) {
	var key loader.AccessorKey
	if len(req.Reason) < 10 {
		return 0, key, errors.New("a break-glass grant needs a written reason of at least 10 characters (-reason)")
	}
	if req.Operator == "" {
		return 0, key, errors.New("a break-glass grant needs the operator's name (-operator)")
	}
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 || d > MaxBreakGlass {
		return 0, key, fmt.Errorf("duration %q: give a positive duration of at most %s, e.g. 15m", req.Duration, MaxBreakGlass)
	}
	id, ok := o.ruleID(req.Rule)
	if !ok {
		return 0, key, fmt.Errorf("no rule named %q in the policy", req.Rule)
	}
	if req.UID == nil || *req.UID < -1 || *req.UID > 0xfffffffe {
		return 0, key, errors.New("give the accessor's uid (-uid N, or -uid -1 for any uid)")
	}
	if !filepath.IsAbs(req.Executable) {
		return 0, key, fmt.Errorf("executable %q: give an absolute path", req.Executable)
	}
	fid, err := loader.StatFileID(req.Executable)
	if err != nil {
		return 0, key, fmt.Errorf("executable: %w", err)
	}
	key = loader.AccessorKey{Dev: fid.Dev, Ino: fid.Ino, RuleId: id, Uid: uint32(*req.UID)}
	if *req.UID == -1 {
		key.Uid = loader.AnyUID
	}
	return d, key, nil
}

// Revoke ends a grant early (action "revoked") or when its time is up ("expired"), and reports it.
func (o *Operator) Revoke(id uint64, action string) error {
	o.mu.Lock()
	g, ok := o.grants[id]
	delete(o.grants, id)
	o.mu.Unlock()
	if !ok {
		return fmt.Errorf("no active grant %d", id)
	}
	if err := o.guard.Revoke(g.key); err != nil {
		return err
	}
	o.emit(breakGlassEvent(action, g.Grant))
	return nil
}

// ExpireGrants removes grants whose time is up at now (the kernel already ignores them) and reports it.
func (o *Operator) ExpireGrants(now time.Time) {
	var due []uint64
	o.mu.Lock()
	for id, g := range o.grants {
		if now.After(g.Expires) {
			due = append(due, id)
		}
	}
	o.mu.Unlock()
	for _, id := range due {
		_ = o.Revoke(id, "expired")
	}
}

// Grants lists the active grants.
func (o *Operator) Grants() []control.Grant {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]control.Grant, 0, len(o.grants))
	for _, g := range o.grants {
		out = append(out, g.Grant)
	}
	return out
}

// grantStates maps what happened to a grant to the API's state.
var grantStates = map[string]keyguardv1.BreakGlassState{
	"granted": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_GRANTED,
	"expired": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_EXPIRED,
	"revoked": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_REVOKED,
}

func breakGlassEvent(action string, g control.Grant) *keyguardv1.Event {
	uid := uint32(g.UID)
	if g.UID < 0 {
		uid = ^uint32(0) // any uid
	}
	return events.BreakGlass(&keyguardv1.BreakGlass{
		Operator: g.Operator, AccessorExePath: g.Executable, AccessorUid: uid, Rule: g.Rule,
		Reason: g.Reason, State: grantStates[action], ExpireTime: timestamppb.New(g.Expires),
	})
}
