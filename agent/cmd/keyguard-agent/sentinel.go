package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	"github.com/keyguard/keyguard/agent/internal/sentinel"
	"github.com/keyguard/keyguard/deploy/cmdline"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// sentinelCmd is `keyguard-agent sentinel`: watch dump directories for key material (package
// sentinel) and report findings to the collector, or as protojson lines without one.
func sentinelCmd(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-agent sentinel", "-fingerprints FILE [flags]",
		"Watches dump folders, scans each complete file (compressed ones too) for the keys of the fingerprint file, and reports each finding.")
	watch := fs.String("watch", "/var/lib/systemd/coredump,/var/crash", "comma-separated directories to watch (with subdirectories)")
	fps := fs.String("fingerprints", "", "fingerprint file (keyguard fingerprint) of the keys to look for")
	pub := fs.String("pubkeys", "", "comma-separated public key files whose raw material is also searched for with public-key arithmetic (slow; prefer -fingerprints)")
	state := fs.String("state", "/var/lib/keyguard/sentinel-state.json", "state file: files already scanned are not scanned again after a restart")
	quarantine := fs.String("quarantine", "", "move files with findings into this directory (root only; outside the watched directories)")
	rescan := fs.Duration("rescan", time.Minute, "period of the directory walk (finds files inotify cannot see: network mounts, overflows)")
	settle := fs.Duration("settle", 5*time.Second, "a file found by the walk is scanned once unmodified this long")
	reload := fs.Duration("reload", 10*time.Second, "how often the -fingerprints file is checked for a newer version (keyguard fetch-fingerprints -every rewrites it); 0: never")
	events := fs.String("events", "-", "without -collector: file to append findings to as protojson lines (- for stdout)")
	var exp export.Config
	fs.StringVar(&exp.Collector, "collector", "", "collector ingest address host:port")
	fs.StringVar(&exp.CAFile, "collector-ca", "/etc/keyguard/collector-ca.pem", "CA bundle that signs the collector's certificate")
	fs.StringVar(&exp.CertFile, "cert", "/etc/keyguard/agent.pem", "this host's client certificate")
	fs.StringVar(&exp.KeyFile, "key", "/etc/keyguard/agent-key.pem", "this host's client key")
	fs.StringVar(&exp.SpoolDir, "spool-dir", "/var/lib/keyguard/sentinel-spool", "durable spool of events not yet acknowledged by the collector")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	loaded, _ := os.Stat(*fps) // before reading it: a newer version written meanwhile is reloaded
	cfg, err := sentinelConfig(*watch, *fps, *pub)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard-agent sentinel: %v\n", err)
		return 2
	}
	cfg.StateFile, cfg.QuarantineDir, cfg.Rescan, cfg.Settle, cfg.Log = *state, *quarantine, *rescan, *settle, log
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	if exp.Collector != "" {
		exp.AgentVersion = version
		p, err := export.New(exp, log)
		if err != nil {
			fmt.Fprintf(stderr, "keyguard-agent sentinel: %v\n", err)
			return 2
		}
		defer p.Close()
		wg.Add(1)
		go func() { defer wg.Done(); p.Run(ctx) }()
		cfg.Submit = func(ev *keyguardv1.Event) bool { return p.Submit(ev, export.PriorityOf(ev)) }
	} else {
		w := stdout
		if *events != "-" {
			f, err := os.OpenFile(*events, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				fmt.Fprintf(stderr, "keyguard-agent sentinel: %v\n", err)
				return 2
			}
			defer f.Close()
			w = f
		}
		var mu sync.Mutex
		cfg.Submit = func(ev *keyguardv1.Event) bool {
			b, err := protojson.Marshal(ev)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				_, err = fmt.Fprintf(w, "%s\n", b)
			}
			return err == nil
		}
	}
	s, err := sentinel.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard-agent sentinel: %v\n", err)
		return 2
	}
	if *reload > 0 && *fps != "" {
		wg.Add(1)
		go func() { defer wg.Done(); reloadKeys(ctx, s, loaded, *reload, *watch, *fps, *pub, log) }()
	}
	err = s.Run(ctx)
	stop()
	wg.Wait()
	if err != nil {
		fmt.Fprintf(stderr, "keyguard-agent sentinel: %v\n", err)
		return 1
	}
	return 0
}

// sentinelConfig builds the detector from the fingerprint and public key files.
func sentinelConfig(watch, fps, pub string) (sentinel.Config, error) {
	var cfg sentinel.Config
	for _, d := range strings.Split(watch, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.Dirs = append(cfg.Dirs, d)
		}
	}
	opts := detect.Options{Modes: detect.ModeFormats}
	cfg.KeyFingerprints = map[string]string{}
	if fps != "" {
		set, err := detect.LoadFingerprints(fps)
		if err != nil {
			return cfg, err
		}
		opts.Fingerprints = set
		keys, err := set.PublicKeys()
		if err != nil {
			return cfg, err
		}
		for _, k := range keys {
			cfg.KeyFingerprints[k.Name] = k.Fingerprint
		}
	}
	if pub != "" {
		keys, err := pubkeys.Load(strings.Split(pub, ",")...)
		if err != nil {
			return cfg, err
		}
		opts.Keys, opts.Modes = keys, detect.ModeAll
		for _, k := range keys {
			cfg.KeyFingerprints[k.Name] = k.Fingerprint
		}
	}
	det, err := detect.New(opts)
	cfg.Detector = det
	return cfg, err
}

// reloadKeys checks the fingerprint file every period and, when it was replaced or changed, gives
// the sentinel a detector built from the new version. last is the file as it was before it was
// first loaded.
func reloadKeys(ctx context.Context, s *sentinel.Sentinel, last os.FileInfo, period time.Duration, watch, fps, pub string, log *slog.Logger) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(fps)
		if err != nil || (last != nil && os.SameFile(fi, last) && fi.ModTime().Equal(last.ModTime()) && fi.Size() == last.Size()) {
			continue
		}
		cfg, err := sentinelConfig(watch, fps, pub)
		if err != nil {
			log.Error("sentinel: the new fingerprint file is not usable; scanning on with the previous one", "file", fps, "error", err)
			last = fi
			continue
		}
		last = fi
		s.SetKeys(cfg.Detector, cfg.KeyFingerprints)
		log.Info("sentinel: fingerprint file reloaded", "file", fps, "keys", len(cfg.KeyFingerprints))
	}
}
