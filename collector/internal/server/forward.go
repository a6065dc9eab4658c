package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// forwarder sends agent checkpoints and tombstones to a second collector kept as witness
// (WitnessService.Record over mTLS, with a certificate of OU keyguard-collector). Entries wait in a
// bounded queue and are retried until the witness takes them; while the queue is full, new entries
// are counted as dropped and logged (the witness file, if configured, still has them).
type forwarder struct {
	log     *slog.Logger
	conn    *grpc.ClientConn
	client  pb.WitnessServiceClient
	queue   chan *pb.WitnessEntry
	dropped atomic.Uint64
	sent    atomic.Uint64
}

// forwardQueue bounds the entries waiting for the witness collector.
const forwardQueue = 100000

func newForwarder(addr, caFile, certFile, keyFile string, log *slog.Logger) (*forwarder, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("witness collector: read CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("witness collector: %s holds no PEM certificate", caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("witness collector: load client certificate (OU keyguard-collector): %w", err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{pair},
	})))
	if err != nil {
		return nil, fmt.Errorf("witness collector %q: %w", addr, err)
	}
	return &forwarder{log: log, conn: conn, client: pb.NewWitnessServiceClient(conn), queue: make(chan *pb.WitnessEntry, forwardQueue)}, nil
}

// enqueue is store.Options.Forward: it never blocks.
func (f *forwarder) enqueue(e *pb.WitnessEntry) {
	select {
	case f.queue <- e:
	default:
		if f.dropped.Add(1)%1000 == 1 {
			f.log.Error("witness collector queue full: checkpoints not forwarded", "dropped", f.dropped.Load())
		}
	}
}

// run sends queued entries in batches until ctx ends, then tries for a few seconds more to send what
// is left, and closes the connection.
func (f *forwarder) run(ctx context.Context) {
	defer f.conn.Close()
	var batch []*pb.WitnessEntry
	delay := 100 * time.Millisecond
	for {
		if len(batch) == 0 {
			select {
			case e := <-f.queue:
				batch = append(batch, e)
			case <-ctx.Done():
				f.drain(batch)
				return
			}
		}
		for len(batch) < 1000 {
			select {
			case e := <-f.queue:
				batch = append(batch, e)
				continue
			default:
			}
			break
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := f.client.Record(cctx, &pb.RecordRequest{Entries: batch})
		cancel()
		if err == nil {
			f.sent.Add(uint64(len(batch)))
			batch, delay = batch[:0], 100*time.Millisecond
			continue
		}
		f.log.Warn("forwarding checkpoints to the witness collector failed; will retry", "entries", len(batch), "err", err)
		select {
		case <-time.After(delay):
			delay = min(2*delay, 30*time.Second)
		case <-ctx.Done():
			f.drain(batch)
			return
		}
	}
}

func (f *forwarder) drain(batch []*pb.WitnessEntry) {
	for len(batch) < MaxDrain {
		select {
		case e := <-f.queue:
			batch = append(batch, e)
			continue
		default:
		}
		break
	}
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.client.Record(ctx, &pb.RecordRequest{Entries: batch}); err != nil {
		f.log.Error("checkpoints not forwarded to the witness collector at shutdown", "entries", len(batch), "err", err)
		return
	}
	f.sent.Add(uint64(len(batch)))
}

// MaxDrain bounds what is sent at shutdown in one request.
const MaxDrain = 10000
