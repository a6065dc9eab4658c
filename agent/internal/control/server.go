package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Handler answers one request from a root peer (PeerPID is its process id). The returned function,
// when not nil, runs after the response is sent (the agent stops there after an uninstall).
type Handler func(req Request, peerPID int) (resp Response, after func())

// Serve listens on a root-only unix socket at path and answers each connection's one request with h,
// until ctx ends. Peers that are not root get an error response and h is not called.
func Serve(ctx context.Context, path string, h Handler, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create the control socket's folder: %w", err)
	}
	_ = os.Remove(path)
	old := unix.Umask(0o077)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serveConn(c.(*net.UnixConn), h)
	}
}

func serveConn(c *net.UnixConn, h Handler) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	enc := json.NewEncoder(c)
	peer, peerPID, err := peerCred(c)
	if err != nil || peer != 0 {
		_ = enc.Encode(Response{Error: "only root may use the keyguard control socket"})
		return
	}
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		_ = enc.Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	resp, after := h(req, int(peerPID))
	_ = enc.Encode(resp)
	if after != nil {
		after()
	}
}

func peerCred(c *net.UnixConn) (uid uint32, pid int32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}
