package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/deploy/cmdline"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func init() {
	register("fetch-fingerprints", "write the key fingerprints hosts published to the collector into a file (for scan and the sentinel)", fetchFingerprints)
}

// fetchFingerprints reads every KeyFingerprints event at the collector, newest first, keeps the
// newest set of each host, merges them (one deployment key) and writes a fingerprint file; with
// -every it does so periodically, replacing the file (atomically) only when the set changed, so a
// sentinel reading it (-reload) picks up keys the signing hosts' agents published.
func fetchFingerprints(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard fetch-fingerprints", "-o FILE [flags]",
		"Writes the newest key fingerprints each host published to the collector, merged, into FILE.")
	var conn collectorFlags
	conn.register(fs)
	out := fs.String("o", "", "fingerprint file to write (mode 0600)")
	every := fs.Duration("every", 0, "fetch again at this period until stopped, rewriting FILE when the set changed (0: once)")
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
	var last []byte
	for {
		merged, hosts, err := fetchMerged(ctx, client, conn.timeout)
		if err == nil {
			var changed bool
			if changed, last, err = writeIfChanged(*out, merged, last); err == nil && changed {
				fmt.Fprintf(stdout, "%s: %d keys from %d hosts, %d fingerprints\n", *out, len(merged.Keys), hosts, len(merged.Entries))
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "fetch-fingerprints:", err)
			if *every == 0 {
				return 1
			}
		}
		if *every == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(*every):
		}
	}
}

// fetchMerged returns the newest set of each host, merged, and the number of hosts.
func fetchMerged(ctx context.Context, client pb.QueryServiceClient, timeout time.Duration) (*detect.FingerprintSet, int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req := &pb.ListEventsRequest{Filter: &pb.EventFilter{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_KEY_FINGERPRINTS}}, NewestFirst: true, PageSize: 1000}
	var merged *detect.FingerprintSet
	hosts := map[string]bool{}
	for {
		resp, err := client.ListEvents(ctx, req)
		if err != nil {
			return nil, 0, errors.New(status.Convert(err).Message())
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
				return nil, 0, fmt.Errorf("host %s seq %d: %w", ev.GetHost(), ev.GetSeq(), err)
			}
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if merged == nil {
		return nil, 0, errors.New("no host has published fingerprints (keyguard-agent with fingerprint_deployment_key, or keyguard-agent publish-fingerprints)")
	}
	return merged, len(hosts), nil
}

// writeIfChanged writes set to path (a temporary file renamed over it) unless its encoding equals
// last; it returns whether it wrote and the encoding.
func writeIfChanged(path string, set *detect.FingerprintSet, last []byte) (bool, []byte, error) {
	b, err := json.Marshal(set)
	if err != nil {
		return false, last, err
	}
	if bytes.Equal(b, last) {
		return false, last, nil
	}
	tmp := path + ".tmp"
	if err := detect.WriteFingerprints(tmp, set); err != nil {
		return false, last, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, last, fmt.Errorf("replace %s: %w", path, err)
	}
	return true, b, nil
}
