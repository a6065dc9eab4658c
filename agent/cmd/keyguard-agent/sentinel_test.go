package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestSentinelCommand runs `keyguard-agent sentinel` with a fingerprint file over a directory
// holding a dump with a raw P-256 scalar and reads the finding from its protojson event log.
func TestSentinelCommand(t *testing.T) {
	k := keytest.Generate()
	dir := t.TempDir()
	f, err := detect.NewFingerprinter(detect.NewDeploymentKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddKey("signer.pem", k.P256); err != nil {
		t.Fatal(err)
	}
	fp := filepath.Join(dir, "fp.json")
	if err := detect.WriteFingerprints(fp, f.Set()); err != nil {
		t.Fatal(err)
	}
	watched := filepath.Join(dir, "crash")
	os.Mkdir(watched, 0o755)
	core := make([]byte, 1<<20)
	rand.Read(core)
	k.P256.D.FillBytes(core[40000:40032])
	if err := os.WriteFile(filepath.Join(watched, "core.signer"), core, 0o644); err != nil {
		t.Fatal(err)
	}
	events := filepath.Join(dir, "events.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	var stderr bytes.Buffer
	go func() {
		done <- sentinelCmd(ctx, []string{"-watch", watched, "-fingerprints", fp, "-state", filepath.Join(dir, "state.json"),
			"-quarantine", filepath.Join(dir, "q"), "-events", events, "-settle", "1ms"}, io.Discard, slog.New(slog.DiscardHandler), &stderr)
	}()
	var line string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(events)
		if line = strings.TrimSpace(string(b)); line != "" {
			break
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var ev keyguardv1.Event
	if err := protojson.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("event log %q: %v", line, err)
	}
	m := ev.GetKeyMaterialFound()
	if m.GetOffset() != 40000 || m.GetEncoding() != detect.KindECScalarBE || m.GetKey() != "signer.pem" || !strings.HasPrefix(m.GetKeyFingerprint(), "SHA256:") || m.GetQuarantinePath() == "" {
		t.Errorf("event %v", m)
	}
}
