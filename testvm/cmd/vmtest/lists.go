package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// readList returns the entries of a list file: one per line, first word only, '#' starts a comment.
func readList(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if f := strings.Fields(line); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out, sc.Err()
}

func moduleRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("run vmtest inside the keyguard module")
	}
	return filepath.Dir(gomod), nil
}

// archOf is the GOARCH of a kernel series of testvm/kernels.txt: arm64 for "6.12-arm64", else amd64.
func archOf(series string) string {
	if strings.HasSuffix(series, "-arm64") {
		return "arm64"
	}
	return "amd64"
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// goPackage is what vmtest needs from `go list`.
type goPackage struct {
	ImportPath, Name, Dir string
	Tests                 int
	Err                   string
}

// listPackages resolves import paths (or ./relative paths) with go list, in order.
func listPackages(ctx context.Context, root string, paths []string) ([]goPackage, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	args := append([]string{"list", "-e", "-f", "{{.ImportPath}}\t{{.Name}}\t{{.Dir}}\t{{len .TestGoFiles}}\t{{len .XTestGoFiles}}\t{{if .Error}}{{.Error}}{{end}}"}, paths...)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w\n%s", strings.Join(paths, " "), err, stderr.String())
	}
	var pkgs []goPackage
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		f := strings.SplitN(line, "\t", 6)
		if len(f) != 6 {
			return nil, fmt.Errorf("go list: unexpected line %q", line)
		}
		var t, xt int
		fmt.Sscan(f[3], &t)
		fmt.Sscan(f[4], &xt)
		pkgs = append(pkgs, goPackage{ImportPath: f[0], Name: f[1], Dir: f[2], Tests: t + xt, Err: strings.ReplaceAll(f[5], "\n", " ")})
	}
	return pkgs, nil
}
