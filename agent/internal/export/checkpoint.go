package export

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Signed checkpoints.
//
// The sender hashes every event it sends, in sequence order, into the agent chain (see AgentCheckpoint
// in ingest.proto) and, every Config.CheckpointInterval and when it stops, signs the chain's state with
// the host key and sends it on the stream after the events it covers. The collector stores the
// checkpoints and may export them to witnesses; verification recomputes the chain from the stored
// events, so whoever administers the collector cannot cut or rewrite what a checkpoint covers without
// it showing, not even with the collector's chain key. The state is saved in the spool directory at
// each checkpoint; an agent restarted after a crash that cannot continue its chain (events sent since
// the last save were acknowledged and deleted) starts a new base, which verification treats as a new
// chain.

const chainStateFile = "agent-chain.json"

// agentChain is the sender's chain state (sender goroutine only).
type agentChain struct {
	path string

	Host  string `json:"host"`
	Base  uint64 `json:"base_seq"`
	Seq   uint64 `json:"seq"`
	Count uint64 `json:"count"`
	Head  []byte `json:"head"`

	signedSeq   uint64 // state at the last signed checkpoint
	signedCount uint64
	signedOnce  bool
}

// loadChain reads the saved chain state from dir (none: an empty chain, started at the first stream).
func loadChain(dir string) (*agentChain, error) {
	c := &agentChain{path: filepath.Join(dir, chainStateFile)}
	b, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("export: read agent chain state: %w", err)
	}
	if err := json.Unmarshal(b, c); err != nil || len(c.Head) != keyguardv1.AgentChainHashLen {
		// A damaged state starts a new base at the first stream; verification sees a new chain.
		return &agentChain{path: c.path}, nil
	}
	return c, nil
}

// start prepares the chain for a stream on which host resumes sending at seq from: it starts a new
// base when the chain is for another host (or none), or when numbers it never hashed were already
// acknowledged (state lost in a crash, or a renumbered spool).
func (c *agentChain) start(host string, from uint64) {
	if c.Host == host && len(c.Head) > 0 && from <= c.Seq+1 {
		return
	}
	base := from - 1
	c.Host, c.Base, c.Seq, c.Count = host, base, base, 0
	c.Head = keyguardv1.AgentChainGenesis(host, base)
	c.signedOnce = false
}

// add hashes a record about to be sent, unless an earlier stream sent (and hashed) it already.
func (c *agentChain) add(seq uint64, payload []byte) {
	if c.Host == "" || seq <= c.Seq {
		return
	}
	c.Head = keyguardv1.AgentChainLink(c.Head, seq, payload)
	c.Seq = seq
	c.Count++
}

// due reports whether the chain moved since the last signed checkpoint (or none was signed).
func (c *agentChain) due() bool {
	return c.Host != "" && (!c.signedOnce || c.Seq != c.signedSeq || c.Count != c.signedCount)
}

// sign signs the chain's state with key (certificate certDER) and saves the state.
func (c *agentChain) sign(key crypto.Signer, certDER []byte, final bool, now time.Time) (*keyguardv1.SignedCheckpoint, error) {
	cp := &keyguardv1.AgentCheckpoint{Host: c.Host, BaseSeq: c.Base, Seq: c.Seq, Count: c.Count, Head: c.Head,
		Time: timestamppb.New(now), Final: final}
	sc, err := keyguardv1.SignCheckpoint(cp, key, certDER)
	if err != nil {
		return nil, err
	}
	if err := c.save(); err != nil {
		return nil, err
	}
	c.signedSeq, c.signedCount, c.signedOnce = c.Seq, c.Count, true
	return sc, nil
}

// save writes the state atomically (the spool removes leftover .tmp files).
func (c *agentChain) save() error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("export: encode agent chain state: %w", err)
	}
	tmp := c.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("export: save agent chain state: %w", err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("export: save agent chain state: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		return fmt.Errorf("export: save agent chain state: %w", err)
	}
	return nil
}
