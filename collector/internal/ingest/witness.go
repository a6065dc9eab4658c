package ingest

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/collector/internal/identity"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// MaxWitnessEntries bounds one RecordRequest.
const MaxWitnessEntries = 10000

// WitnessServer implements keyguard.v1.WitnessService: this collector keeps the agent checkpoints and
// tombstones another collector forwards, so that one's administrator cannot take them back.
type WitnessServer struct {
	pb.UnimplementedWitnessServiceServer
	store *store.Store
	log   *slog.Logger
}

// NewWitness returns a WitnessService backed by st.
func NewWitness(st *store.Store, log *slog.Logger) *WitnessServer {
	return &WitnessServer{store: st, log: log}
}

// Record implements WitnessService.Record: every entry's signature must verify (against the agent
// certificate it carries); entries are stored with the calling collector as their source.
func (w *WitnessServer) Record(ctx context.Context, req *pb.RecordRequest) (*pb.RecordResponse, error) {
	id, ok := identity.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no caller identity")
	}
	if n := len(req.GetEntries()); n > MaxWitnessEntries {
		return nil, status.Errorf(codes.InvalidArgument, "%d entries exceed the limit of %d: send smaller requests", n, MaxWitnessEntries)
	}
	entries := make([]store.CheckpointEntry, 0, len(req.GetEntries()))
	for i, e := range req.GetEntries() {
		cp, _, err := pb.VerifyCheckpoint(e.GetCheckpoint())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "entry %d: %v", i, err)
		}
		ce := store.CheckpointEntry{Signed: e.GetCheckpoint(), CP: cp, Source: id.Name}
		if e.GetTombstone() {
			ce.Tombstone = time.Now()
		}
		entries = append(entries, ce)
	}
	for _, ce := range entries {
		if err := w.store.AddCheckpoint(ctx, ce); err != nil && !errors.Is(err, store.ErrWitness) {
			w.log.Error("storing witness entry failed", "from", id.Name, "err", err)
			return nil, status.Errorf(codes.Unavailable, "could not store witness entries (retry): %v", err)
		}
	}
	return &pb.RecordResponse{Recorded: uint32(len(entries))}, nil
}
