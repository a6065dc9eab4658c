package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"time"
)

// demoWatch passes the demo's console output on and, in the systemd demo, checks the web console
// from the host once the guest prints "DEMO OK": the guest's "DEMO CONSOLE url=... user=...
// password=..." line gives the login, and the check goes through QEMU's forwarded loopback port.
type demoWatch struct {
	w       io.Writer
	port    int // host port forwarded to the guest console; 0: no check (initramfs demo)
	mu      sync.Mutex
	buf     []byte
	ok      bool // "DEMO OK" seen
	user    string
	pass    string
	done    chan struct{}
	checkOK bool
	report  string
}

func newDemoWatch(w io.Writer, port int) *demoWatch {
	return &demoWatch{w: w, port: port, done: make(chan struct{})}
}

func (d *demoWatch) Write(b []byte) (int, error) {
	d.mu.Lock()
	d.buf = append(d.buf, b...)
	start := false
	for {
		i := bytes.IndexByte(d.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(d.buf[:i]))
		d.buf = d.buf[i+1:]
		if rest, ok := strings.CutPrefix(line, "DEMO CONSOLE "); ok {
			for _, f := range strings.Fields(rest) {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "user":
					d.user = v
				case "password":
					d.pass = v
				}
			}
		}
		if line == "DEMO OK" && !d.ok {
			d.ok = true
			start = d.port != 0
		}
	}
	d.mu.Unlock()
	n, err := d.w.Write(b)
	if start {
		go d.check()
	}
	return n, err
}

// seen reports whether the demo finished ("DEMO OK").
func (d *demoWatch) seen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ok
}

// result waits up to wait for the host's console check and returns whether it passed and what it found.
func (d *demoWatch) result(wait time.Duration) (bool, string) {
	select {
	case <-d.done:
	case <-time.After(wait):
		return false, "the host's check of the web console did not finish"
	}
	return d.checkOK, d.report
}

func (d *demoWatch) check() {
	d.mu.Lock()
	user, pass := d.user, d.pass
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := fmt.Sprintf("https://127.0.0.1:%d", d.port)
	rep, err := checkConsole(ctx, base, user, pass)
	d.mu.Lock()
	d.checkOK, d.report = err == nil, rep
	if err != nil {
		d.report = err.Error()
	}
	d.mu.Unlock()
	fmt.Fprintf(d.w, "\nhost check of %s: %s\n", base, d.report)
	close(d.done)
}

// checkConsole logs in to the collector's web console at base (https://127.0.0.1:PORT, forwarded by
// QEMU) and reads the events page filtered to denied events and to core dumps. The demo's
// certificate comes from a CA made in the VM a minute ago, so it is not verified (like curl -k).
func checkConsole(ctx context.Context, base, user, pass string) (string, error) {
	if user == "" || pass == "" {
		return "", fmt.Errorf("the guest printed no DEMO CONSOLE line with user and password")
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the demo VM's fresh self-signed CA
	get := func(path string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", fmt.Errorf("GET %s: %w (is QEMU forwarding the port?)", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	code, body, err := get("/login")
	if err != nil {
		return "", err
	}
	if code != http.StatusOK || !strings.Contains(body, "password") {
		return "", fmt.Errorf("GET /login: status %d, no login form", code)
	}
	form := url.Values{"user": {user}, "password": {pass}, "next": {"/events"}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("POST /login: %w", err)
	}
	resp.Body.Close()
	u, _ := url.Parse(base)
	if resp.StatusCode != http.StatusOK || len(jar.Cookies(u)) == 0 {
		return "", fmt.Errorf("POST /login as %s: status %d, cookies %d: the printed password did not log in", user, resp.StatusCode, len(jar.Cookies(u)))
	}
	code, denied, err := get("/events?decision=denied")
	if err != nil {
		return "", err
	}
	nDenied := strings.Count(denied, `<tr class="event`)
	if code != http.StatusOK || nDenied == 0 {
		return "", fmt.Errorf("GET /events?decision=denied after login: status %d, %d event rows", code, nDenied)
	}
	code, dumps, err := get("/events?kind=core_dump")
	if err != nil {
		return "", err
	}
	nDumps := strings.Count(dumps, `<tr class="event`)
	if code != http.StatusOK || nDumps == 0 || !strings.Contains(dumps, "redact") {
		return "", fmt.Errorf("GET /events?kind=core_dump: status %d, %d rows, redaction shown: %v", code, nDumps, strings.Contains(dumps, "redact"))
	}
	return fmt.Sprintf("OK: GET /login 200, logged in as %s with the printed password, /events lists %d denied attempts and %d core dump events (redacted)", user, nDenied, nDumps), nil
}
