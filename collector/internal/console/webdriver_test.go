package console_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A small W3C WebDriver client: Debian's chromium driven headless through chromedriver, with nothing but
// net/http and encoding/json.

const (
	chromiumBin     = "/usr/bin/chromium"
	chromedriverBin = "/usr/bin/chromedriver"
	elementKey      = "element-6066-11e4-a52e-4f735466cecf"
)

// requireBrowser returns whether chromium and chromedriver are installed; when they are not, the test
// fails under CI=true or KEYGUARD_REQUIRE_BROWSER=1 and is skipped otherwise.
func requireBrowser(t *testing.T) {
	t.Helper()
	for _, p := range []string{chromiumBin, chromedriverBin} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("%s is missing: apt-get install chromium chromium-driver (listed in .ci/packages.txt)", p)
			if os.Getenv("CI") == "true" || os.Getenv("KEYGUARD_REQUIRE_BROWSER") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

type browser struct {
	t       *testing.T
	base    string // chromedriver URL
	session string
	shots   string // screenshot directory
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newBrowser starts chromedriver and a headless chromium session; both end with the test.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	requireBrowser(t)
	port := freePort(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "chromedriver.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(chromedriverBin, "--port="+strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromedriver: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	b := &browser{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), shots: artifactDir(t)}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(b.base + "/status")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromedriver did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName":         "chrome",
		"acceptInsecureCerts": true, // the collector's demo CA is not in the browser's store
		"goog:chromeOptions": map[string]any{
			"binary": chromiumBin,
			"args":   []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000", "--user-data-dir=" + t.TempDir()},
		},
	}}}
	var out struct {
		SessionID string `json:"sessionId"`
	}
	b.call("POST", "/session", caps, &out)
	if out.SessionID == "" {
		t.Fatal("chromedriver returned no session id")
	}
	b.session = out.SessionID
	t.Cleanup(func() { b.do("DELETE", "/session/"+b.session, nil, nil) })
	return b
}

// artifactDir is where screenshots go: $KEYGUARD_ARTIFACTS/console, or testdata/out (gitignored).
func artifactDir(t *testing.T) string {
	dir := filepath.Join("testdata", "out")
	if a := os.Getenv("KEYGUARD_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, "console")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (b *browser) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		j, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("webdriver %s %s: %s", method, path, raw)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("webdriver %s %s: %s: %s", method, path, resp.Status, env.Value)
	}
	if out != nil {
		if path == "/session" { // the new-session reply nests sessionId inside value
			return json.Unmarshal(env.Value, out)
		}
		return json.Unmarshal(env.Value, out)
	}
	return nil
}

func (b *browser) call(method, path string, in, out any) {
	b.t.Helper()
	if err := b.do(method, path, in, out); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) s(path string) string { return "/session/" + b.session + path }

// open navigates and waits for the page to load.
func (b *browser) open(url string) {
	b.t.Helper()
	b.call("POST", b.s("/url"), map[string]string{"url": url}, nil)
}

func (b *browser) url() string {
	var u string
	b.call("GET", b.s("/url"), nil, &u)
	return u
}

// find returns the element id of the first match of a CSS selector.
func (b *browser) find(css string) string {
	b.t.Helper()
	var el map[string]string
	b.call("POST", b.s("/element"), map[string]string{"using": "css selector", "value": css}, &el)
	return el[elementKey]
}

func (b *browser) count(css string) int {
	b.t.Helper()
	var els []map[string]string
	b.call("POST", b.s("/elements"), map[string]string{"using": "css selector", "value": css}, &els)
	return len(els)
}

func (b *browser) typeInto(css, text string) {
	b.t.Helper()
	el := b.find(css)
	b.call("POST", b.s("/element/"+el+"/clear"), map[string]any{}, nil)
	b.call("POST", b.s("/element/"+el+"/value"), map[string]string{"text": text}, nil)
}

func (b *browser) click(css string) {
	b.t.Helper()
	b.call("POST", b.s("/element/"+b.find(css)+"/click"), map[string]any{}, nil)
}

func (b *browser) text(css string) string {
	b.t.Helper()
	var s string
	b.call("GET", b.s("/element/"+b.find(css)+"/text"), nil, &s)
	return s
}

// js runs a synchronous script and decodes its result into out (may be nil).
func (b *browser) js(script string, out any, args ...any) {
	b.t.Helper()
	if args == nil {
		args = []any{}
	}
	b.call("POST", b.s("/execute/sync"), map[string]any{"script": script, "args": args}, out)
}

// asyncJS runs an async script (the last argument is the callback).
func (b *browser) asyncJS(script string, out any, args ...any) {
	b.t.Helper()
	if args == nil {
		args = []any{}
	}
	b.call("POST", b.s("/execute/async"), map[string]any{"script": script, "args": args}, out)
}

func (b *browser) pageText() string {
	var s string
	b.js("return document.body.innerText;", &s)
	return s
}

// waitFor polls a JavaScript condition until it is true or the timeout passes.
func (b *browser) waitFor(what, cond string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		b.js("return !!("+cond+");", &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.screenshot("timeout-" + strings.ReplaceAll(what, " ", "-"))
			b.t.Fatalf("%s: not true within %s: %s\npage text:\n%s", what, timeout, cond, b.pageText())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot saves a PNG of the viewport under the artifact directory.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	var data string
	b.call("GET", b.s("/screenshot"), nil, &data)
	png, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		b.t.Fatal(err)
	}
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
	return p
}
