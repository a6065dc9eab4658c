package cmdline

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/keyguard/keyguard/bpf/objhash"
)

// VersionText is what `version` and `--version` print: the program's version, the commit it was built
// from (with "+dirty" for uncommitted changes; "unknown" without VCS information), the Go version, and
// the SHA-256 of the BPF object built into the agent, so that an operator can tell which kernel
// programs a binary carries.
func VersionText(program, version string) string {
	commit := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			commit = rev
			if modified == "true" {
				commit += "+dirty"
			}
		}
	}
	return fmt.Sprintf("%s %s\ncommit %s\ngo %s\nbpf object sha256 %s\n", program, version, commit, runtime.Version(), objhash.SHA256)
}
