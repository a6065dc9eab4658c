package console

import (
	"strings"
	"testing"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestViewSentinelEvents: a sentinel finding is shown as an alert with its file, encoding and key,
// and its details list the quarantine; a published fingerprint set names its keys.
func TestViewSentinelEvents(t *testing.T) {
	found := &pb.StoredEvent{Event: &pb.Event{Host: "debug-box", Kind: &pb.Event_KeyMaterialFound{KeyMaterialFound: &pb.KeyMaterialFound{
		Path: "/var/crash/core.signer", Offset: 4096, Encoding: "ec-scalar-le64", Key: "/etc/signer/key.pem", QuarantinePath: "/var/lib/keyguard/quarantine/1-core.signer"}}}}
	r := rowOf(found)
	if !r.Alert || r.Kind != "key material found" || r.Target != "/var/crash/core.signer" || !strings.Contains(r.Summary, "ec-scalar-le64") || !strings.Contains(r.Summary, "quarantined") {
		t.Errorf("row %+v", r)
	}
	secs := detailSections(found)
	var all []string
	for _, s := range secs {
		for _, f := range s.Fields {
			all = append(all, f.Label+"="+f.Value)
		}
	}
	if j := strings.Join(all, " "); !strings.Contains(j, "quarantined to=/var/lib/keyguard/quarantine/1-core.signer") || !strings.Contains(j, "key=/etc/signer/key.pem") {
		t.Errorf("details %s", j)
	}
	fp := &pb.StoredEvent{Event: &pb.Event{Kind: &pb.Event_KeyFingerprints{KeyFingerprints: &pb.KeyFingerprints{Keys: []*pb.FingerprintedKey{{Name: "/etc/signer/key.pem"}}}}}}
	if r := rowOf(fp); r.Alert || r.Kind != "key fingerprints" {
		t.Errorf("fingerprints row %+v", r)
	}
}
