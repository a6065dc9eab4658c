package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/scan"
	"github.com/keyguard/keyguard/deploy/cmdline"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// publishFingerprints is `keyguard-agent publish-fingerprints`: derive the fingerprints of key files
// under the deployment key and send them to the collector as one KeyFingerprints event, waiting
// for the collector's acknowledgement. The export uses its own spool, so it needs an identity
// (certificate) of its own when the agent daemon runs on the same host: two spools numbering
// events for one host identity would collide at the collector.
func publishFingerprints(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-agent publish-fingerprints", "-collector HOST:PORT [flags] KEYFILE...",
		"Sends the fingerprints of each private key file, under the deployment key, to the collector as one event\n"+
			"and waits for its acknowledgement. It uses its own spool and needs an identity (certificate) of its own\n"+
			"where the agent daemon runs: two spools numbering events for one host would collide at the collector.")
	keyPath := fs.String("deployment-key", "/etc/keyguard/fingerprint-deployment.key", "the deployment's fingerprint key (keyguard fingerprint -deployment-key created it)")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the collector's acknowledgement")
	var exp export.Config
	fs.StringVar(&exp.Collector, "collector", "", "collector ingest address host:port")
	fs.StringVar(&exp.CAFile, "collector-ca", "/etc/keyguard/collector-ca.pem", "CA bundle that signs the collector's certificate")
	fs.StringVar(&exp.CertFile, "cert", "/etc/keyguard/fingerprints.pem", "client certificate of the publisher (not the daemon's: see -h)")
	fs.StringVar(&exp.KeyFile, "key", "/etc/keyguard/fingerprints-key.pem", "its key")
	fs.StringVar(&exp.SpoolDir, "spool-dir", "/var/lib/keyguard/fingerprints-spool", "spool of the publisher")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if exp.Collector == "" || fs.NArg() == 0 {
		return cmdline.Usagef(fs, stderr, "give -collector and at least one private key file")
	}
	deploy, _, err := scan.LoadDeploymentKey(*keyPath, false)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard-agent publish-fingerprints: %v\n", err)
		return 2
	}
	fp, err := detect.NewFingerprinter(deploy)
	if err == nil {
		for _, p := range fs.Args() {
			var data []byte
			if data, err = os.ReadFile(p); err == nil {
				_, err = fp.AddKeyFile(p, data)
			}
			if err != nil {
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "keyguard-agent publish-fingerprints: %v\n", err)
		return 2
	}
	set := fp.Set()
	if err := sendAcked(ctx, exp, log, &keyguardv1.Event{Kind: &keyguardv1.Event_KeyFingerprints{KeyFingerprints: set.Proto()}}, *timeout); err != nil {
		fmt.Fprintf(stderr, "keyguard-agent publish-fingerprints: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "published %d fingerprints of %d keys\n", len(set.Entries), len(set.Keys))
	return 0
}

// sendAcked sends one event through a fresh export pipeline and waits until the collector has
// acknowledged it.
func sendAcked(ctx context.Context, exp export.Config, log *slog.Logger, ev *keyguardv1.Event, timeout time.Duration) error {
	exp.AgentVersion = version
	p, err := export.New(exp, log)
	if err != nil {
		return err
	}
	var seq, acked atomic.Uint64
	done := make(chan struct{})
	var once sync.Once
	check := func() {
		if s := seq.Load(); s != 0 && acked.Load() >= s {
			once.Do(func() { close(done) })
		}
	}
	p.SetSpoolHook(func(s uint64, _ time.Time) { seq.Store(s); check() })
	p.SetAckHook(func(a uint64) { acked.Store(a); check() })
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	if !p.Submit(ev, export.PriorityOf(ev)) {
		cancel()
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	cancel()
	<-ran
	p.Close()
	select {
	case <-done:
		return nil
	default:
		return fmt.Errorf("the collector did not acknowledge the fingerprints within %v (they stay in the spool %s; run again to retry)", timeout, exp.SpoolDir)
	}
}
