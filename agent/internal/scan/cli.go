package scan

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

// Exit codes of the scan command.
const (
	ExitClean = 0 // everything was scanned and nothing was found
	ExitFound = 1 // key material was found and everything was scanned
	ExitError = 2 // bad usage, or some file could not be scanned (findings are still reported)
)

// Summary line for the command table.
const CommandSummary = "scan files and directories (crash dumps, systemd-coredump) for private keys"

// Command is `keyguard scan`: it parses args, scans, writes findings to stdout and diagnostics to
// stderr, and returns the exit code.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("keyguard scan", flag.ContinueOnError)
	format := fl.String("format", "text", "output format: text or json")
	pub := fl.String("pubkeys", "", "comma-separated public key files (PEM public keys, certificates, JWK/JWKS, OpenSSH .pub) whose raw private material (RSA primes and d, EC scalars, Ed25519 seeds) is searched for too")
	align := fl.Int("align", 8, "alignment of stream offsets at which raw key material is searched (1 = every offset, 8x slower)")
	raw := fl.String("raw", "rsa,ec,ed25519", "raw-material searches to run for -pubkeys keys: any of rsa, ec, ed25519, or none (EC and Ed25519 cost about 2 µs per byte of random-looking data; PEM/DER/JWK findings are attributed to the keys either way)")
	verbose := fl.Bool("v", false, "log each file scanned to stderr")
	workers := fl.Int("j", 0, "files scanned at once (0 = number of CPUs)")
	fps := fl.String("fingerprints", "", "fingerprint file (keyguard fingerprint) whose keys are searched for in every encoding, with no public-key arithmetic")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: keyguard scan [-format text|json] [-fingerprints FILE] [-pubkeys file,...] [-raw rsa,ec,ed25519|none] [-align N] [-j N] [-v] PATH...\n\n"+
			"Scans files and directories (recursively; symbolic links are not followed) for private keys:\n"+
			"PEM, DER, OpenSSH and JWK private keys, and with -pubkeys the raw private material of those keys.\n"+
			"zstd, lz4, xz and gzip files (e.g. /var/lib/systemd/coredump) are decompressed; their offsets are\n"+
			"offsets in the decompressed stream.\n\n"+
			"Exit status: 0 nothing found, 1 key material found, 2 usage error or a path could not be scanned.\n\nFlags:\n")
		fl.PrintDefaults()
	}
	if code, done := cmdline.Parse(fl, args, stdout, stderr); done {
		return code
	}
	if *format != "text" && *format != "json" {
		fmt.Fprintf(stderr, "keyguard scan: -format must be text or json, not %q\n", *format)
		return ExitError
	}
	if fl.NArg() == 0 {
		fmt.Fprintln(stderr, "keyguard scan: give at least one file or directory to scan")
		fl.Usage()
		return ExitError
	}
	if *align < 1 || *align > 4096 {
		fmt.Fprintln(stderr, "keyguard scan: -align must be between 1 and 4096")
		return ExitError
	}
	det, err := newDetector(*pub, *raw, *align, *fps)
	if err != nil {
		fmt.Fprintf(stderr, "keyguard scan: %v\n", err)
		return ExitError
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	type report struct {
		Findings []Finding   `json:"findings"`
		Errors   []FileError `json:"errors"`
		Summary  Summary     `json:"summary"`
	}
	rep := report{Findings: []Finding{}, Errors: []FileError{}}
	found := func(f Finding) error {
		if *format == "json" {
			rep.Findings = append(rep.Findings, f)
			return nil
		}
		_, err := fmt.Fprintln(stdout, textLine(f))
		return err
	}
	failed := func(e *FileError) {
		if *format == "json" {
			rep.Errors = append(rep.Errors, *e)
		}
		fmt.Fprintf(stderr, "keyguard scan: %s: %s\n", e.Path, e.Message)
	}
	sum, err := New(det, log, *workers).Run(ctx, fl.Args(), found, failed)
	rep.Summary = sum
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if werr := enc.Encode(rep); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "keyguard scan: stopped: %v\n", err)
		return ExitError
	}
	fmt.Fprintf(stderr, "keyguard scan: %d files, %d bytes scanned: %d findings, %d errors\n", sum.Files, sum.Bytes, sum.Findings, sum.Errors)
	switch {
	case sum.Errors > 0:
		return ExitError
	case sum.Findings > 0:
		return ExitFound
	}
	return ExitClean
}

func textLine(f Finding) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: %s, %d bytes", f.Path, f.Offset, f.Kind, f.Length)
	if f.Key != "" {
		fmt.Fprintf(&b, ", key %s", f.Key)
	}
	if f.Compression != "" {
		fmt.Fprintf(&b, " (offset in %s-decompressed stream)", f.Compression)
	}
	return b.String()
}

// newDetector builds the detector for -pubkeys (comma-separated files), -raw and -align.
func newDetector(pub, raw string, align int, fingerprints string) (*detect.Detector, error) {
	var keys []pubkeys.Key
	if pub != "" {
		var paths []string
		for _, p := range strings.Split(pub, ",") {
			if p = strings.TrimSpace(p); p != "" {
				paths = append(paths, p)
			}
		}
		var err error
		if keys, err = pubkeys.Load(paths...); err != nil {
			return nil, err
		}
	}
	modes := detect.ModeFormats
	for _, r := range strings.Split(raw, ",") {
		switch strings.TrimSpace(r) {
		case "rsa":
			modes |= detect.ModeRSARaw
		case "ec":
			modes |= detect.ModeECRaw
		case "ed25519":
			modes |= detect.ModeEd25519Raw
		case "none", "":
		default:
			return nil, fmt.Errorf("-raw: unknown search %q (use rsa, ec, ed25519 or none)", r)
		}
	}
	var set *detect.FingerprintSet
	if fingerprints != "" {
		var err error
		if set, err = detect.LoadFingerprints(fingerprints); err != nil {
			return nil, err
		}
	}
	return detect.New(detect.Options{Keys: keys, Align: align, Modes: modes, Fingerprints: set})
}
