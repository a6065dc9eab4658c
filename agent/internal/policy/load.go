package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Load reads, parses and validates the policy file at path, then checks it against the filesystem:
// every executable (selectors and allowed accessors) must exist and be a regular executable file, and
// no file may be the executable of two rules. It returns every problem found, joined with errors.Join;
// each is an *Error whose text names the file, line, column and key.
func Load(path string) (*Policy, error) {
	data, err := readPolicyFile(path)
	if err != nil {
		return nil, err
	}
	p, errs := parse(path, data)
	if p != nil {
		errs = append(errs, checkFiles(p)...)
	}
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// LoadOffline reads, parses and validates the policy file at path without checking executables
// against the filesystem (for CI, where the protected programs are not installed). Errors are as Load's.
func LoadOffline(path string) (*Policy, error) {
	data, err := readPolicyFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

func readPolicyFile(path string) ([]byte, error) {
	fail := func(msg string, err error) ([]byte, error) {
		return nil, &Error{File: path, Msg: msg, Err: err}
	}
	openErr := func(err error) ([]byte, error) {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fail("no such file; give the path of the policy file (see the example in the keyguard README)", err)
		case errors.Is(err, fs.ErrPermission):
			return fail("permission denied reading the policy file (the agent must run as root; check the file's owner and mode and its directories')", err)
		}
		return fail(fmt.Sprintf("cannot read the policy file: %v", err), err)
	}
	// Stat before opening: opening a FIFO would block.
	fi, err := os.Stat(path)
	if err != nil {
		return openErr(err)
	}
	if fi.IsDir() {
		return fail("is a directory; give the path of the policy YAML file itself", nil)
	}
	if !fi.Mode().IsRegular() {
		return fail(fmt.Sprintf("is not a regular file (%v); give the path of the policy YAML file", fi.Mode().Type()), nil)
	}
	f, err := os.Open(path)
	if err != nil {
		return openErr(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return openErr(err)
	}
	return data, nil
}

// checkFiles checks executables against the filesystem.
func checkFiles(p *Policy) []error {
	var errs []error
	w := &walker{}
	st := newStatter()
	type owner struct {
		rule *Rule
		key  string
		path string
	}
	exeOwner := map[FileID]owner{}
	for i := range p.Rules {
		r := &p.Rules[i]
		for j, path := range r.Executables {
			key := fmt.Sprintf("%s.match.executables[%d]", r.Key(), j)
			fi, _, err := executable(w, st, path)
			if err != nil {
				errs = append(errs, p.errAt(key, fmt.Sprintf("%q: %s", path, explain(err)), err))
				continue
			}
			if o, ok := exeOwner[fi.ID]; ok && o.rule != r {
				errs = append(errs, p.errAt(key, fmt.Sprintf("%q is the same file as %q of rule %q (%s); a file can be the executable of one rule only", path, o.path, o.rule.Name, o.key), nil))
				continue
			}
			exeOwner[fi.ID] = owner{r, key, path}
		}
		for j, a := range r.Allow {
			key := fmt.Sprintf("%s.allow[%d].executable", r.Key(), j)
			if _, _, err := executable(w, st, a.Executable); err != nil {
				errs = append(errs, p.errAt(key, fmt.Sprintf("%q: %s", a.Executable, explain(err)), err))
			}
		}
	}
	for _, l := range []struct {
		name string
		list []Accessor
	}{{"bpf_loaders", p.BPFLoaders}, {"sysctl_writers", p.SysctlWriters}, {"kernel_memory_readers", p.KernelMemoryReaders},
		{"key_managers", p.KeyManagers}, {"raw_disk_readers", p.RawDiskReaders}, {"package_managers", p.PackageManagers}} {
		for j, a := range l.list {
			key := fmt.Sprintf("%s[%d].executable", l.name, j)
			if _, _, err := executable(w, st, a.Executable); err != nil {
				errs = append(errs, p.errAt(key, fmt.Sprintf("%q: %s", a.Executable, explain(err)), err))
			}
		}
	}
	return errs
}

// sortErrors orders *Errors by position, keeping the relative order of equal positions.
func sortErrors(errs []error) {
	pos := func(e error) (int, int) {
		var pe *Error
		if errors.As(e, &pe) {
			return pe.Line, pe.Col
		}
		return 0, 0
	}
	for i := 1; i < len(errs); i++ {
		for j := i; j > 0; j-- {
			l1, c1 := pos(errs[j-1])
			l2, c2 := pos(errs[j])
			if l1 < l2 || l1 == l2 && c1 <= c2 {
				break
			}
			errs[j-1], errs[j] = errs[j], errs[j-1]
		}
	}
}
