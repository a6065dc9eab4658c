package operator

import (
	"errors"
	"fmt"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/loader"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

// Uninstall removes keyguard on an operator's explicit request: the event is recorded (and given to
// the export pipeline) before anything is removed; then core_pattern is restored and every pin removed.
// Only the agent itself may remove the pins. The caller stops the agent afterwards.
func (o *Operator) Uninstall(token string) error {
	if token == "" {
		return errors.New("uninstall needs a token signed by the operator key: keyguard token sign -action uninstall -host HOST -operator NAME -reason TEXT")
	}
	c, err := o.Verify(token, optoken.ActionUninstall)
	if err != nil {
		return fmt.Errorf("uninstall token refused: %w", err)
	}
	if err := o.guard.UseToken(c.Nonce, c.ExpiresAt); err != nil {
		return fmt.Errorf("uninstall token refused: %w", err)
	}
	o.emit(events.Health(&keyguardv1.AgentHealth{
		State: keyguardv1.AgentState_AGENT_STATE_UNINSTALLED, AgentVersion: o.cfg.Version,
		Detail: fmt.Sprintf("uninstalled by %s: %s", c.Operator, c.Reason)}))
	if err := o.flush(); err != nil {
		return fmt.Errorf("could not record the uninstall, so nothing was removed: %w", err)
	}
	o.drain()
	if err := corepattern.Kernel.Restore(corepattern.RunDir); err != nil {
		return fmt.Errorf("restore core_pattern: %w", err)
	}
	if err := o.guard.Close(); err != nil {
		o.log.Warn("closing BPF objects", "error", err)
	}
	if err := loader.Uninstall(o.cfg.Loader.PinPath); err != nil {
		return err
	}
	o.log.Warn("keyguard uninstalled: protection removed", "operator", c.Operator, "reason", c.Reason)
	return nil
}
