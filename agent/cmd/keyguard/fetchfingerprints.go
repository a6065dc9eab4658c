package main

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/deploy/cmdline"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func init() {
	register("fetch-fingerprints", "write the key fingerprints hosts published to the collector into a file (for scan and the sentinel)", fetchFingerprints)
}

// fetchFingerprints reads every KeyFingerprints event at the collector, newest first, keeps the
// newest set of each host, merges them (one deployment key) and writes a fingerprint file.
func fetchFingerprints(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard fetch-fingerprints", "-o FILE [flags]",
		"Writes the newest key fingerprints each host published to the collector, merged, into FILE.")
	var conn collectorFlags
	conn.register(fs)
	out := fs.String("o", "", "fingerprint file to write (mode 0600)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if *out == "" {
		return cmdline.Usagef(fs, stderr, "give -o FILE")
	}
	cc, err := conn.dial()
	if err != nil {
		fmt.Fprintln(stderr, "fetch-fingerprints:", err)
		return 1
	}
	defer cc.Close()
	client := pb.NewQueryServiceClient(cc)
	ctx, cancel := context.WithTimeout(ctx, conn.timeout)
	defer cancel()
	req := &pb.ListEventsRequest{Filter: &pb.EventFilter{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_KEY_FINGERPRINTS}}, NewestFirst: true, PageSize: 1000}
	var merged *detect.FingerprintSet
	hosts := map[string]bool{}
	for {
		resp, err := client.ListEvents(ctx, req)
		if err != nil {
			fmt.Fprintln(stderr, "fetch-fingerprints:", status.Convert(err).Message())
			return 1
		}
		for _, se := range resp.GetEvents() {
			ev := se.GetEvent()
			if hosts[ev.GetHost()] {
				continue // an older set of a host already taken
			}
			hosts[ev.GetHost()] = true
			set, err := detect.FingerprintsFromProto(ev.GetKeyFingerprints())
			if err == nil && merged == nil {
				merged = set
			} else if err == nil {
				err = merged.Merge(set)
			}
			if err != nil {
				fmt.Fprintf(stderr, "fetch-fingerprints: host %s seq %d: %v\n", ev.GetHost(), ev.GetSeq(), err)
				return 1
			}
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if merged == nil {
		fmt.Fprintln(stderr, "fetch-fingerprints: no host has published fingerprints (keyguard-agent publish-fingerprints)")
		return 1
	}
	if err := detect.WriteFingerprints(*out, merged); err != nil {
		fmt.Fprintln(stderr, "fetch-fingerprints:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d keys from %d hosts, %d fingerprints\n", *out, len(merged.Keys), len(hosts), len(merged.Entries))
	return 0
}
