package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// signedCheckpoint is what web1's agent would sign after sending evs (from the chain's start).
func signedCheckpoint(t *testing.T, signer *certgen.Pair, host string, evs []*pb.Event) *pb.SignedCheckpoint {
	t.Helper()
	head := pb.AgentChainGenesis(host, 0)
	for _, ev := range evs {
		b, err := pb.AgentChainPayload(ev)
		if err != nil {
			t.Fatal(err)
		}
		head = pb.AgentChainLink(head, ev.GetSeq(), b)
	}
	cp := &pb.AgentCheckpoint{Host: host, Seq: evs[len(evs)-1].GetSeq(), Count: uint64(len(evs)), Head: head, Time: timestamppb.Now()}
	sc, err := pb.SignCheckpoint(cp, signer.Key, signer.Cert.Raw)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// TestCheckpointsVerifiedStoredForwarded, over real gRPC on loopback with mTLS, on SQLite and
// PostgreSQL: a checkpoint signed with the stream's host key is stored, agrees with the stored events,
// and reaches a second collector configured as witness (WitnessService, collector certificate); one
// signed with another host's key, or for another host, ends the stream and is not stored.
func TestCheckpointsVerifiedStoredForwarded(t *testing.T) {
	for _, be := range []struct {
		name string
		dsn  func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return sqliteDSN(t) }},
		{"postgres", func(t *testing.T) string { return pgtest.NewDatabase(t) }},
	} {
		t.Run(be.name, func(t *testing.T) {
			p := newPKI(t)
			client, err := p.ca.Issue(certgen.Request{CommonName: "collector-a", OU: certgen.OUServer})
			if err != nil {
				t.Fatal(err)
			}
			if err := client.Write(p.dir, "collector-a"); err != nil {
				t.Fatal(err)
			}
			witness := start(t, p.config(be.dsn(t)))
			cfg := p.config(be.dsn(t))
			cfg.Witness.Collector = witness.Addr().String()
			cfg.Witness.CA = filepath.Join(p.dir, "ca.crt")
			cfg.Witness.Cert = filepath.Join(p.dir, "collector-a.crt")
			cfg.Witness.Key = filepath.Join(p.dir, "collector-a.key")
			a := start(t, cfg)

			cc := p.dial(t, a.Addr(), "web1")
			pu, err := openPush(context.Background(), cc)
			if err != nil {
				t.Fatal(err)
			}
			defer pu.close()
			evs := events(1, 20)
			if r, err := pu.push(evs); err != nil || r.GetAckedSeq() != 20 {
				t.Fatalf("push: %v %v", r, err)
			}
			if err := pu.stream.Send(&pb.PushRequest{Checkpoint: signedCheckpoint(t, p.certs["web1"], "web1", evs)}); err != nil {
				t.Fatal(err)
			}
			// The next batch's acknowledgement comes after the checkpoint was handled.
			if r, err := pu.push(events(21, 21)); err != nil || r.GetAckedSeq() != 21 {
				t.Fatalf("push: %v %v", r, err)
			}
			ctx := context.Background()
			own, bad, err := a.Store().AgentCheckpoints(ctx, "")
			if err != nil || len(own) != 1 || len(bad) != 0 {
				t.Fatalf("stored checkpoints: %d good, %v bad, %v", len(own), bad, err)
			}
			if probs, err := a.Store().CheckAgentChains(ctx, own); err != nil || len(probs) != 0 {
				t.Fatalf("the stored events disagree with the checkpoint: %v %v", probs, err)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				got, _, err := witness.Store().AgentCheckpoints(ctx, "web1")
				if err != nil {
					t.Fatal(err)
				}
				if len(got) == 1 && got[0].Source == "collector-a" && got[0].CP.GetSeq() == 20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the witness collector has %d checkpoints of web1 (want 1 from collector-a)", len(got))
				}
				time.Sleep(50 * time.Millisecond)
			}

			for _, forged := range []struct {
				name string
				sc   *pb.SignedCheckpoint
			}{
				{"web2's key claiming web1", func() *pb.SignedCheckpoint {
					sc := signedCheckpoint(t, p.certs["web2"], "web2", evs)
					sc.Certificate = p.certs["web1"].Cert.Raw
					return sc
				}()},
				{"web2's checkpoint on web1's stream", signedCheckpoint(t, p.certs["web2"], "web2", evs)},
			} {
				pu, err := openPush(ctx, cc)
				if err != nil {
					t.Fatal(err)
				}
				pu.stream.Send(&pb.PushRequest{Checkpoint: forged.sc})
				_, err = pu.stream.Recv()
				pu.close()
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "bad agent checkpoint") {
					t.Fatalf("%s: %v, want InvalidArgument bad agent checkpoint", forged.name, err)
				}
			}
			if own, _, _ := a.Store().AgentCheckpoints(ctx, ""); len(own) != 1 {
				t.Fatalf("%d checkpoints stored after the forged ones, want 1", len(own))
			}
		})
	}
}
