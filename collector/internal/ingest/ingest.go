// Package ingest implements keyguard.v1.IngestService: agents push batches over a long-lived stream and
// the collector acknowledges the highest contiguous sequence number it has durably committed.
package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/collector/internal/identity"
	"github.com/keyguard/keyguard/collector/internal/metrics"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Limits on one PushRequest (the gRPC message size limit applies first).
const (
	MaxBatchEvents = 10000
	MaxEventBytes  = 256 << 10
	MaxSkipped     = 1000
)

// Server is the IngestService implementation.
type Server struct {
	pb.UnimplementedIngestServiceServer
	store   *store.Store
	log     *slog.Logger
	stored  func()              // called after each commit that stored events (wakes watchers)
	revoked func(*big.Int) bool // consulted on every batch; nil = never
	metrics *metrics.Collector  // nil: no metrics
}

// SetMetrics makes the server record ingest metrics in m. Call before serving.
func (s *Server) SetMetrics(m *metrics.Collector) { s.metrics = m }

// New returns an ingest server. stored and revoked may be nil.
func New(st *store.Store, log *slog.Logger, stored func(), revoked func(*big.Int) bool) *Server {
	if stored == nil {
		stored = func() {}
	}
	return &Server{store: st, log: log, stored: stored, revoked: revoked}
}

// Push implements IngestService.Push.
func (s *Server) Push(stream pb.IngestService_PushServer) error {
	ctx := stream.Context()
	id, ok := identity.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no caller identity")
	}
	host := id.Name
	log := s.log.With("host", host)
	acked, err := s.store.Acked(ctx, host)
	if err != nil {
		log.Error("read acknowledged sequence", "err", err)
		return status.Errorf(codes.Unavailable, "collector storage unavailable, retry later: %v", err)
	}
	if err := stream.Send(&pb.PushResponse{AckedSeq: acked, Host: host}); err != nil {
		return err
	}
	s.metrics.StreamOpened(host, acked)
	defer s.metrics.StreamClosed()
	log.Info("agent stream opened", "identity", id.String(), "acked_seq", acked)
	in := make(chan received, 64)
	go receive(ctx, stream, host, in)
	var held *received // a request read ahead that must wait for the next round
	for {
		var r received
		if held != nil {
			r, held = *held, nil
		} else {
			select {
			case r = <-in:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if errors.Is(r.err, io.EOF) {
			log.Info("agent stream closed by agent")
			return nil
		}
		if r.err != nil {
			if status.Code(r.err) != codes.Canceled {
				log.Warn("agent stream receive failed", "err", r.err)
			}
			return r.err
		}
		req := r.req
		if id.Serial != nil && s.revoked != nil && s.revoked(id.Serial) {
			s.metrics.Rejected(metrics.ReasonRevoked, len(req.GetEvents()))
			log.Warn("closing stream of revoked certificate", "serial", id.Serial.Text(16))
			return status.Errorf(codes.PermissionDenied, "client certificate %q has been revoked", host)
		}
		if sc := req.GetCheckpoint(); sc != nil {
			if err := s.checkpoint(ctx, log, id, sc); err != nil {
				return err
			}
			if len(req.GetEvents()) == 0 && len(req.GetSkipped()) == 0 {
				continue // a checkpoint alone gets no response
			}
		}
		if r.verr != nil {
			s.metrics.Rejected(r.reason, len(req.GetEvents()))
			log.Warn("refused batch", "err", r.verr)
			return r.verr
		}
		group := []received{r}
		group, held = s.gather(group, in)
		if err := s.commitGroup(ctx, stream, log, host, group); err != nil {
			return err
		}
	}
}

// received is one Recv result, validated and, when valid, prepared for the store.
type received struct {
	req    *pb.PushRequest
	err    error
	reason string          // the metrics reason of verr
	verr   error           // validate's verdict
	prep   *store.Prepared // the events prepared (nil: Append prepares them, and reports what is wrong)
}

// receive reads the stream into in until it fails (the error is sent too) or ctx ends. It validates
// each batch and prepares its events for the store (store.Prepare: encoding and digests), so that
// this work runs while the previous batches commit.
func receive(ctx context.Context, stream pb.IngestService_PushServer, host string, in chan<- received) {
	for {
		req, err := stream.Recv()
		r := received{req: req, err: err}
		if err == nil {
			r.reason, r.verr = validate(host, req)
			if r.verr == nil {
				for _, ev := range req.GetEvents() {
					ev.Host = host
				}
				r.prep, _ = store.Prepare(host, req.GetEvents())
			}
		}
		select {
		case in <- r:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// MaxGroupEvents bounds the events of batches committed together.
const MaxGroupEvents = 20000

// gather adds to group the valid batches already received, up to MaxGroupEvents, so that they are
// committed in one transaction (one fsync for all: batches arriving while a commit is under way are
// the next commit's). A checkpoint, an invalid batch or a receive error is held back for the next
// round, after this group is committed.
func (s *Server) gather(group []received, in <-chan received) ([]received, *received) {
	n := len(group[0].req.GetEvents())
	for n < MaxGroupEvents {
		select {
		case r := <-in:
			if r.err != nil || r.req.GetCheckpoint() != nil || n+len(r.req.GetEvents()) > MaxGroupEvents {
				return group, &r
			}
			if r.verr != nil {
				return group, &r
			}
			group = append(group, r)
			n += len(r.req.GetEvents())
		default:
			return group, nil
		}
	}
	return group, nil
}

// commitGroup commits a group of batches in one transaction and acknowledges each batch (every response
// carries the acknowledgement after the whole group; the counts are on the last). When the group
// fails for a reason one batch may cause (conflict, invalid), its batches are stored one by one, so
// those before the culprit are stored and acknowledged as before.
func (s *Server) commitGroup(ctx context.Context, stream pb.IngestService_PushServer, log *slog.Logger, host string, group []received) error {
	var evs []*pb.Event
	var skipped []store.Range
	preps := make([]*store.Prepared, 0, len(group))
	for _, r := range group {
		req := r.req
		if r.prep != nil {
			preps = append(preps, r.prep)
		}
		for _, r := range req.GetSkipped() {
			skipped = append(skipped, store.Range{First: r.GetFirst(), Last: r.GetLast()})
		}
		for _, ev := range req.GetEvents() {
			ev.Host = host
			if lr := ev.GetLossReport(); lr.GetSource() == pb.LossSource_LOSS_SOURCE_COLLECTOR_REGRESSION {
				// Stored as an event (in the host's chain and its loss totals); said loudly here too.
				log.Error("agent reports that this collector lost events it had acknowledged (database restored from a backup or replaced?)",
					"collector_acked_seq", lr.GetCollectorAckedSeq(), "agent_acked_seq", lr.GetAgentAckedSeq(),
					"lost", lr.GetCount(), "seq", ev.GetSeq())
			}
		}
		evs = append(evs, req.GetEvents()...)
	}
	var res store.AppendResult
	var err error
	if len(preps) == len(group) {
		res, err = s.store.AppendPrepared(ctx, host, preps, skipped)
	} else {
		res, err = s.store.Append(ctx, host, evs, skipped)
	}
	if err != nil && len(group) > 1 && (errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrInvalid)) {
		for _, r := range group {
			if err := s.commitGroup(ctx, stream, log, host, []received{r}); err != nil {
				return err
			}
		}
		return nil
	}
	if err != nil {
		return s.storeError(ctx, log, err, len(evs))
	}
	s.metrics.Batch(host, res.Stored, res.Duplicates, res.Acked)
	if res.Stored > 0 {
		s.stored()
	}
	for i := range group {
		resp := &pb.PushResponse{AckedSeq: res.Acked, Host: host}
		if i == len(group)-1 {
			resp.Stored, resp.Duplicates = uint32(res.Stored), uint32(res.Duplicates)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// checkpoint verifies an agent's signed checkpoint (signed by the key of the certificate this stream
// authenticated with, for this host) and stores it. A checkpoint that does not verify ends the stream;
// one on a plaintext stream (no certificate) is ignored. A store failure ends the stream too (the agent
// resends from its acknowledgement and signs again later); a witness failure is logged.
func (s *Server) checkpoint(ctx context.Context, log *slog.Logger, id identity.Identity, sc *pb.SignedCheckpoint) error {
	if id.Cert == nil {
		log.Warn("ignoring a signed checkpoint on a plaintext stream (no certificate to check it against)")
		return nil
	}
	cp, _, err := pb.VerifyCheckpoint(sc)
	if err == nil && !bytes.Equal(sc.GetCertificate(), id.Cert.Raw) {
		err = fmt.Errorf("%w: signed with a certificate other than the stream's", pb.ErrBadCheckpoint)
	}
	if err == nil && cp.GetHost() != id.Name {
		err = fmt.Errorf("%w: checkpoint of host %q on the stream of %q", pb.ErrBadCheckpoint, cp.GetHost(), id.Name)
	}
	if err != nil {
		log.Error("refused agent checkpoint", "err", err)
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	err = s.store.AddCheckpoint(ctx, store.CheckpointEntry{Signed: sc, CP: cp})
	switch {
	case errors.Is(err, store.ErrWitness):
		log.Error("agent checkpoint stored, but not written to the witness", "err", err)
	case err != nil:
		log.Error("storing agent checkpoint failed", "err", err)
		return status.Errorf(codes.Unavailable, "collector could not store the checkpoint: %v", err)
	}
	log.Debug("agent checkpoint", "base_seq", cp.GetBaseSeq(), "seq", cp.GetSeq(), "count", cp.GetCount(), "final", cp.GetFinal())
	return nil
}

func (s *Server) storeError(ctx context.Context, log *slog.Logger, err error, n int) error {
	switch {
	case errors.Is(err, store.ErrConflict):
		s.metrics.Rejected(metrics.ReasonConflict, n)
		log.Error("refused batch: sequence conflict", "err", err)
		return status.Errorf(codes.AlreadyExists, "%v", err)
	case errors.Is(err, store.ErrInvalid):
		s.metrics.Rejected(metrics.ReasonInvalid, n)
		log.Warn("refused batch", "err", err)
		return status.Errorf(codes.InvalidArgument, "%v", err)
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	default:
		s.metrics.Rejected(metrics.ReasonStorage, n)
		log.Error("storing batch failed", "err", err)
		return status.Errorf(codes.Unavailable, "collector could not store the batch (nothing of it was acknowledged; retry): %v", err)
	}
}

// validate checks a batch before it is stored; a refusal names its reason (a metrics label).
func validate(host string, req *pb.PushRequest) (reason string, err error) {
	if n := len(req.GetEvents()); n > MaxBatchEvents {
		return metrics.ReasonTooManyEvents, status.Errorf(codes.InvalidArgument, "batch of %d events exceeds the limit of %d: send smaller batches", n, MaxBatchEvents)
	}
	if n := len(req.GetSkipped()); n > MaxSkipped {
		return metrics.ReasonTooManySkipped, status.Errorf(codes.InvalidArgument, "%d skipped ranges exceed the limit of %d: merge them", n, MaxSkipped)
	}
	for i, ev := range req.GetEvents() {
		if ev == nil {
			return metrics.ReasonEmptyEvent, status.Errorf(codes.InvalidArgument, "event %d of the batch is empty", i)
		}
		if ev.GetHost() != "" && ev.GetHost() != host {
			return metrics.ReasonHostMismatch, status.Errorf(codes.PermissionDenied, "event seq %d claims host %q but the client certificate identifies %q: agents must leave host empty", ev.GetSeq(), ev.GetHost(), host)
		}
		if ev.GetSeq() == 0 {
			return metrics.ReasonZeroSequence, status.Errorf(codes.InvalidArgument, "event %d of the batch has sequence number 0: sequence numbers start at 1", i)
		}
		// A kind newer than this collector arrives as unknown fields: it is stored (kind unspecified) rather
		// than refused, so a newer agent is never stuck behind an older collector.
		if pb.KindOf(ev) == pb.EventKind_EVENT_KIND_UNSPECIFIED && len(ev.ProtoReflect().GetUnknown()) == 0 {
			return metrics.ReasonNoKind, status.Errorf(codes.InvalidArgument, "event seq %d has no kind set", ev.GetSeq())
		}
		if ev.GetTime() == nil {
			return metrics.ReasonNoTime, status.Errorf(codes.InvalidArgument, "event seq %d has no time", ev.GetSeq())
		}
		if err := ev.GetTime().CheckValid(); err != nil {
			return metrics.ReasonInvalidTime, status.Errorf(codes.InvalidArgument, "event seq %d has an invalid time: %v", ev.GetSeq(), err)
		}
		if sz := proto.Size(ev); sz > MaxEventBytes {
			return metrics.ReasonTooLarge, status.Errorf(codes.InvalidArgument, "event seq %d is %d bytes, over the per-event limit of %d", ev.GetSeq(), sz, MaxEventBytes)
		}
	}
	return "", nil
}
