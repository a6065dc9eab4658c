package detect

import keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"

// Proto returns the set as a keyguard.v1.KeyFingerprints message (what an agent publishes).
func (s *FingerprintSet) Proto() *keyguardv1.KeyFingerprints {
	m := &keyguardv1.KeyFingerprints{DeploymentKey: s.DeploymentKey}
	for _, k := range s.Keys {
		m.Keys = append(m.Keys, &keyguardv1.FingerprintedKey{Name: k.Name, PublicKey: k.PublicKey})
	}
	for _, e := range s.Entries {
		m.Fingerprints = append(m.Fingerprints, &keyguardv1.Fingerprint{Key: e.Key, Kind: e.Kind, Length: uint32(e.Length),
			Skip: uint32(e.Skip), Anchor: uint32(e.Anchor), Tag: e.Tag})
	}
	return m
}

// FingerprintsFromProto converts a published set back, checking it as ParseFingerprints does.
func FingerprintsFromProto(m *keyguardv1.KeyFingerprints) (*FingerprintSet, error) {
	s := &FingerprintSet{Format: FingerprintFormat, DeploymentKey: m.GetDeploymentKey()}
	for _, k := range m.GetKeys() {
		s.Keys = append(s.Keys, FingerprintKey{Name: k.GetName(), PublicKey: k.GetPublicKey()})
	}
	for _, e := range m.GetFingerprints() {
		if e.GetAnchor() > 0xffff || e.GetLength() > MaxMatch {
			return nil, errMalformed(e.GetKind(), e.GetKey())
		}
		s.Entries = append(s.Entries, FingerprintEntry{Key: e.GetKey(), Kind: e.GetKind(), Length: int(e.GetLength()),
			Skip: int(e.GetSkip()), Anchor: uint16(e.GetAnchor()), Tag: e.GetTag()})
	}
	return s, s.check()
}

// Merge adds other's keys and fingerprints to s; both must be keyed with the same deployment key.
// Keys already in s (same name and public key) are not added twice.
func (s *FingerprintSet) Merge(other *FingerprintSet) error {
	if string(s.DeploymentKey) != string(other.DeploymentKey) {
		return errDeployment
	}
	have := map[string]bool{}
	for _, k := range s.Keys {
		have[k.Name+"\x00"+string(k.PublicKey)] = true
	}
	for _, k := range other.Keys {
		if have[k.Name+"\x00"+string(k.PublicKey)] {
			continue
		}
		s.Keys = append(s.Keys, k)
		for _, e := range other.Entries {
			if e.Key == k.Name {
				s.Entries = append(s.Entries, e)
			}
		}
	}
	return nil
}
