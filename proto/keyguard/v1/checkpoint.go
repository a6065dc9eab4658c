package keyguardv1

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// Agent chain and checkpoint signatures (see AgentCheckpoint in ingest.proto). The agent computes the
// chain while it sends; the collector and keyguard-collector verify recompute it from stored events.

const (
	agentChainDomain  = "keyguard-agent-chain-v1\x00"
	checkpointDomain  = "keyguard-agent-checkpoint-v1\x00"
	AgentChainHashLen = sha256.Size
)

// AgentChainGenesis is the head of host's agent chain at base (before any event).
func AgentChainGenesis(host string, base uint64) []byte {
	h := sha256.New()
	h.Write([]byte(agentChainDomain + "genesis\x00"))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], base)
	h.Write(n[:])
	h.Write([]byte(host))
	return h.Sum(nil)
}

// AgentChainLink returns the head after the event numbered seq whose encoding (deterministic, host
// empty) is payload, following head prev.
func AgentChainLink(prev []byte, seq uint64, payload []byte) []byte {
	d := sha256.Sum256(payload)
	h := sha256.New()
	h.Write([]byte(agentChainDomain + "link\x00"))
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], seq)
	h.Write(n[:])
	h.Write(d[:])
	return h.Sum(nil)
}

// AgentChainPayload is the encoding of a stored event the agent chain covers: the event as the agent
// sent it, that is with host empty, encoded deterministically.
func AgentChainPayload(ev *Event) ([]byte, error) {
	c := proto.Clone(ev).(*Event)
	c.Host = ""
	return proto.MarshalOptions{Deterministic: true}.Marshal(c)
}

// SignCheckpoint encodes cp and signs it with key; certDER is the certificate of key.
func SignCheckpoint(cp *AgentCheckpoint, key crypto.Signer, certDER []byte) (*SignedCheckpoint, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	msg := append([]byte(checkpointDomain), b...)
	var sig []byte
	switch key.Public().(type) {
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey, *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	default:
		return nil, fmt.Errorf("sign checkpoint: unsupported host key type %T", key.Public())
	}
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return &SignedCheckpoint{Checkpoint: b, Signature: sig, Certificate: certDER}, nil
}

// ErrBadCheckpoint marks a checkpoint whose signature, certificate or content does not hold.
var ErrBadCheckpoint = errors.New("bad agent checkpoint")

// VerifyCheckpoint checks sc's signature against its certificate, and that the certificate names the
// checkpoint's host (Subject CommonName). It does not check who issued the certificate: callers that
// need that verify the certificate against their CA or compare it with the TLS peer's.
func VerifyCheckpoint(sc *SignedCheckpoint) (*AgentCheckpoint, *x509.Certificate, error) {
	cert, err := x509.ParseCertificate(sc.GetCertificate())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate: %v", ErrBadCheckpoint, err)
	}
	cp := &AgentCheckpoint{}
	if err := proto.Unmarshal(sc.GetCheckpoint(), cp); err != nil {
		return nil, nil, fmt.Errorf("%w: decode: %v", ErrBadCheckpoint, err)
	}
	if cp.GetHost() == "" || cp.GetHost() != cert.Subject.CommonName {
		return nil, nil, fmt.Errorf("%w: host %q signed with the certificate of %q", ErrBadCheckpoint, cp.GetHost(), cert.Subject.CommonName)
	}
	msg := append([]byte(checkpointDomain), sc.GetCheckpoint()...)
	var alg x509.SignatureAlgorithm
	switch cert.PublicKey.(type) {
	case ed25519.PublicKey:
		alg = x509.PureEd25519
	case *ecdsa.PublicKey:
		alg = x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		alg = x509.SHA256WithRSA
	default:
		return nil, nil, fmt.Errorf("%w: unsupported key type %T", ErrBadCheckpoint, cert.PublicKey)
	}
	if err := cert.CheckSignature(alg, msg, sc.GetSignature()); err != nil {
		return nil, nil, fmt.Errorf("%w: signature of host %q does not verify: %v", ErrBadCheckpoint, cp.GetHost(), err)
	}
	if len(cp.GetHead()) != AgentChainHashLen || cp.GetSeq() < cp.GetBaseSeq() || cp.GetCount() > cp.GetSeq()-min(cp.GetSeq(), cp.GetBaseSeq()) {
		return nil, nil, fmt.Errorf("%w: host %q: malformed chain state (base %d, seq %d, count %d)", ErrBadCheckpoint, cp.GetHost(), cp.GetBaseSeq(), cp.GetSeq(), cp.GetCount())
	}
	return cp, cert, nil
}
