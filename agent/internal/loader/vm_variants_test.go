package loader

import (
	"encoding/json"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// The agent's probe picks each program variant the kernel calls for. The expectation comes from
// /proc/kallsyms, not from the BTF the probe reads; the kernfs_node parent variant is checked by its
// effect (TestCgroupRule protects a process in a cgroup below the protected one).
func TestKernelVariants(t *testing.T) {
	vmenv.Require(t)
	out, err := exec.Command(guesttest.AgentBin, "probe", "-json").Output()
	if err != nil {
		t.Fatalf("keyguard-agent probe: %v: %s", err, out)
	}
	var r struct {
		Variants struct {
			KernfsParent  string `json:"kernfs_parent"`
			DumpGuard     string `json:"dump_guard"`
			ProcOpenGuard string `json:"proc_open_guard"`
			BPFHookArgs   int    `json:"bpf_hook_args"`
			Digest        string `json:"digest"`
			FSVerity      bool   `json:"fsverity_kfunc"`
		} `json:"variants"`
		Missing []any `json:"missing"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	v := r.Variants
	t.Logf("kernel %s: variants %+v", os.Getenv("KEYGUARD_KERNEL"), v)
	if len(r.Missing) != 0 {
		t.Errorf("probe says the kernel lacks %v", r.Missing)
	}
	syms := guesttest.Kallsyms(t, "dump_emit", "bpf_task_from_pid", "ima_file_hash", "bpf_get_fsverity_digest")
	if want := map[bool]string{true: "bpf_ima_file_hash", false: "none"}[syms["ima_file_hash"]]; v.Digest != want {
		t.Errorf("executable digest %q, want %q (ima_file_hash in kallsyms: %v)", v.Digest, want, syms["ima_file_hash"])
	}
	if v.FSVerity != syms["bpf_get_fsverity_digest"] {
		t.Errorf("fs-verity kfunc %v, bpf_get_fsverity_digest in kallsyms: %v", v.FSVerity, syms["bpf_get_fsverity_digest"])
	}
	if want := map[bool]string{true: "fentry/dump_emit", false: "block"}[syms["dump_emit"]]; v.DumpGuard != want {
		t.Errorf("dump guard %q, want %q (dump_emit in kallsyms: %v)", v.DumpGuard, want, syms["dump_emit"])
	}
	if want := map[bool]string{true: "lsm/file_open+bpf_task_from_pid", false: "none"}[syms["bpf_task_from_pid"]]; v.ProcOpenGuard != want {
		t.Errorf("proc open guard %q, want %q (bpf_task_from_pid in kallsyms: %v)", v.ProcOpenGuard, want, syms["bpf_task_from_pid"])
	}
	if v.KernfsParent != "parent" && v.KernfsParent != "__parent" {
		t.Errorf("kernfs_node parent field %q", v.KernfsParent)
	}
}

// Without the dump_emit guard (a kernel where it cannot attach, simulated with -no-dump-guard) nothing
// keeps a redact rule's dump from a foreign destination, so it is blocked: no bytes, a "blocked" event.
func TestDumpRedactWithoutGuardIsBlocked(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	guesttest.StopAgent()
	defer func() {
		guesttest.StopAgent()
		if err := guesttest.StartAgent(); err != nil {
			t.Fatalf("restart the agent: %v", err)
		}
	}()
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	guesttest.SetCorePattern(t, "|/bin/testproc corecount "+cores+"/pipe.%p")
	if err := guesttest.StartAgent("-no-dump-guard"); err != nil {
		t.Fatal(err)
	}
	before := guesttest.Count()
	ws := guesttest.Crash(t, guesttest.VictimRedact, "-sig", "SEGV", "-keys", guesttest.TestKeysDir)
	if !ws.Signaled() || ws.CoreDump() {
		t.Fatalf("exit status %v: want death by signal without a core", ws)
	}
	ev := guesttest.WaitEventAfter(t, before, "core_dump event", func(e guesttest.Event) bool {
		return e.Kind == "core_dump" && e.Rule == "redactor" && e.Dump != nil
	})
	if ev.Dump.Action != "blocked" {
		t.Errorf("dump action %q, want blocked", ev.Dump.Action)
	}
	time.Sleep(300 * time.Millisecond) // a pipe helper would have started by now
	if ents, _ := os.ReadDir(cores); len(ents) != 0 {
		t.Fatalf("dump bytes left: %v", guesttest.Names(ents))
	}
}
