package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/deploy/cmdline"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func init() {
	register("hosts", "list hosts known to the collector with last-seen time and agent status", runHosts)
}

func runHosts(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard hosts", "[flags]", "")
	var conn collectorFlags
	conn.register(fs)
	asJSON := fs.Bool("json", false, "print protojson of keyguard.v1.ListHostsResponse")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	cc, err := conn.dial()
	if err != nil {
		fmt.Fprintln(stderr, "hosts:", err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, conn.timeout)
	defer cancel()
	resp, err := pb.NewQueryServiceClient(cc).ListHosts(ctx, &pb.ListHostsRequest{Hosts: fs.Args()})
	if err != nil {
		fmt.Fprintln(stderr, "hosts:", status.Convert(err).Message())
		return 1
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(resp)
		if err != nil {
			fmt.Fprintln(stderr, "hosts:", err)
			return 1
		}
		fmt.Fprintln(stdout, string(b))
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATUS\tLAST SEEN\tACKED SEQ\tEVENTS\tAGENT\tKERNEL\tLSM\tPINNED\tPROTECTED")
	for _, h := range resp.GetHosts() {
		hl := h.GetLastHealth()
		lsm, pinned, prot, kernel := "-", "-", "-", "-"
		if hl != nil {
			lsm, pinned, prot, kernel = fmt.Sprint(hl.GetLsmActive()), fmt.Sprint(hl.GetEnforcementPinned()), fmt.Sprint(hl.GetProtectedProcessCount()), clip(hl.GetKernelRelease(), 24)
		}
		ago := time.Since(h.GetLastSeenTime().AsTime()).Truncate(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s ago\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", clip(h.GetHost(), 40), short(h.GetStatus().String(), "HOST_STATUS_"),
			ago, h.GetAckedSeq(), h.GetEventCount(), clip(h.GetAgentVersion(), 16), kernel, lsm, pinned, prot)
	}
	tw.Flush()
	return 0
}
