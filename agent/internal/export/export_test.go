package export

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/spool"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// These tests cover the pipeline up to the network. Delivery to the real collector is tested end
// to end in agent/internal/delivery.

func memEvent(d keyguardv1.Decision, detail string) *keyguardv1.Event {
	return &keyguardv1.Event{Kind: &keyguardv1.Event_MemoryAccess{MemoryAccess: &keyguardv1.MemoryAccess{
		Accessor:  &keyguardv1.Process{Pid: 10, Comm: "gdb", ExePath: "/usr/bin/gdb"},
		Target:    &keyguardv1.Process{Pid: 20, Comm: "signer"},
		Operation: keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
		Rule:      "keys", Decision: d, Detail: detail,
	}}}
}

// plaintextConfig points at a loopback port where nothing listens: events stay in the spool.
func plaintextConfig(t *testing.T) Config {
	return Config{
		Collector: "127.0.0.1:1", Plaintext: true, PlaintextHost: "test-host",
		SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "boot-1", AgentVersion: "test",
	}
}

// spooled reads every event left in a closed pipeline's spool.
func spooled(t *testing.T, dir string) []*keyguardv1.Event {
	t.Helper()
	s, err := spool.Open(spool.Config{Dir: dir, EncodeLoss: func(uint64, spool.Loss, []byte) ([]byte, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := s.NewReader(1)
	defer r.Close()
	var out []*keyguardv1.Event
	for {
		n, err := r.Next(1000, 1<<20, func(rec spool.Record) error {
			ev := &keyguardv1.Event{}
			if err := proto.Unmarshal(rec.Payload, ev); err != nil {
				return err
			}
			if ev.GetSeq() != rec.Seq {
				t.Errorf("record %d holds event seq %d", rec.Seq, ev.GetSeq())
			}
			if rec.Kind != uint8(keyguardv1.KindOf(ev)) {
				t.Errorf("record %d stored with kind %d, event kind %v", rec.Seq, rec.Kind, keyguardv1.KindOf(ev))
			}
			out = append(out, ev)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeTestCerts(t, dir)
	other := filepath.Join(dir, "other")
	_, otherCert, _ := writeTestCerts(t, mkdir(t, other))
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	base := func() Config {
		return Config{Collector: "collector.example:7443", CAFile: ca, CertFile: cert, KeyFile: key,
			SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "b"}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"valid mTLS", func(*Config) {}, ""},
		{"valid plaintext loopback", func(c *Config) {
			c.Collector, c.Plaintext, c.PlaintextHost, c.CAFile, c.CertFile, c.KeyFile = "127.0.0.1:7443", true, "h", "", "", ""
		}, ""},
		{"no collector", func(c *Config) { c.Collector = "" }, "no collector address"},
		{"no spool", func(c *Config) { c.SpoolDir = "" }, "no spool directory"},
		{"plaintext to a remote collector", func(c *Config) { c.Plaintext, c.PlaintextHost = true, "h" }, "only allowed to a loopback"},
		{"plaintext without host", func(c *Config) { c.Collector, c.Plaintext = "127.0.0.1:7443", true }, "plaintext_host"},
		{"no client certificate", func(c *Config) { c.CertFile = "" }, "mTLS needs"},
		{"CA file without PEM", func(c *Config) { c.CAFile = notPEM }, "holds no PEM certificate"},
		{"CA file missing", func(c *Config) { c.CAFile = filepath.Join(dir, "missing.pem") }, "read CA bundle"},
		{"certificate not matching key", func(c *Config) { c.CertFile = otherCert }, "load client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mod(&cfg)
			p, err := New(cfg, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				p.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestSubmitNeverBlocksAndCountsLoss fills the queue (no Run draining it), checks that Submit keeps
// returning at once, and that queue overflow and kernel loss end up in the spool as LossReports.
func TestSubmitNeverBlocksAndCountsLoss(t *testing.T) {
	cfg := plaintextConfig(t)
	cfg.QueueSize = 10
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Taken by the queue, dropped by the writer: an event without a kind would be refused by the
	// collector and hold up the stream.
	if !p.Submit(&keyguardv1.Event{}, spool.PriorityKeep) {
		t.Fatal("empty queue refused an event")
	}
	accepted := 0
	for i := range 100 {
		if p.Submit(memEvent(keyguardv1.Decision_DECISION_DENIED, "x"), PriorityOf(memEvent(keyguardv1.Decision_DECISION_DENIED, ""))) {
			accepted++
		}
		if i == 50 {
			p.Submit(&keyguardv1.Event{Kind: &keyguardv1.Event_CoreDump{CoreDump: &keyguardv1.CoreDump{}}}, spool.PriorityKeep)
		}

	}
	p.ReportLoss(keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, keyguardv1.EventKind_EVENT_KIND_UNSPECIFIED, 7)
	if accepted != 9 {
		t.Fatalf("%d events accepted by a queue of 10 holding one already", accepted)
	}
	st := p.Stats()
	if st.QueueLost != 92 || st.KernelLost != 7 || st.QueueLen != 10 {
		t.Fatalf("stats: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	evs := spooled(t, cfg.SpoolDir)
	if len(evs) != 11 {
		t.Fatalf("%d events in the spool, want 9 + 2 loss reports", len(evs))
	}
	for i, ev := range evs[:9] {
		if ev.GetSeq() != uint64(i+1) || ev.GetBootId() != "boot-1" || ev.GetAgentVersion() != "test" || ev.GetTime() == nil || ev.GetHost() != "" {
			t.Fatalf("event %d not stamped right: %v", i, ev)
		}
	}
	losses := map[keyguardv1.LossSource]*keyguardv1.LossReport{}
	for _, ev := range evs[9:] {
		losses[ev.GetLossReport().GetSource()] = ev.GetLossReport()
	}
	q := losses[keyguardv1.LossSource_LOSS_SOURCE_AGENT_QUEUE]
	if q.GetCount() != 93 || len(q.GetPerKind()) != 2 { // 91 + core dump + the kind-less one
		t.Fatalf("queue loss report: %v", q)
	}
	for _, kc := range q.GetPerKind() {
		want := map[keyguardv1.EventKind]uint64{keyguardv1.EventKind_EVENT_KIND_MEMORY_ACCESS: 91, keyguardv1.EventKind_EVENT_KIND_CORE_DUMP: 1}[kc.GetKind()]
		if kc.GetCount() != want {
			t.Fatalf("queue loss per kind: %v", q.GetPerKind())
		}
	}
	if k := losses[keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER]; k.GetCount() != 7 || len(k.GetPerKind()) != 0 {
		t.Fatalf("kernel loss report: %v", k)
	}
}

// TestFullSpoolEvictionReported runs the pipeline with a collector that is down and a small spool:
// allowed accesses are evicted for denials, and the eviction is reported with counts and ranges
// that match exactly what is missing.
func TestFullSpoolEvictionReported(t *testing.T) {
	cfg := plaintextConfig(t)
	cfg.SpoolMaxBytes = 256 << 10
	cfg.SpoolSegmentBytes = 16 << 10
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	const n = 4000
	denied := 0
	for i := range n {
		d := keyguardv1.Decision_DECISION_ALLOWED
		if i%4 == 0 {
			d = keyguardv1.Decision_DECISION_DENIED
			denied++
		}
		ev := memEvent(d, strings.Repeat("d", 100))
		for !p.Submit(ev, PriorityOf(ev)) {
			time.Sleep(time.Millisecond) // the queue is not what this test is about
		}
	}
	for p.Stats().QueueLen > 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Spool.Evicted == 0 {
		t.Fatalf("nothing evicted from a 256 KiB spool: %+v", st.Spool)
	}
	evs := spooled(t, cfg.SpoolDir)
	present := map[uint64]bool{}
	gotDenied := 0
	var evicted uint64
	gone := map[uint64]bool{}
	for _, ev := range evs {
		present[ev.GetSeq()] = true
		if lr := ev.GetLossReport(); lr != nil {
			if lr.GetSource() != keyguardv1.LossSource_LOSS_SOURCE_SPOOL_EVICTION {
				t.Fatalf("unexpected loss report %v", lr)
			}
			evicted += lr.GetCount()
			for _, r := range lr.GetEvicted() {
				for s := r.GetFirst(); s <= r.GetLast(); s++ {
					gone[s] = true
				}
			}
			continue
		}
		if ev.GetMemoryAccess().GetDecision() == keyguardv1.Decision_DECISION_DENIED {
			gotDenied++
		}
	}
	if gotDenied != denied {
		t.Fatalf("%d of %d denials survived a full spool", gotDenied, denied)
	}
	if evicted != st.Spool.Evicted {
		t.Fatalf("loss reports count %d evicted, spool counted %d", evicted, st.Spool.Evicted)
	}
	maxSeq := uint64(len(evs)) + evicted
	for s := uint64(1); s <= maxSeq; s++ {
		if present[s] == gone[s] {
			t.Fatalf("seq %d: present=%v reported gone=%v", s, present[s], gone[s])
		}
	}
}

// TestRawBatchIsAPushRequest checks the hand-built wire format against the generated decoder.
func TestRawBatchIsAPushRequest(t *testing.T) {
	var b []byte
	want := &keyguardv1.PushRequest{}
	for i := range 3 {
		ev := memEvent(keyguardv1.Decision_DECISION_DENIED, "e")
		ev.Seq = uint64(10 + 2*i)
		payload, _ := proto.Marshal(ev)
		if i > 0 {
			b = appendSkipped(b, uint64(10+2*i-1), uint64(10+2*i-1))
			want.Skipped = append(want.Skipped, &keyguardv1.SequenceRange{First: uint64(10 + 2*i - 1), Last: uint64(10 + 2*i - 1)})
		}
		b = protowire.AppendTag(b, pushEventsField, protowire.BytesType)
		b = protowire.AppendBytes(b, payload)
		want.Events = append(want.Events, ev)
	}
	got := &keyguardv1.PushRequest{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("decoded %v\nwant %v", got, want)
	}
}

func TestReseq(t *testing.T) {
	ev := memEvent(keyguardv1.Decision_DECISION_DENIED, "keep me")
	ev.Seq = 5
	payload, _ := proto.Marshal(ev)
	out := reseq(123456789, payload, nil)
	got := &keyguardv1.Event{}
	if err := proto.Unmarshal(out, got); err != nil {
		t.Fatal(err)
	}
	ev.Seq = 123456789
	if !proto.Equal(got, ev) {
		t.Fatalf("reseq: %v", got)
	}
	// Deterministic re-marshal yields the same bytes as an event born with that number: the
	// collector's duplicate detection compares canonical encodings.
	a, _ := proto.MarshalOptions{Deterministic: true}.Marshal(got)
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if !bytes.Equal(a, b) {
		t.Fatal("renumbered event does not re-encode canonically")
	}
}

func TestPriorityOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   *keyguardv1.Event
		want spool.Priority
	}{
		{"denied access", memEvent(keyguardv1.Decision_DECISION_DENIED, ""), spool.PriorityKeep},
		{"audit access", memEvent(keyguardv1.Decision_DECISION_ALLOWED_AUDIT, ""), spool.PriorityHigh},
		{"policy-allowed access", memEvent(keyguardv1.Decision_DECISION_ALLOWED_POLICY, ""), spool.PriorityNormal},
		{"allowed access", memEvent(keyguardv1.Decision_DECISION_ALLOWED, ""), spool.PriorityLow},
		{"core dump", &keyguardv1.Event{Kind: &keyguardv1.Event_CoreDump{CoreDump: &keyguardv1.CoreDump{}}}, spool.PriorityKeep},
		{"loss report", &keyguardv1.Event{Kind: &keyguardv1.Event_LossReport{LossReport: &keyguardv1.LossReport{}}}, spool.PriorityKeep},
		{"break glass", &keyguardv1.Event{Kind: &keyguardv1.Event_BreakGlass{BreakGlass: &keyguardv1.BreakGlass{}}}, spool.PriorityKeep},
		{"denied key file", &keyguardv1.Event{Kind: &keyguardv1.Event_KeyFileAccess{KeyFileAccess: &keyguardv1.KeyFileAccess{Decision: keyguardv1.Decision_DECISION_DENIED}}}, spool.PriorityKeep},
		{"denied side door", &keyguardv1.Event{Kind: &keyguardv1.Event_SideDoor{SideDoor: &keyguardv1.SideDoor{Decision: keyguardv1.Decision_DECISION_DENIED}}}, spool.PriorityKeep},
		{"protection change", &keyguardv1.Event{Kind: &keyguardv1.Event_ProtectionChange{ProtectionChange: &keyguardv1.ProtectionChange{}}}, spool.PriorityHigh},
		{"agent started", &keyguardv1.Event{Kind: &keyguardv1.Event_AgentHealth{AgentHealth: &keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_STARTED}}}, spool.PriorityHigh},
		{"heartbeat", &keyguardv1.Event{Kind: &keyguardv1.Event_AgentHealth{AgentHealth: &keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_RUNNING}}}, spool.PriorityLow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := PriorityOf(tc.ev); got != tc.want {
				t.Fatalf("PriorityOf = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	lo, hi := 100*time.Millisecond, 5*time.Second
	for failures := range 20 {
		want := lo << min(failures, 10)
		want = min(want, hi)
		for range 50 {
			d := backoffDelay(lo, hi, failures)
			if d < want/2 || d > want {
				t.Fatalf("failures=%d: delay %s outside [%s, %s]", failures, d, want/2, want)
			}
		}
	}
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeTestCerts writes a CA and a client certificate signed by it.
func writeTestCerts(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "h", OrganizationalUnit: []string{"keyguard-host"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "h.pem"), filepath.Join(dir, "h.key")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return ca, cert, key
}

// TestClientCertificateReload replaces the host certificate files and checks the next handshake
// would present the new certificate, while a broken replacement keeps the last good one.
func TestClientCertificateReload(t *testing.T) {
	dir := t.TempDir()
	_, cert, key := writeTestCerts(t, dir)
	kp := &keyPair{cert: cert, key: key}
	first, err := kp.get()
	if err != nil {
		t.Fatal(err)
	}
	_, cert2, key2 := writeTestCerts(t, mkdir(t, filepath.Join(dir, "new")))
	for _, f := range [][2]string{{cert2, cert}, {key2, key}} {
		data, _ := os.ReadFile(f[0])
		os.WriteFile(f[1], data, 0o600)
		os.Chtimes(f[1], time.Now().Add(time.Second), time.Now().Add(time.Second))
	}
	second, err := kp.get()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first.Certificate[0], second.Certificate[0]) {
		t.Fatal("renewed certificate not picked up")
	}
	os.WriteFile(cert, []byte("garbage"), 0o600)
	os.Chtimes(cert, time.Now().Add(2*time.Second), time.Now().Add(2*time.Second))
	third, err := kp.get()
	if err != nil || !bytes.Equal(third.Certificate[0], second.Certificate[0]) {
		t.Fatalf("broken replacement: got err %v; want the last good certificate kept", err)
	}
}
