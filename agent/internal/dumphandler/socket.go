package dumphandler

import (
	"os"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
)

// socketReceivers maps the core-dump sockets of known receivers to the same receiver's pipe mode.
// A socket receiver reads the crashing process's credentials from the connection, which only the
// kernel can make, so keyguard's handler (always installed as a pipe) hands dumps on through the pipe
// entry point of the same program, which stores them in the same place: systemd-coredump forwards
// what it gets on stdin to systemd-coredump.socket.
var socketReceivers = map[string][]string{
	"/run/systemd/coredump": {"/usr/lib/systemd/systemd-coredump", "/lib/systemd/systemd-coredump"},
}

// systemdCoredumpArgs are systemd-coredump's pipe-mode arguments (Debian's 50-coredump.conf, plus %F).
const systemdCoredumpArgs = " %P %u %g %s %t 9223372036854775808 %h %d %F"

// viaPipe turns a socket destination of a known receiver into its pipe mode; anything else is
// returned unchanged (passOn refuses sockets it does not know).
func viaPipe(next corepattern.Parsed, v corepattern.Values, receivers map[string][]string) corepattern.Parsed {
	if !next.Socket {
		return next
	}
	for _, helper := range receivers[next.Path] {
		if _, err := os.Stat(helper); err != nil {
			continue
		}
		if p, err := corepattern.Expand("|"+helper+systemdCoredumpArgs, v); err == nil {
			return p
		}
	}
	return next
}
