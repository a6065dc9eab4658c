package loader

import (
	"testing"

	"github.com/cilium/ebpf"
)

// Every program of the embedded object is attached, fork inheritance first, each of a type attach knows.
func TestProgramsFromSpec(t *testing.T) {
	spec, _, err := DefaultConfig().spec()
	if err != nil {
		t.Fatal(err)
	}
	names := programs(spec)
	if len(names) != len(spec.Programs) || len(names) < 20 {
		t.Fatalf("%d programs listed, the object has %d: %v", len(names), len(spec.Programs), names)
	}
	if names[0] != "kg_task_alloc" || names[1] != "kg_fork_copied" {
		t.Errorf("first programs %v, want kg_task_alloc, kg_fork_copied (fork inheritance first)", names[:2])
	}
	seen := map[string]bool{}
	for _, n := range names {
		p := spec.Programs[n]
		if p == nil || seen[n] {
			t.Fatalf("program %q listed twice or not in the object", n)
		}
		seen[n] = true
		if p.Type != ebpf.LSM && p.Type != ebpf.Tracing {
			t.Errorf("program %s has type %v, which attach does not handle", n, p.Type)
		}
	}
}
