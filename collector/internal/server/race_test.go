package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// pushWindowed sends events 1..total in batches with up to window batches unacknowledged, as the
// agent's export does, and returns the last acknowledgement.
func pushWindowed(ctx context.Context, cc *grpc.ClientConn, total, batch uint64, window int) (uint64, error) {
	pu, err := openPush(ctx, cc)
	if err != nil {
		return 0, err
	}
	defer pu.close()
	n := int((total + batch - 1) / batch)
	acks, errc := pu.recvAcks(n)
	inflight := 0
	var last uint64
	for from := uint64(1); from <= total; from += batch {
		for inflight >= window {
			select {
			case r := <-acks:
				last, inflight = r.GetAckedSeq(), inflight-1
			case err := <-errc:
				return last, err
			}
		}
		if err := pu.stream.Send(&pb.PushRequest{Events: events(from, min(from+batch-1, total))}); err != nil {
			return last, err
		}
		inflight++
	}
	for {
		select {
		case r, ok := <-acks:
			if !ok {
				return last, nil
			}
			last = r.GetAckedSeq()
		case err := <-errc:
			return last, err
		}
	}
}

// TestWindowedStreamsRace: four windowed streams of one host (batches in flight, committed in groups),
// through two collectors sharing a PostgreSQL database and each sending every event (an agent failing
// over while its old stream still delivers), race each other: every stream is acknowledged to the end
// without an error, every event is stored once, and the chain verifies.
func TestWindowedStreamsRace(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	p, a, b := startPair(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const total, batch, window = 20000, 250, 8
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i, s := range []*Server{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last, err := pushWindowed(ctx, p.dial(t, s.Addr(), "web1"), total, batch, window)
			if err == nil && last != total {
				err = fmt.Errorf("last acknowledgement %d, want %d", last, total)
			}
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assertSeqs(t, a, "web1", total, nil)
	rep, err := pb.NewQueryServiceClient(p.dial(t, a.Addr(), "alice")).VerifyChain(ctx, &pb.VerifyChainRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Reports) != 1 || !rep.Reports[0].Ok || rep.Reports[0].EventsChecked != total {
		t.Fatalf("chain: %v", rep.Reports)
	}
}
