package control

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// A report-dump request carries its event as protojson and reads back the same event.
func TestReportDumpCarriesProtojson(t *testing.T) {
	ev := &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_CoreDump{CoreDump: &keyguardv1.CoreDump{
		Process: &keyguardv1.Process{Pid: 42, Comm: "signer"}, Action: keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_REDACTED,
		Redacted: []*keyguardv1.RedactedBytes{{Kind: "anon", Bytes: 4096}},
	}}}
	b, err := json.Marshal(Request{Op: "report-dump", Dump: &Event{ev}, DumpRuleID: 7})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"action":"CORE_DUMP_ACTION_REDACTED"`) && !strings.Contains(string(b), `"action": "CORE_DUMP_ACTION_REDACTED"`) {
		t.Fatalf("not protojson with proto names: %s", b)
	}
	var back Request
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.DumpRuleID != 7 || back.Dump == nil || !proto.Equal(back.Dump.Event, ev) {
		t.Fatalf("read back %+v from %s", back, b)
	}
	if err := json.Unmarshal([]byte(`{"op":"report-dump","dump":{"kind":"core_dump"}}`), &back); err == nil {
		t.Error("a version-1 event was accepted")
	}
}
