// Package query implements keyguard.v1.QueryService: list and watch stored events, list hosts, verify
// hash chains. Every filter value reaches the database as a bound parameter, never as SQL text.
package query

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/collector/internal/metrics"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Limits on requests.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	maxListItems    = 100
	maxStringBytes  = 4096
)

// Notifier wakes watchers when events are stored by this collector (others are found by polling).
type Notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewNotifier returns a Notifier.
func NewNotifier() *Notifier { return &Notifier{ch: make(chan struct{})} }

// Notify wakes every current waiter.
func (n *Notifier) Notify() {
	n.mu.Lock()
	close(n.ch)
	n.ch = make(chan struct{})
	n.mu.Unlock()
}

// Wait returns a channel closed at the next Notify.
func (n *Notifier) Wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

// Options tune the server.
type Options struct {
	StaleAfter   time.Duration      // hosts not seen for this long are STALE (default 5m)
	PollInterval time.Duration      // how often watchers look for events stored by other collectors (default 1s)
	Metrics      *metrics.Collector // chain verification results (nil: none)
}

// Server is the QueryService implementation.
type Server struct {
	pb.UnimplementedQueryServiceServer
	store  *store.Store
	log    *slog.Logger
	notify *Notifier
	opts   Options
}

// New returns a query server; notify may be nil.
func New(st *store.Store, log *slog.Logger, notify *Notifier, opts Options) *Server {
	if opts.StaleAfter == 0 {
		opts.StaleAfter = 5 * time.Minute
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	if notify == nil {
		notify = NewNotifier()
	}
	return &Server{store: st, log: log, notify: notify, opts: opts}
}

func checkString(field, s string, max int) error {
	if len(s) > max {
		return status.Errorf(codes.InvalidArgument, "filter %s is %d bytes, over the limit of %d", field, len(s), max)
	}
	if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		return status.Errorf(codes.InvalidArgument, "filter %s contains a NUL byte or invalid UTF-8", field)
	}
	return nil
}

// ValidateFilter checks a filter's sizes and enum values.
func ValidateFilter(f *pb.EventFilter) error {
	if f == nil {
		return nil
	}
	if len(f.GetHosts()) > maxListItems || len(f.GetKinds()) > maxListItems || len(f.GetDecisions()) > maxListItems {
		return status.Errorf(codes.InvalidArgument, "a filter list has more than %d entries", maxListItems)
	}
	for _, h := range f.GetHosts() {
		if err := checkString("host", h, 253); err != nil {
			return err
		}
	}
	for _, k := range f.GetKinds() {
		if _, ok := pb.EventKind_name[int32(k)]; !ok || k == pb.EventKind_EVENT_KIND_UNSPECIFIED {
			return status.Errorf(codes.InvalidArgument, "unknown event kind %d", int32(k))
		}
	}
	for _, d := range f.GetDecisions() {
		if _, ok := pb.Decision_name[int32(d)]; !ok || d == pb.Decision_DECISION_UNSPECIFIED {
			return status.Errorf(codes.InvalidArgument, "unknown decision %d", int32(d))
		}
	}
	if _, ok := pb.Severity_name[int32(f.GetMinSeverity())]; !ok {
		return status.Errorf(codes.InvalidArgument, "unknown severity %d", int32(f.GetMinSeverity()))
	}
	if err := checkString("process", f.GetProcess(), maxStringBytes); err != nil {
		return err
	}
	if err := checkString("rule", f.GetRule(), maxStringBytes); err != nil {
		return err
	}
	if t := f.GetStartTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "filter start_time: %v", err)
		}
	}
	if t := f.GetEndTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "filter end_time: %v", err)
		}
	}
	if f.GetStartTime() != nil && f.GetEndTime() != nil && !f.GetStartTime().AsTime().Before(f.GetEndTime().AsTime()) {
		return status.Errorf(codes.InvalidArgument, "filter start_time must be before end_time")
	}
	return nil
}

type pageToken struct {
	T int64  `json:"t"`
	H string `json:"h"`
	S uint64 `json:"s"`
	N bool   `json:"n"`
}

func encodeToken(c *store.Cursor, newest bool) string {
	b, _ := json.Marshal(pageToken{T: c.TimeNanos, H: c.Host, S: c.Seq, N: newest})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(s string, newest bool) (*store.Cursor, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > 2048 {
		return nil, status.Error(codes.InvalidArgument, "page_token too long: pass next_page_token unchanged")
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	var t pageToken
	if err == nil {
		err = json.Unmarshal(raw, &t)
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "page_token is not one this collector issued: pass next_page_token unchanged")
	}
	if t.N != newest {
		return nil, status.Error(codes.InvalidArgument, "page_token was issued for the other order: keep newest_first unchanged between pages")
	}
	return &store.Cursor{TimeNanos: t.T, Host: t.H, Seq: t.S}, nil
}

func storageErr(ctx context.Context, log *slog.Logger, what string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if errors.Is(err, store.ErrTooBroad) || errors.Is(err, store.ErrQueryBusy) {
		log.Warn(what+": refused as too broad", "err", err)
		return status.Errorf(codes.ResourceExhausted, "%s: %v", what, err)
	}
	log.Error(what, "err", err)
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}

// ListEvents implements QueryService.ListEvents.
func (s *Server) ListEvents(ctx context.Context, req *pb.ListEventsRequest) (*pb.ListEventsResponse, error) {
	if err := ValidateFilter(req.GetFilter()); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = DefaultPageSize
	}
	if size > MaxPageSize {
		size = MaxPageSize
	}
	cur, err := decodeToken(req.GetPageToken(), req.GetNewestFirst())
	if err != nil {
		return nil, err
	}
	evs, next, err := s.store.List(ctx, req.GetFilter(), size, cur, req.GetNewestFirst())
	if err != nil {
		return nil, storageErr(ctx, s.log, "list events", err)
	}
	resp := &pb.ListEventsResponse{Events: evs}
	if next != nil {
		resp.NextPageToken = encodeToken(next, req.GetNewestFirst())
	}
	return resp, nil
}

// ListHosts implements QueryService.ListHosts.
func (s *Server) ListHosts(ctx context.Context, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	if len(req.GetHosts()) > maxListItems {
		return nil, status.Errorf(codes.InvalidArgument, "more than %d hosts", maxListItems)
	}
	for _, h := range req.GetHosts() {
		if err := checkString("host", h, 253); err != nil {
			return nil, err
		}
	}
	hosts, err := s.store.Hosts(ctx, req.GetHosts(), time.Now(), s.opts.StaleAfter)
	if err != nil {
		return nil, storageErr(ctx, s.log, "list hosts", err)
	}
	return &pb.ListHostsResponse{Hosts: hosts}, nil
}

// VerifyChain implements QueryService.VerifyChain.
func (s *Server) VerifyChain(ctx context.Context, req *pb.VerifyChainRequest) (*pb.VerifyChainResponse, error) {
	if len(req.GetHosts()) > maxListItems {
		return nil, status.Errorf(codes.InvalidArgument, "more than %d hosts", maxListItems)
	}
	for _, h := range req.GetHosts() {
		if err := checkString("host", h, 253); err != nil {
			return nil, err
		}
	}
	reps, err := s.store.Verify(ctx, req.GetHosts())
	if err != nil {
		return nil, storageErr(ctx, s.log, "verify chains", err)
	}
	if err := s.store.RecordVerdicts(ctx, reps, time.Now()); err != nil {
		s.log.Warn("could not record chain verdicts for the fleet page", "err", err)
	}
	for _, r := range reps {
		s.opts.Metrics.ChainVerified(r.GetHost(), r.GetOk())
		if !r.GetOk() {
			s.log.Warn("hash chain verification failed", "host", r.GetHost(), "problems", len(r.GetProblems()))
		}
	}
	return &pb.VerifyChainResponse{Reports: reps}, nil
}

// WatchEvents implements QueryService.WatchEvents. It follows each host's chain position, which is
// assigned in the same transaction that stores the event, so nothing committed by any collector sharing
// the database is skipped.
func (s *Server) WatchEvents(req *pb.WatchEventsRequest, stream pb.QueryService_WatchEventsServer) error {
	ctx := stream.Context()
	if err := ValidateFilter(req.GetFilter()); err != nil {
		return err
	}
	known, err := s.store.ChainHeads(ctx)
	if err != nil {
		return storageErr(ctx, s.log, "start watch", err)
	}
	since := req.GetSinceTime()
	if since != nil {
		if err := since.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "since_time: %v", err)
		}
		for h := range known {
			p, err := s.store.PositionBefore(ctx, h, since.AsTime())
			if err != nil {
				return storageErr(ctx, s.log, "start watch", err)
			}
			known[h] = p
		}
	}
	ticker := time.NewTicker(s.opts.PollInterval)
	defer ticker.Stop()
	for {
		wake := s.notify.Wait()
		heads, err := s.store.ChainHeads(ctx)
		if err != nil {
			return storageErr(ctx, s.log, "watch", err)
		}
		for h, upto := range heads {
			from, seen := known[h]
			if !seen && since == nil {
				from = 0 // a host that appeared after the watch started: all its events are new
			}
			for from < upto {
				evs, err := s.store.ChainRange(ctx, h, from, upto, req.GetFilter(), 500)
				if err != nil {
					return storageErr(ctx, s.log, "watch", err)
				}
				for _, e := range evs {
					if err := stream.Send(&pb.WatchEventsResponse{Event: e}); err != nil {
						return err
					}
				}
				if len(evs) < 500 {
					from = upto
				} else {
					from = evs[len(evs)-1].GetChainPosition()
				}
			}
			known[h] = upto
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil
			}
			return status.FromContextError(ctx.Err()).Err()
		case <-wake:
		case <-ticker.C:
		}
	}
}
