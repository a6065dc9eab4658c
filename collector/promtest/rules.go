package promtest

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// AlertRule is one alerting rule of a Prometheus rules file.
type AlertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// RuleGroup is one group of a rules file.
type RuleGroup struct {
	Name  string      `yaml:"name"`
	Rules []AlertRule `yaml:"rules"`
}

var (
	metricName = regexp.MustCompile(`\bkeyguard_[a-z0-9_]+`)
	severities = map[string]bool{"critical": true, "warning": true, "info": true}
)

// LoadRules reads a Prometheus rules file strictly (unknown keys are errors, as in promtool check
// rules) and checks what promtool checks short of parsing PromQL: unique alert names, an expression
// with balanced brackets and quotes, a valid `for` duration, a severity label and a summary and
// description. It returns the groups and the keyguard_* metric names each expression uses.
func LoadRules(path string) ([]RuleGroup, map[string][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f struct {
		Groups []RuleGroup `yaml:"groups"`
	}
	if err := dec.Decode(&f); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(f.Groups) == 0 {
		return nil, nil, fmt.Errorf("%s: no groups", path)
	}
	seen := map[string]bool{}
	uses := map[string][]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Alert == "" || seen[r.Alert]:
				return nil, nil, fmt.Errorf("group %s: alert name %q empty or repeated", g.Name, r.Alert)
			case strings.TrimSpace(r.Expr) == "":
				return nil, nil, fmt.Errorf("%s: no expr", r.Alert)
			case !severities[r.Labels["severity"]]:
				return nil, nil, fmt.Errorf("%s: severity label %q is not critical, warning or info", r.Alert, r.Labels["severity"])
			case r.Annotations["summary"] == "" || r.Annotations["description"] == "":
				return nil, nil, fmt.Errorf("%s: summary and description annotations are required", r.Alert)
			}
			seen[r.Alert] = true
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					return nil, nil, fmt.Errorf("%s: for %q: %w", r.Alert, r.For, err)
				}
			}
			if err := balanced(r.Expr); err != nil {
				return nil, nil, fmt.Errorf("%s: expr %q: %w", r.Alert, r.Expr, err)
			}
			uses[r.Alert] = metricName.FindAllString(r.Expr, -1)
		}
	}
	return f.Groups, uses, nil
}

// balanced checks (), [], {} nesting and closed "..." strings.
func balanced(expr string) error {
	var stack []rune
	pair := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inStr := false
	for i, c := range expr {
		if inStr {
			if c == '"' && (i == 0 || expr[i-1] != '\\') {
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '(', '[', '{':
			stack = append(stack, c)
		case ')', ']', '}':
			if len(stack) == 0 || stack[len(stack)-1] != pair[c] {
				return fmt.Errorf("unbalanced %q at %d", c, i)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inStr || len(stack) > 0 {
		return fmt.Errorf("unclosed string or bracket")
	}
	return nil
}
