package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A real unix socket: the request reaches the handler with the caller's pid, the answer comes back,
// and the after function runs once the answer is out.
func TestServeAnswersRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the control socket answers root only; run as root")
	}
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	afterRan := make(chan struct{})
	gotPID := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, path, func(req Request, peerPID int) (Response, func()) {
			gotPID <- peerPID
			if req.Op != "status" {
				return Response{Error: "unknown op " + req.Op}, nil
			}
			return Response{Status: &Status{Version: "v-test"}}, func() { close(afterRan) }
		}, nil)
	}()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(path); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("socket mode %v: want no group or other access", st.Mode().Perm())
	}
	resp, err := Call(path, Request{Op: "status"})
	if err != nil || resp.Status == nil || resp.Status.Version != "v-test" {
		t.Fatalf("Call(status) = %+v, %v", resp, err)
	}
	if pid := <-gotPID; pid != os.Getpid() {
		t.Errorf("peer pid %d, want %d", pid, os.Getpid())
	}
	select {
	case <-afterRan:
	case <-time.After(5 * time.Second):
		t.Fatal("after function did not run")
	}
	if _, err := Call(path, Request{Op: "nope"}); err == nil || err.Error() != "agent: unknown op nope" {
		t.Errorf("Call(nope) error = %v", err)
	}
	<-gotPID
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Serve returned %v after cancel", err)
	}
}
