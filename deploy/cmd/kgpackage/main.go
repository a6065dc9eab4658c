// Command kgpackage builds keyguard's release artefacts from static binaries: the .deb packages
// (keyguard-agent, keyguard, keyguard-collector), the container image tarballs of the agent and the
// collector, and the Helm chart with appVersion = the package version (so it runs those images).
// `make packages` builds the binaries into out/bin and runs it:
//
//	go run ./deploy/cmd/kgpackage -bin out/bin -out out [-version 1.2.3] [-only deb|oci|chart]
//	    [-bin-arm64 out/bin-arm64 -busybox-arm64 CACHE/kernels/6.12-arm64/busybox]
//
// With -bin-arm64 it also writes the arm64 .deb packages (man pages from the -bin binaries, which run
// here) and makes the images multi-arch (an OCI image index of an amd64 and an arm64 manifest).
//
//	go run ./deploy/cmd/kgpackage -print-version
//
// Without -version the version comes from `git describe --tags --always --dirty` (see deb.Version).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyguard/keyguard/deploy/deb"
	"github.com/keyguard/keyguard/deploy/oci"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kgpackage:", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "out/bin", "folder with the static binaries keyguard-agent, keyguard, keyguard-collector")
	out := flag.String("out", "out", "output folder")
	version := flag.String("version", "", "package version (default: from git describe)")
	only := flag.String("only", "", `build only "deb", "oci" or "chart"`)
	repo := flag.String("repository", "keyguard", "image repository prefix")
	cacerts := flag.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle for the images (Debian ca-certificates)")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox for the agent image (Debian busybox-static)")
	binArm64 := flag.String("bin-arm64", "", "folder with the linux/arm64 binaries: also build arm64 packages and multi-arch images")
	busyboxArm64 := flag.String("busybox-arm64", "", "static arm64 busybox for the arm64 agent image (testvm/setup.sh puts Debian's beside the arm64 kernel)")
	root := flag.String("root", ".", "module root (deploy/systemd and the example policy are read from it)")
	printVersion := flag.Bool("print-version", false, "print the version and exit (for -ldflags -X main.version)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *only != "" && *only != "deb" && *only != "oci" && *only != "chart" {
		return fmt.Errorf("-only %q: want deb, oci or chart", *only)
	}
	mtime, describe, err := gitInfo(*root)
	if err != nil && *version == "" {
		return fmt.Errorf("%w (or pass -version)", err)
	}
	if mtime.IsZero() {
		mtime = time.Now()
	}
	v := *version
	if v == "" {
		if v, err = deb.Version(describe, mtime); err != nil {
			return err
		}
	}
	if *printVersion {
		fmt.Println(v)
		return nil
	}
	var made []string
	if *only == "" || *only == "chart" {
		p, err := packageChart(filepath.Join(*root, "deploy/helm/keyguard"), v, *out)
		if err != nil {
			return err
		}
		made = append(made, p)
	}
	if *only == "" || *only == "deb" {
		dc := deb.Config{Version: v, BinDir: *bin, SystemdDir: filepath.Join(*root, "deploy/systemd"),
			PolicyFile: filepath.Join(*root, "agent/internal/policy/testdata/example.yaml"), OutDir: *out, MTime: mtime}
		paths, err := deb.Build(dc)
		if err != nil {
			return err
		}
		made = append(made, paths...)
		if *binArm64 != "" {
			dc.Arch, dc.BinDir, dc.HelpBinDir = "arm64", *binArm64, *bin
			if paths, err = deb.Build(dc); err != nil {
				return err
			}
			made = append(made, paths...)
		}
	}
	if *only == "" || *only == "oci" {
		oc := oci.Config{Version: v, Repository: *repo, BinDir: *bin, CACerts: *cacerts, Busybox: *busybox, OutDir: *out, MTime: mtime}
		if *binArm64 != "" {
			if *busyboxArm64 == "" {
				return errors.New("-bin-arm64 needs -busybox-arm64 (an arm64 busybox-static for the agent image)")
			}
			oc.More = []oci.Platform{{Arch: "arm64", BinDir: *binArm64, Busybox: *busyboxArm64}}
		}
		paths, err := oci.Build(oc)
		if err != nil {
			return err
		}
		made = append(made, paths...)
	}
	for _, p := range made {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		fmt.Printf("%s  %.1f MB\n", p, float64(st.Size())/1e6)
	}
	return nil
}

// gitInfo returns the HEAD commit's time (the files' timestamp, for reproducible output) and
// `git describe --tags --always --dirty`.
func gitInfo(root string) (time.Time, string, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = root
		b, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return strings.TrimSpace(string(b)), err
	}
	ts, err := git("log", "-1", "--format=%ct")
	if err != nil {
		return time.Time{}, "", err
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("git commit time %q: %w", ts, err)
	}
	d, err := git("describe", "--tags", "--always", "--dirty")
	return time.Unix(secs, 0).UTC(), d, err
}
