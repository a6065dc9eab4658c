package main

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/deploy/cmdline"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func init() {
	register("verify", "verify the collector's per-host hash chains (reports modified or deleted events)", runVerify)
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard verify", "[flags]", "")
	var conn collectorFlags
	conn.register(fs)
	conn.timeout = 0
	var hosts multiFlag
	fs.Var(&hosts, "host", "verify only these hosts (default all)")
	asJSON := fs.Bool("json", false, "print protojson of keyguard.v1.VerifyChainResponse")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	cc, err := conn.dial()
	if err != nil {
		fmt.Fprintln(stderr, "verify:", err)
		return 1
	}
	defer cc.Close()
	if conn.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, conn.timeout)
		defer cancel()
	}
	resp, err := pb.NewQueryServiceClient(cc).VerifyChain(ctx, &pb.VerifyChainRequest{Hosts: hosts})
	if err != nil {
		fmt.Fprintln(stderr, "verify:", status.Convert(err).Message())
		return 1
	}
	bad := 0
	for _, r := range resp.GetReports() {
		if !r.GetOk() {
			bad++
		}
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(resp)
		if err != nil {
			fmt.Fprintln(stderr, "verify:", err)
			return 1
		}
		fmt.Fprintln(stdout, string(b))
	} else {
		for _, r := range resp.GetReports() {
			if r.GetOk() {
				fmt.Fprintf(stdout, "OK    %s: %d events, chain intact\n", clip(r.GetHost(), 64), r.GetEventsChecked())
				continue
			}
			fmt.Fprintf(stdout, "FAIL  %s: %d events checked, %d problem(s)\n", clip(r.GetHost(), 64), r.GetEventsChecked(), len(r.GetProblems()))
			for _, p := range r.GetProblems() {
				fmt.Fprintf(stdout, "      %s at chain position %d: %s\n", short(p.GetKind().String(), "CHAIN_PROBLEM_KIND_"), p.GetChainPosition(), p.GetDetail())
			}
			if r.GetTruncated() {
				fmt.Fprintln(stdout, "      (more problems not listed)")
			}
		}
		if len(resp.GetReports()) == 0 {
			fmt.Fprintln(stdout, "no hosts to verify")
		}
	}
	if bad > 0 {
		fmt.Fprintf(stderr, "verify: %d host(s) with a broken chain; investigate the database and its backups\n", bad)
		return 1
	}
	return 0
}
