package daemon

import (
	"context"
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

// aliveEvery is how often the agent refreshes aliveFile: the lapse start is known to this precision.
const aliveEvery = 10 * time.Second

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

// detectGap compares the recorded boot id with the current one. It returns nil when the agent ran in
// this boot before (a restart: enforcement stayed pinned) or never ran on this host.
func detectGap(stateDir, procRoot string, now time.Time) (*gap, error) {
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
	return &gap{PreviousBootID: f[0], BootID: cur, LastSeen: time.Unix(secs, 0).UTC(),
		BootTime: bootTime(procRoot), Resumed: now.UTC()}, nil
}

// writeAlive records the current boot id and time (atomically).
func writeAlive(stateDir, procRoot string, now time.Time) error {
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

// keepAlive refreshes the alive file until ctx ends.
func (a *Agent) keepAlive(ctx context.Context) {
	t := time.NewTicker(aliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := writeAlive(a.cfg.StateDir, "/proc", now); err != nil {
				a.log.Warn("could not record that the agent is alive; a later reboot gap will be reported less precisely", "error", err)
			}
		}
	}
}

// gap is a time without keyguard: the host rebooted since the agent last ran.
type gap struct {
	PreviousBootID string
	BootID         string
	LastSeen       time.Time // the previous boot's agent was last seen alive
	BootTime       time.Time
	Resumed        time.Time
}

func (g *gap) proto() *keyguardv1.ProtectionGap {
	return &keyguardv1.ProtectionGap{PreviousBootId: g.PreviousBootID, BootId: g.BootID, LapseStartTime: timestamppb.New(g.LastSeen),
		BootTime: timestamppb.New(g.BootTime), ResumeTime: timestamppb.New(g.Resumed)}
}
