package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keyguard/keyguard/testvm/initramfs"
)

const (
	initPackage = "./testvm/guest/init"
	demoBinary  = "keyguard-demo"
	// systemdDemoBinary is what the systemd image runs in -demo mode.
	systemdDemoBinary = "keyguard-demo-systemd"
)

type suite struct {
	name string // file-system friendly: import path relative to the module, '/' -> '-'
	pkg  goPackage
}

type image struct {
	path      string
	size      int64
	suites    []suite
	bins      []string // names in /bin
	buildTime time.Duration
}

// demoBin is the demo's main package name: keyguard-demo, or keyguard-demo-systemd with -systemd.
func demoBin(cfg *config) string {
	if cfg.systemd {
		return systemdDemoBinary
	}
	return demoBinary
}

// buildImage compiles the guest init, the suites and the bins, and writes the initramfs.
func buildImage(ctx context.Context, log *slog.Logger, cfg *config, dir string) (*image, error) {
	start := time.Now()
	img := &image{}
	modPath, err := modulePath(ctx, cfg.root)
	if err != nil {
		return nil, err
	}
	if img.suites, err = selectSuites(ctx, cfg, modPath); err != nil {
		return nil, err
	}
	bins, err := selectBins(ctx, cfg)
	if err != nil {
		return nil, err
	}
	for _, p := range bins {
		img.bins = append(img.bins, path.Base(p.ImportPath))
	}
	if err := compileAll(ctx, cfg, dir, buildJobs(cfg, dir, img.suites, bins)); err != nil {
		return nil, err
	}
	compileTime := time.Since(start)

	img.path = filepath.Join(dir, "initramfs.cpio")
	if cfg.compress == "gzip" {
		img.path += ".gz"
	}
	if cfg.systemd {
		img.path = filepath.Join(dir, "initrd-systemd")
		if err := writeSystemdImage(cfg, img, dir); err != nil {
			return nil, err
		}
	} else if err := writeImage(img, dir, cfg.compress, guestBusybox(cfg)); err != nil {
		return nil, err
	}
	st, err := os.Stat(img.path)
	if err != nil {
		return nil, err
	}
	img.size = st.Size()
	img.buildTime = time.Since(start)
	log.Debug("build", "compile", compileTime, "pack", img.buildTime-compileTime)
	return img, nil
}

// selectSuites lists the test packages of the suites file that -suites selects (none with -demo).
func selectSuites(ctx context.Context, cfg *config, modPath string) ([]suite, error) {
	if cfg.demo {
		return nil, nil
	}
	paths, err := readList(inRoot(cfg.root, cfg.suitesFile))
	if err != nil {
		return nil, err
	}
	pkgs, err := listPackages(ctx, cfg.root, paths)
	if err != nil {
		return nil, err
	}
	var suites []suite
	seen := map[string]bool{}
	for _, p := range pkgs {
		if p.Err != "" {
			return nil, fmt.Errorf("%s: %s: %s", cfg.suitesFile, p.ImportPath, p.Err)
		}
		if p.Tests == 0 {
			return nil, fmt.Errorf("%s: %s has no test files", cfg.suitesFile, p.ImportPath)
		}
		if cfg.suiteFilter != nil && !cfg.suiteFilter.MatchString(p.ImportPath) {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, modPath), "/")
		name = strings.ReplaceAll(name, "/", "-")
		if seen[name] {
			continue
		}
		seen[name] = true
		suites = append(suites, suite{name: name, pkg: p})
	}
	if len(suites) == 0 {
		return nil, fmt.Errorf("no suite to run: %s is empty or -suites matches nothing", cfg.suitesFile)
	}
	return suites, nil
}

// selectBins lists the main packages of the bins file; their base names must differ.
func selectBins(ctx context.Context, cfg *config) ([]goPackage, error) {
	binPaths, err := readList(inRoot(cfg.root, cfg.binsFile))
	if err != nil {
		return nil, err
	}
	bins, err := listPackages(ctx, cfg.root, binPaths)
	if err != nil {
		return nil, err
	}
	seenBin := map[string]string{}
	for _, p := range bins {
		if p.Err != "" {
			return nil, fmt.Errorf("%s: %s: %s", cfg.binsFile, p.ImportPath, p.Err)
		}
		if p.Name != "main" {
			return nil, fmt.Errorf("%s: %s is package %s, not a main package", cfg.binsFile, p.ImportPath, p.Name)
		}
		name := path.Base(p.ImportPath)
		if other, dup := seenBin[name]; dup {
			return nil, fmt.Errorf("%s: %s and %s would both be /bin/%s", cfg.binsFile, other, p.ImportPath, name)
		}
		seenBin[name] = p.ImportPath
	}
	if want := demoBin(cfg); cfg.demo && seenBin[want] == "" {
		return nil, fmt.Errorf("-demo needs a main package named %s in %s", want, cfg.binsFile)
	}
	return bins, nil
}

// buildJob is one go build or go test -c.
type buildJob struct {
	args []string
	desc string
}

// buildJobs lists what the image needs compiled: the guest init, the bins, the suites' test binaries and,
// with -systemd, the packaged binaries.
func buildJobs(cfg *config, dir string, suites []suite, bins []goPackage) []buildJob {
	jobs := []buildJob{{[]string{"build", "-o", filepath.Join(dir, "init"), initPackage}, "guest init"}}
	for _, p := range bins {
		jobs = append(jobs, buildJob{[]string{"build", "-o", filepath.Join(dir, "bin", path.Base(p.ImportPath)), p.ImportPath}, p.ImportPath})
	}
	for _, s := range suites {
		jobs = append(jobs, buildJob{[]string{"test", "-c", "-o", filepath.Join(dir, "tests", s.name+".test"), s.pkg.ImportPath}, s.pkg.ImportPath})
	}
	if cfg.systemd {
		for _, p := range packagedBinaries {
			jobs = append(jobs, buildJob{[]string{"build", "-o", filepath.Join(dir, "pkgbin", path.Base(p)), p}, p})
		}
	}
	return jobs
}

// compileAll runs the jobs, two go commands at a time (the build cache is shared).
func compileAll(ctx context.Context, cfg *config, dir string, jobs []buildJob) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 2)
	)
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			// No -trimpath: the compiled packages then come from the same build cache entries as
			// `make test` (CGO_ENABLED=0 there too), which CI runs first.
			args := append([]string{j.args[0]}, "-ldflags=-s -w")
			args = append(args, j.args[1:]...)
			cmd := exec.CommandContext(ctx, goTool(), args...)
			cmd.Dir = cfg.root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+cfg.arch)
			if out, err := cmd.CombinedOutput(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("building %s: %w\n%s", j.desc, err, out))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// hostBusybox is Debian's busybox-static, copied into every amd64 guest as /bin/busybox.
const hostBusybox = "/bin/busybox"

// guestBusybox is the guest's /bin/busybox: the host's on amd64, else the one testvm/setup.sh put
// beside the kernel (Debian's busybox-static of that architecture).
func guestBusybox(cfg *config) string {
	if cfg.arch == "amd64" {
		return hostBusybox
	}
	return filepath.Join(cfg.cache, "kernels", cfg.kernels[0], "busybox")
}

func writeImage(img *image, dir, compress, busybox string) (err error) {
	f, err := os.Create(img.path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	var w *initramfs.Writer
	if compress == "gzip" {
		if w, err = initramfs.NewGzipWriter(bw, gzip.BestSpeed); err != nil {
			return err
		}
	} else {
		w = initramfs.NewWriter(bw)
	}
	add := []error{
		w.CharDev("dev/console", 0o600, 5, 1),
		w.CopyFile("init", filepath.Join(dir, "init")),
		w.Dir("bin", 0o755),
	}
	for _, b := range img.bins {
		add = append(add, w.CopyFile("bin/"+b, filepath.Join(dir, "bin", b)))
	}
	// A static busybox gives the guests a real sh and sysctl (attacks as an operator would type them).
	if _, err := os.Stat(busybox); err != nil {
		return fmt.Errorf("%s: %w (install busybox-static: make deps)", busybox, err)
	}
	add = append(add, w.CopyFile("bin/busybox", busybox))
	var manifest bytes.Buffer
	manifest.WriteString("# suites in run order, written by testvm/cmd/vmtest\n")
	for _, s := range img.suites {
		manifest.WriteString(s.name + "\n")
		add = append(add, w.CopyFile(path.Join("tests", s.name, s.name+".test"), filepath.Join(dir, "tests", s.name+".test")))
		// Tests expect to run in their package folder with testdata/ beside them, as under go test.
		if td := filepath.Join(s.pkg.Dir, "testdata"); isDir(td) {
			add = append(add, w.CopyTree(path.Join("tests", s.name, "testdata"), td))
		}
	}
	add = append(add, w.File("tests/manifest", 0o644, manifest.Bytes()), w.Close())
	if err := errors.Join(add...); err != nil {
		return fmt.Errorf("writing the initramfs: %w", err)
	}
	return bw.Flush()
}

func inRoot(root, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, p)
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func modulePath(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "list", "-m", "-f", "{{.Path}}")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}
