package enroll

import (
	"context"
	"math/big"
	"sync"
	"time"
)

// Holder is the certificate that holds a name.
type Holder struct {
	Serial   *big.Int
	NotAfter time.Time
}

// Claim asks a Registry to give Name to Holder, spending one use of the bootstrap token Nonce
// (MaxUses uses in all, remembered until NonceExp).
type Claim struct {
	Name     string
	Nonce    string
	MaxUses  int
	NonceExp time.Time
	Now      time.Time
	Holder   Holder
}

// Registry keeps enrollment state: which certificate holds each name, the names an operator approved
// for re-enrollment, and the uses of bootstrap tokens. The collector's store implements it (SQLite or
// PostgreSQL, so that several collectors on one database agree and a restart keeps refusals); Memory
// is the in-process one. Each method is atomic.
type Registry interface {
	// Claim spends a token use and records the new holder unless the token is used up (ErrToken) or
	// a live holder (NotAfter after Now) has the name and no operator approved it (ErrLive). It
	// returns the previous holder's serial (nil if none) and consumes the approval.
	Claim(ctx context.Context, c Claim) (prev *big.Int, err error)
	// Replace records next as name's holder if old still holds it (renewal), else ErrToken.
	Replace(ctx context.Context, name string, old *big.Int, next Holder) error
	// Approve lets name be claimed once although a live holder has it.
	Approve(ctx context.Context, name string) error
}

// Memory is a Registry in process memory: a restarted collector forgets it. The zero value is ready.
type Memory struct {
	mu       sync.Mutex
	holders  map[string]Holder
	approved map[string]bool
	uses     map[string]int
}

// Claim implements Registry.
func (m *Memory) Claim(_ context.Context, c Claim) (*big.Int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Nonce != "" && m.uses[c.Nonce] >= max(c.MaxUses, 1) {
		return nil, ErrToken
	}
	prev, held := m.holders[c.Name]
	if held && c.Now.Before(prev.NotAfter) && !m.approved[c.Name] {
		return nil, ErrLive
	}
	if m.holders == nil {
		m.holders, m.uses = map[string]Holder{}, map[string]int{}
	}
	if c.Nonce != "" {
		m.uses[c.Nonce]++
	}
	delete(m.approved, c.Name)
	m.holders[c.Name] = c.Holder
	if !held {
		return nil, nil
	}
	return prev.Serial, nil
}

// Replace implements Registry.
func (m *Memory) Replace(_ context.Context, name string, old *big.Int, next Holder) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.holders[name]; ok && cur.Serial.Cmp(old) != 0 {
		return ErrToken
	}
	if m.holders == nil {
		m.holders, m.uses = map[string]Holder{}, map[string]int{}
	}
	m.holders[name] = next
	return nil
}

// Approve implements Registry.
func (m *Memory) Approve(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.approved == nil {
		m.approved = map[string]bool{}
	}
	m.approved[name] = true
	return nil
}
