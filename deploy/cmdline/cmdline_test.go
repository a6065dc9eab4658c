package cmdline

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Policy   string        `yaml:"policy" flag:"policy" help:"policy file"`
	Deny     bool          `yaml:"deny_traced" flag:"deny-traced" help:"deny traced"`
	Interval time.Duration `yaml:"posture_interval" flag:"posture-interval" help:"interval"`
	Max      int64         `yaml:"max" flag:"max" help:"cap"`
	UID      uint32        `yaml:"uid" flag:"uid" help:"uid"`
	NoFlag   string        `yaml:"no_flag"`
	Metrics  struct {
		Listen string `yaml:"listen" flag:"metrics-listen" help:"address"`
		Remote bool   `yaml:"allow_remote" flag:"metrics-allow-remote" help:"remote"`
	} `yaml:"metrics"`
}

func defaults() testConfig {
	return testConfig{Policy: "/etc/keyguard/policy.yaml", Deny: true, Interval: time.Minute, Max: 256}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigLayers(t *testing.T) {
	file := "policy: /srv/policy.yaml\ndeny_traced: false\nposture_interval: 5m\nno_flag: from-file\nmetrics:\n  listen: 127.0.0.1:9464\n"
	for _, tc := range []struct {
		name  string
		file  string
		args  []string
		check func(c testConfig) bool
	}{
		{"defaults", "", nil, func(c testConfig) bool { return c == defaults() }},
		{"file over defaults", file, nil, func(c testConfig) bool {
			return c.Policy == "/srv/policy.yaml" && !c.Deny && c.Interval == 5*time.Minute && c.Max == 256 &&
				c.NoFlag == "from-file" && c.Metrics.Listen == "127.0.0.1:9464"
		}},
		{"flags over file", file, []string{"-policy", "/x.yaml", "-deny-traced", "-metrics-listen", "[::1]:1", "-uid", "7"}, func(c testConfig) bool {
			return c.Policy == "/x.yaml" && c.Deny && c.Interval == 5*time.Minute && c.Metrics.Listen == "[::1]:1" && c.UID == 7
		}},
		// A flag given with its default value still wins over the file.
		{"explicit default flag wins", file, []string{"-posture-interval", "1m"}, func(c testConfig) bool { return c.Interval == time.Minute }},
		{"flags without file", "", []string{"-max", "9", "-metrics-allow-remote"}, func(c testConfig) bool {
			return c.Max == 9 && c.Metrics.Remote && c.Policy == "/etc/keyguard/policy.yaml"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaults()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			b := BindConfig(fs, &cfg)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			path := ""
			if tc.file != "" {
				path = writeFile(t, tc.file)
			}
			if err := b.Load(path, false); err != nil {
				t.Fatal(err)
			}
			if !tc.check(cfg) {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"unknown top-level key", "policy: /p\npolcy: /q\n", `agent.yaml:2:1: unknown key "polcy" in the top level (known: deny_traced, max, metrics, no_flag, policy, posture_interval, uid)`},
		{"unknown nested key", "metrics:\n  listen: x\n  allow-remote: true\n", `agent.yaml:3:3: unknown key "allow-remote" in metrics (known: allow_remote, listen)`},
		{"section not a mapping", "metrics: 5\n", `agent.yaml:1:10: metrics must be a mapping`},
		{"bad duration", "posture_interval: soon\n", `agent.yaml: yaml: unmarshal errors:`},
		{"bad yaml", "policy: [\n", `agent.yaml: yaml:`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaults()
			err := LoadYAML(writeFile(t, tc.file), &cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	cfg := defaults()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	b := BindConfig(fs, &cfg)
	if err := b.Load(filepath.Join(t.TempDir(), "missing.yaml"), true); err != nil {
		t.Errorf("optional missing file: %v", err)
	}
	if err := b.Load(filepath.Join(t.TempDir(), "missing.yaml"), false); err == nil {
		t.Error("required missing file: want an error")
	}
}

func TestProgram(t *testing.T) {
	ran := ""
	p := Program{Name: "kg", Version: "1.2.3", Commands: []Command{{Name: "run", Summary: "run it", Run: func(args []string, stdout, stderr io.Writer) int {
		fs := NewFlagSet("kg run", "[flags]", "")
		fs.Bool("x", false, "an x")
		if code, done := Parse(fs, args, stdout, stderr); done {
			return code
		}
		ran = strings.Join(fs.Args(), ",")
		return 0
	}}}}
	for _, tc := range []struct {
		args                []string
		code                int
		stdout, stderr, ran string
	}{
		{nil, 2, "", "usage: kg <command>", ""},
		{[]string{"-h"}, 0, "usage: kg <command>", "", ""},
		{[]string{"--help"}, 0, "  run            run it", "", ""},
		{[]string{"help"}, 0, "usage: kg <command>", "", ""},
		{[]string{"help", "run"}, 0, "usage: kg run [flags]", "", ""},
		{[]string{"version"}, 0, "kg 1.2.3\ncommit ", "", ""},
		{[]string{"--version"}, 0, "bpf object sha256 ", "", ""},
		{[]string{"run", "-h"}, 0, "  -x\tan x", "", ""},
		{[]string{"run", "--help"}, 0, "usage: kg run [flags]", "", ""},
		{[]string{"run", "help"}, 0, "usage: kg run [flags]", "", ""},
		{[]string{"run", "-y"}, 2, "", "kg run: flag provided but not defined: -y", ""},
		{[]string{"run", "a", "b"}, 0, "", "", "a,b"},
		{[]string{"nope"}, 2, "", `kg: unknown command "nope"`, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ran = ""
			var out, errb bytes.Buffer
			code := p.Main(tc.args, &out, &errb)
			if code != tc.code || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errb.String(), tc.stderr) || ran != tc.ran {
				t.Errorf("Main(%q) = %d\nstdout: %s\nstderr: %s\nran: %q", tc.args, code, out.String(), errb.String(), ran)
			}
			if tc.stdout == "" && out.Len() > 0 {
				t.Errorf("unexpected stdout: %s", out.String())
			}
		})
	}
}
