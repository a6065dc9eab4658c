package export

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/spool"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// rawBatch is a PushRequest already in wire format: the spool holds each event marshalled, and a
// repeated message field is just the concatenation of its elements, so batches are built without
// decoding a single event.
type rawBatch struct{ b []byte }

// batchCodec marshals rawBatch as is and everything else with the standard proto codec.
type batchCodec struct{ std encoding.CodecV2 }

func (c batchCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawBatch); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	return c.std.Marshal(v)
}

func (c batchCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.std.Unmarshal(data, v) }
func (c batchCodec) Name() string                                { return c.std.Name() }

// maxSkippedPerBatch stays below the collector's limit of skipped ranges in one PushRequest.
const maxSkippedPerBatch = 900

var errBatchFull = errors.New("batch full")

const (
	pushEventsField  = 1 // PushRequest.events
	pushSkippedField = 2 // PushRequest.skipped
)

func appendSkipped(b []byte, first, last uint64) []byte {
	var r []byte
	r = protowire.AppendTag(r, 1, protowire.VarintType)
	r = protowire.AppendVarint(r, first)
	r = protowire.AppendTag(r, 2, protowire.VarintType)
	r = protowire.AppendVarint(r, last)
	b = protowire.AppendTag(b, pushSkippedField, protowire.BytesType)
	return protowire.AppendBytes(b, r)
}

// plaintextHostKey is the metadata key a plaintext (loopback demo) collector reads the host from.
const plaintextHostKey = "x-keyguard-host"

func (p *Pipeline) sendLoop(ctx context.Context) {
	conn, err := grpc.NewClient(p.cfg.Collector,
		grpc.WithTransportCredentials(p.creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                p.cfg.KeepaliveInterval,
			Timeout:             p.cfg.KeepaliveInterval,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  p.cfg.BackoffMin,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   p.cfg.BackoffMax,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(batchCodec{std: encoding.GetCodecV2("proto")})),
	)
	if err != nil {
		// Only a malformed target gets here; New validated the rest.
		p.setErr(err)
		p.log.Error("export: cannot create collector client; events stay in the spool", "collector", p.cfg.Collector, "err", err)
		<-ctx.Done()
		return
	}
	defer conn.Close()
	client := keyguardv1.NewIngestServiceClient(conn)
	r := p.sp.NewReader(1)
	defer r.Close()

	failures := 0
	for ctx.Err() == nil {
		before := p.ackedSeq.Load()
		err := p.stream(ctx, client, r)
		p.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		p.setErr(err)
		if p.ackedSeq.Load() > before {
			failures = 0
		}
		delay := backoffDelay(p.cfg.BackoffMin, p.cfg.BackoffMax, failures)
		failures++
		p.reconnects.Add(1)
		p.noteProblem(err, delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoffDelay is min*2^failures capped at max, with "equal jitter": uniformly in [d/2, d].
func backoffDelay(lo, hi time.Duration, failures int) time.Duration {
	d := lo
	for range failures {
		d *= 2
		if d >= hi {
			d = hi
			break
		}
	}
	return d/2 + rand.N(d/2+1)
}

// stream runs one Push stream until it fails or ctx ends.
func (p *Pipeline) stream(ctx context.Context, client keyguardv1.IngestServiceClient, r *spool.Reader) error {
	// The stream outlives ctx by the final checkpoint (see finish).
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// ... but not by more than a few seconds, even when a send is blocked.
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(3*time.Second, cancel) })
	defer stop()
	if p.cfg.Plaintext {
		sctx = metadata.AppendToOutgoingContext(sctx, plaintextHostKey, p.cfg.PlaintextHost)
	}
	// No WaitForReady: while the connection is in transient failure the call fails at once with the
	// connection's error, so noteProblem can say what is wrong (address, TLS, certificate) instead of
	// the agent waiting silently; sendLoop's backoff paces the retries.
	st, err := client.Push(sctx)
	if err != nil {
		return fmt.Errorf("open ingest stream: %w", err)
	}
	first, err := st.Recv()
	if err != nil {
		return fmt.Errorf("ingest stream handshake: %w", err)
	}
	start, err := p.resume(first.GetAckedSeq())
	if err != nil {
		return err
	}
	p.connected.Store(true)
	p.clearProblem()
	p.log.Info("export: connected to collector", "collector", p.cfg.Collector, "host", first.GetHost(),
		"collector_acked_seq", first.GetAckedSeq(), "resend_from", start)
	r.Seek(start)
	p.chain.start(first.GetHost(), start)
	// Sequence numbers up to this were sent before on an earlier stream: sending them again is a
	// resend.
	sentBefore := p.maxSent.Load()

	acks := make(chan struct{}, 1)
	recvErr := make(chan error, 1)
	go p.recvAcks(st, acks, recvErr)

	expect := start // next sequence number to send or declare skipped
	batch := make([]byte, 0, 64<<10)
	tick := time.NewTicker(p.cfg.CheckpointInterval)
	defer tick.Stop()
	for {
		changed := p.sp.Changed()
		if limit := p.ackedSeq.Load() + p.cfg.Window; expect <= limit {
			var n int
			var err error
			batch, n, expect, err = p.readBatch(r, batch, expect, limit)
			if err != nil {
				return err
			}
			if n > 0 {
				if err := p.sendBatch(st, batch, n, expect-1, sentBefore, recvErr); err != nil {
					return err
				}
				continue
			}
		}
		select {
		case <-changed:
		case <-acks:
		case err := <-recvErr:
			return fmt.Errorf("collector stream: %w", err)
		case <-tick.C:
			if err := p.checkpoint(st, false); err != nil {
				return err
			}
		case <-ctx.Done():
			p.finish(st, recvErr)
			return ctx.Err()
		}
	}
}

// checkpoint signs the agent chain's state and sends it, when it moved since the last one (or final).
// Plaintext streams carry no checkpoints (no host key).
func (p *Pipeline) checkpoint(st keyguardv1.IngestService_PushClient, final bool) error {
	if p.keys == nil || (!final && !p.chain.due()) || p.chain.Host == "" {
		return nil
	}
	cert, err := p.keys.get()
	if err != nil {
		return err
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok || len(cert.Certificate) == 0 {
		return fmt.Errorf("export: host key %T cannot sign checkpoints", cert.PrivateKey)
	}
	sc, err := p.chain.sign(signer, cert.Certificate[0], final, time.Now())
	if err != nil {
		p.log.Error("export: cannot sign a checkpoint; events still flow, the collector gets no proof of what was sent", "err", err)
		return nil
	}
	if err := st.Send(&keyguardv1.PushRequest{Checkpoint: sc}); err != nil {
		return fmt.Errorf("send checkpoint: %w", err)
	}
	return nil
}

// finish ends the stream at shutdown: a final checkpoint, then the end of the stream, waiting briefly
// for the collector to close it (so the checkpoint is read before the stream is torn down).
func (p *Pipeline) finish(st keyguardv1.IngestService_PushClient, recvErr <-chan error) {
	if err := p.checkpoint(st, true); err != nil {
		p.log.Warn("export: final checkpoint not sent", "err", err)
	}
	st.CloseSend()
	select {
	case <-recvErr:
	case <-time.After(2 * time.Second):
	}
}

// recvAcks receives the collector's acknowledgements on st, noting each (onAck) and signalling
// acks, until Recv fails; it then sends the error to recvErr.
func (p *Pipeline) recvAcks(st keyguardv1.IngestService_PushClient, acks chan<- struct{}, recvErr chan<- error) {
	for {
		resp, err := st.Recv()
		if err != nil {
			recvErr <- err
			return
		}
		p.onAck(resp.GetAckedSeq())
		select {
		case acks <- struct{}{}:
		default:
		}
	}
}

// readBatch encodes into batch (reused from its start) the spooled records from expect on, up to
// limit and the configured batch size, declaring the numbers missing before a record as skipped.
// It returns the batch, how many records it holds, and the next sequence number to send or declare
// skipped.
func (p *Pipeline) readBatch(r *spool.Reader, batch []byte, expect, limit uint64) ([]byte, int, uint64, error) {
	batch, skipped := batch[:0], 0
	n, err := r.Next(int(min(uint64(p.cfg.BatchEvents), limit-expect+1)), p.cfg.BatchBytes, func(rec spool.Record) error {
		if rec.Seq > expect {
			if skipped == maxSkippedPerBatch {
				return errBatchFull // this record starts the next batch
			}
			// Evicted or destroyed in the spool; the spool's LossReport accounts for them.
			batch = appendSkipped(batch, expect, rec.Seq-1)
			skipped++
		}
		batch = protowire.AppendTag(batch, pushEventsField, protowire.BytesType)
		batch = protowire.AppendBytes(batch, rec.Payload)
		p.chain.add(rec.Seq, rec.Payload)
		expect = rec.Seq + 1
		return nil
	})
	if err != nil && !errors.Is(err, errBatchFull) {
		return batch, n, expect, fmt.Errorf("read spool: %w", err)
	}
	return batch, n, expect, nil
}

// sendBatch sends a batch of n records, the last numbered last, on st and counts them as sent, or
// resent if they were all sent on an earlier stream (up to sentBefore). If sending fails, the error
// returned is the stream's (from recvErr) if it comes within a second.
func (p *Pipeline) sendBatch(st keyguardv1.IngestService_PushClient, batch []byte, n int, last, sentBefore uint64, recvErr <-chan error) error {
	// gRPC may still hold the buffer after SendMsg returns: hand it a copy.
	if err := st.SendMsg(&rawBatch{append([]byte(nil), batch...)}); err != nil {
		// The real cause comes from Recv.
		select {
		case rerr := <-recvErr:
			return fmt.Errorf("send to collector: %w", rerr)
		case <-time.After(time.Second):
			return fmt.Errorf("send to collector: %w", err)
		}
	}
	p.sent.Add(uint64(n))
	if last <= sentBefore {
		p.resent.Add(uint64(n))
	} else {
		p.maxSent.Store(last)
	}
	return nil
}

// resume reconciles the collector's acknowledged sequence number with the spool and returns the
// first sequence number to send.
func (p *Pipeline) resume(collectorAcked uint64) (uint64, error) {
	first, err := p.reconcile(collectorAcked)
	if err == nil {
		err = p.sp.MarkSynced()
	}
	return first, err
}

func (p *Pipeline) reconcile(collectorAcked uint64) (uint64, error) {
	st := p.sp.Stats()
	switch {
	case collectorAcked > st.DurableSeq || (st.Fresh && collectorAcked > 0):
		// The collector holds numbers this spool never acknowledged: the spool is new, wiped or
		// restored (a fresh spool's numbers 1..n are new events even when n <= collectorAcked).
		// Renumbering is needed so that new events do not reuse stored numbers.
		first, err := p.sp.Renumber(collectorAcked+1, reseq)
		if err != nil {
			return 0, fmt.Errorf("renumber spool after the collector reported acked_seq %d beyond the spool's %d: %w", collectorAcked, st.DurableSeq, err)
		}
		p.log.Warn("export: the collector already holds sequence numbers this spool never wrote (spool wiped or restored?); unsent events renumbered",
			"collector_acked_seq", collectorAcked, "spool_durable_seq", st.DurableSeq, "renumbered_from", first)
		p.ackedSeq.Store(collectorAcked)
		p.maxSent.Store(0)
		// Numbers between the collector's acknowledgement and first are declared skipped.
		return collectorAcked + 1, nil
	case collectorAcked < st.AckedSeq:
		if err := p.regress(collectorAcked, st.AckedSeq); err != nil {
			return 0, err
		}
		return collectorAcked + 1, nil
	default:
		p.onAck(collectorAcked)
		return collectorAcked + 1, nil
	}
}

// reseq rewrites the sequence number inside a spooled event payload: appending field 3 again
// overrides the earlier value (proto3: the last value of a scalar field wins).
func reseq(newSeq uint64, payload, dst []byte) []byte {
	// Re-encoded whole, so that the payload stays the event's canonical encoding (what the agent chain
	// hashes and the collector re-encodes to verify it).
	ev := &keyguardv1.Event{}
	if proto.Unmarshal(payload, ev) == nil {
		ev.Seq = newSeq
		if b, err := (proto.MarshalOptions{Deterministic: true}).MarshalAppend(dst, ev); err == nil {
			return b
		}
	}
	dst = append(dst, payload...)
	dst = protowire.AppendTag(dst, 3, protowire.VarintType)
	return protowire.AppendVarint(dst, newSeq)
}

func (p *Pipeline) onAck(seq uint64) {
	if seq <= p.ackedSeq.Load() {
		return
	}
	if err := p.sp.Ack(seq); err != nil && !errors.Is(err, spool.ErrClosed) {
		p.setErr(err)
		p.log.Error("export: recording acknowledgement failed", "seq", seq, "err", err)
	}
	p.ackedSeq.Store(seq)
	p.lastAck.Store(time.Now().UnixNano())
	if p.ackHook != nil {
		p.ackHook(seq)
	}
}

// regress handles a collector that acknowledges less than it did before (database restored from a
// backup, or replaced by an empty or another collector's database): what the spool still holds above
// collectorAcked is sent again; the rest is reported as a LossReport listing the exact ranges, which
// the stream also declares skipped. The spool's acknowledgement moves back, so a reconnect does not
// report the same loss twice.
func (p *Pipeline) regress(collectorAcked, agentAcked uint64) error {
	missing, total, err := p.sp.Missing(collectorAcked+1, agentAcked)
	if err != nil {
		return fmt.Errorf("collector acknowledges %d after %d: %w", collectorAcked, agentAcked, err)
	}
	p.log.Error("export: the collector acknowledges less than it did before (database restored or replaced?); resending what the spool holds and reporting the rest as lost",
		"collector_acked_seq", collectorAcked, "agent_acked_seq", agentAcked,
		"resent", agentAcked-collectorAcked-total, "lost", total)
	if total > 0 {
		now := timestamppb.Now()
		lr := &keyguardv1.LossReport{
			Source:            keyguardv1.LossSource_LOSS_SOURCE_COLLECTOR_REGRESSION,
			Count:             total,
			WindowStartTime:   now,
			WindowEndTime:     now,
			CollectorAckedSeq: collectorAcked,
			AgentAckedSeq:     agentAcked,
		}
		for _, r := range missing {
			lr.Evicted = append(lr.Evicted, &keyguardv1.SequenceRange{First: r.First, Last: r.Last})
		}
		if !p.storeNow(&keyguardv1.Event{Time: now, Kind: &keyguardv1.Event_LossReport{LossReport: lr}}) {
			return fmt.Errorf("collector regression from %d to %d: the loss report could not be spooled; retrying", agentAcked, collectorAcked)
		}
	}
	if err := p.sp.Regress(collectorAcked); err != nil {
		return fmt.Errorf("collector acknowledges %d after %d: %w", collectorAcked, agentAcked, err)
	}
	p.ackedSeq.Store(collectorAcked)
	return nil
}

// problemLogEvery is how often an unchanged delivery problem is logged again.
const problemLogEvery = 5 * time.Minute

// noteProblem records why delivery failed, counts it by reason and logs a warning saying what to do:
// when the reason changes, and then every problemLogEvery while it lasts.
func (p *Pipeline) noteProblem(err error, retryIn time.Duration) {
	reason, advice := Diagnose(err, p.cfg.Collector)
	p.countFailure(reason)
	now := time.Now()
	prev := p.problem.Load()
	pr := &Problem{Reason: reason, Advice: advice, Error: err.Error(), Since: now}
	if prev != nil && prev.Reason == reason {
		pr.Since = prev.Since
	}
	p.problem.Store(pr)
	if prev == nil || prev.Reason != reason || now.Sub(time.Unix(0, p.problemLogged.Load())) >= problemLogEvery {
		p.problemLogged.Store(now.UnixNano())
		p.log.Warn("export: cannot deliver events to the collector; "+advice, "collector", p.cfg.Collector, "reason", reason,
			"err", err, "failing_since", pr.Since, "retry_in", retryIn)
	}
}

// clearProblem forgets the delivery problem once a stream is established.
func (p *Pipeline) clearProblem() {
	if prev := p.problem.Swap(nil); prev != nil {
		p.log.Info("export: delivery to the collector restored", "collector", p.cfg.Collector, "was", prev.Reason,
			"failed_for", time.Since(prev.Since).Round(time.Second))
	}
}

func (p *Pipeline) countFailure(reason string) {
	for i, r := range Reasons {
		if r == reason {
			p.failures[i].Add(1)
			return
		}
	}
}
