// Package bootgap tells the first agent start after a reboot how long keyguard was not enforcing: the
// agent records the boot id and the time it was last alive in its state folder (pins live in kernel
// memory, so a reboot ends enforcement until the agent starts again).
package bootgap

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// aliveFile records the boot id and the last time this host's agent was seen alive, so that the first
// start after a reboot can report the time keyguard was not enforcing (pins live in kernel memory).
const aliveFile = "alive"

// AliveEvery is how often the agent refreshes aliveFile: the lapse start is known to this precision.
const AliveEvery = 10 * time.Second

func readBootID(procRoot string) (string, error) {
	b, err := os.ReadFile(procRoot + "/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// bootTime reads btime from /proc/stat.
func bootTime(procRoot string) time.Time {
	b, err := os.ReadFile(procRoot + "/stat")
	if err != nil {
		return time.Time{}
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0).UTC()
			}
		}
	}
	return time.Time{}
}

// Detect compares the recorded boot id with the current one. It returns nil when the agent ran in
// this boot before (a restart: enforcement stayed pinned) or never ran on this host.
func Detect(stateDir, procRoot string, now time.Time) (*Gap, error) {
	cur, err := readBootID(procRoot)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(stateDir + "/" + aliveFile)
	if os.IsNotExist(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("read %s: %w", aliveFile, err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return nil, fmt.Errorf("%s/%s is malformed (%q); delete it", stateDir, aliveFile, b)
	}
	if f[0] == cur {
		return nil, nil
	}
	secs, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s/%s is malformed (%q); delete it", stateDir, aliveFile, b)
	}
	return &Gap{PreviousBootID: f[0], BootID: cur, LastSeen: time.Unix(secs, 0).UTC(),
		BootTime: bootTime(procRoot), Resumed: now.UTC()}, nil
}

// WriteAlive records the current boot id and time (atomically).
func WriteAlive(stateDir, procRoot string, now time.Time) error {
	cur, err := readBootID(procRoot)
	if err != nil {
		return err
	}
	tmp := stateDir + "/" + aliveFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%s %d\n", cur, now.Unix())), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, stateDir+"/"+aliveFile)
}

// Gap is a time without keyguard: the host rebooted since the agent last ran.
type Gap struct {
	PreviousBootID string
	BootID         string
	LastSeen       time.Time // the previous boot's agent was last seen alive
	BootTime       time.Time
	Resumed        time.Time
}

// Proto is the gap as the API reports it in a health event.
func (g *Gap) Proto() *keyguardv1.ProtectionGap {
	return &keyguardv1.ProtectionGap{PreviousBootId: g.PreviousBootID, BootId: g.BootID, LapseStartTime: timestamppb.New(g.LastSeen),
		BootTime: timestamppb.New(g.BootTime), ResumeTime: timestamppb.New(g.Resumed)}
}
