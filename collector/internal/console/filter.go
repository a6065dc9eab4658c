package console

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/internal/query"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// choice is an option of a select element.
type choice struct {
	Value, Label string
	Selected     bool
}

// filterForm is the search form as the user filled it in, and the filter it means.
type filterForm struct {
	Hosts     string
	Kinds     []choice
	Decisions []choice
	Since     string
	Until     string
	Process   string
	PID       string
	Rule      string
	Severity  []choice // one selected: the minimum severity shown
	Page      string
	Filter    *pb.EventFilter
	Query     url.Values // the filter alone (no page), for links and the live stream
}

// kindNames maps "memory_access" to EVENT_KIND_MEMORY_ACCESS, etc.
func enumChoices(names map[int32]string, prefix string, selected map[string]bool) []choice {
	keys := make([]int, 0, len(names))
	for k := range names {
		if k != 0 {
			keys = append(keys, int(k))
		}
	}
	sort.Ints(keys)
	var out []choice
	for _, k := range keys {
		v := strings.ToLower(strings.TrimPrefix(names[int32(k)], prefix))
		out = append(out, choice{Value: v, Label: strings.ReplaceAll(v, "_", " "), Selected: selected[v]})
	}
	return out
}

func kindLabel(k pb.EventKind) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k.String(), "EVENT_KIND_")), "_", " ")
}

func decisionLabel(d pb.Decision) string {
	if d == pb.Decision_DECISION_UNSPECIFIED {
		return ""
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(d.String(), "DECISION_")), "_", " ")
}

// parseTime accepts RFC 3339, the datetime-local format (UTC), a date, or a duration meaning "that long
// ago" (24h, 90m).
func parseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use 2026-01-02T15:04 (UTC), RFC 3339, or a duration like 24h for 'that long ago'", truncate(s, 64))
}

// truncate shortens s to at most n runes (for error messages quoting user input).
func truncate(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n]) + "…"
}

// parseFilter reads the search form. Values are checked with the query API's own validation
// (query.ValidateFilter), so the console accepts exactly what the gRPC API accepts.
func parseFilter(q url.Values, now time.Time) (*filterForm, error) {
	ff := &filterForm{Filter: &pb.EventFilter{}, Query: url.Values{}}
	if err := checkFormText(q); err != nil {
		return ff, err
	}
	var errs []string
	ff.parseHosts(q)
	errs = append(errs, ff.parseKinds(q)...)
	errs = append(errs, ff.parseDecisions(q)...)
	errs = append(errs, ff.parseTimes(q, now)...)
	errs = append(errs, ff.parseProcess(q)...)
	errs = append(errs, ff.parseSeverity(q)...)
	ff.Page = q.Get("page")
	if len(errs) > 0 {
		return ff, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	if err := query.ValidateFilter(ff.Filter); err != nil {
		return ff, err
	}
	return ff, nil
}

// checkFormText refuses a form whose fields hold invalid UTF-8 or a NUL byte.
func checkFormText(q url.Values) error {
	for _, field := range []string{"host", "kind", "decision", "since", "until", "process", "pid", "rule", "severity", "page"} {
		for _, v := range q[field] {
			if !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
				return fmt.Errorf("the %s field contains invalid UTF-8 or a NUL byte", field)
			}
		}
	}
	return nil
}

// parseHosts reads the hosts: repeated parameters and/or separated by commas or spaces.
func (ff *filterForm) parseHosts(q url.Values) {
	var hosts []string
	for _, v := range q["host"] {
		for _, h := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' }) {
			hosts = append(hosts, h)
		}
	}
	ff.Filter.Hosts = hosts
	ff.Hosts = strings.Join(hosts, ", ")
	for _, h := range hosts {
		ff.Query.Add("host", h)
	}
}

// parseKinds reads the selected event kinds; it returns an error text for each unknown one.
func (ff *filterForm) parseKinds(q url.Values) []string {
	var errs []string
	selKinds := map[string]bool{}
	for _, v := range q["kind"] {
		k, ok := pb.EventKind_value["EVENT_KIND_"+strings.ToUpper(v)]
		if !ok || k == 0 {
			errs = append(errs, fmt.Sprintf("unknown event kind %q", truncate(v, 40)))
			continue
		}
		if !selKinds[v] {
			ff.Filter.Kinds = append(ff.Filter.Kinds, pb.EventKind(k))
			ff.Query.Add("kind", strings.ToLower(v))
		}
		selKinds[strings.ToLower(v)] = true
	}
	ff.Kinds = enumChoices(pb.EventKind_name, "EVENT_KIND_", selKinds)
	return errs
}

// parseDecisions reads the selected decisions; it returns an error text for each unknown one.
func (ff *filterForm) parseDecisions(q url.Values) []string {
	var errs []string
	selDec := map[string]bool{}
	for _, v := range q["decision"] {
		d, ok := pb.Decision_value["DECISION_"+strings.ToUpper(v)]
		if !ok || d == 0 {
			errs = append(errs, fmt.Sprintf("unknown decision %q", truncate(v, 40)))
			continue
		}
		if !selDec[v] {
			ff.Filter.Decisions = append(ff.Filter.Decisions, pb.Decision(d))
			ff.Query.Add("decision", strings.ToLower(v))
		}
		selDec[strings.ToLower(v)] = true
	}
	ff.Decisions = enumChoices(pb.Decision_name, "DECISION_", selDec)
	return errs
}

// parseTimes reads the since and until times (see parseTime); the query keeps them as fixed UTC
// times, so paging and live agree. It returns an error text for each that is not a time.
func (ff *filterForm) parseTimes(q url.Values, now time.Time) []string {
	var errs []string
	ff.Since, ff.Until = strings.TrimSpace(q.Get("since")), strings.TrimSpace(q.Get("until"))
	if ff.Since != "" {
		t, err := parseTime(ff.Since, now)
		if err != nil {
			errs = append(errs, "since: "+err.Error())
		} else {
			ff.Filter.StartTime = timestamppb.New(t)
			ff.Query.Set("since", t.UTC().Format(time.RFC3339Nano)) // fixed, so paging and live agree
		}
	}
	if ff.Until != "" {
		t, err := parseTime(ff.Until, now)
		if err != nil {
			errs = append(errs, "until: "+err.Error())
		} else {
			ff.Filter.EndTime = timestamppb.New(t)
			ff.Query.Set("until", t.UTC().Format(time.RFC3339Nano))
		}
	}
	return errs
}

// parseProcess reads the process name, process id and rule; it returns an error text for a pid
// that is not a process id.
func (ff *filterForm) parseProcess(q url.Values) []string {
	var errs []string
	ff.Process = strings.TrimSpace(q.Get("process"))
	if ff.Process != "" {
		ff.Filter.Process = ff.Process
		ff.Query.Set("process", ff.Process)
	}
	ff.PID = strings.TrimSpace(q.Get("pid"))
	if ff.PID != "" {
		p, err := strconv.ParseUint(ff.PID, 10, 32)
		if err != nil || p == 0 {
			errs = append(errs, fmt.Sprintf("pid %q is not a process id (1-4294967295)", truncate(ff.PID, 40)))
		} else {
			ff.Filter.Pid = uint32(p)
			ff.Query.Set("pid", ff.PID)
		}
	}
	ff.Rule = strings.TrimSpace(q.Get("rule"))
	if ff.Rule != "" {
		ff.Filter.Rule = ff.Rule
		ff.Query.Set("rule", ff.Rule)
	}
	return errs
}

// parseSeverity reads the minimum severity and fills the severity choices; it returns an error text
// for an unknown severity.
func (ff *filterForm) parseSeverity(q url.Values) []string {
	var errs []string
	sev := strings.TrimSpace(q.Get("severity"))
	ff.Severity = []choice{{Value: "", Label: "any", Selected: sev == ""}}
	for _, c := range enumChoices(pb.Severity_name, "SEVERITY_", map[string]bool{strings.ToLower(sev): true}) {
		c.Label += " and above"
		ff.Severity = append(ff.Severity, c)
	}
	if sev != "" {
		if sv, ok := pb.ParseSeverity(sev); ok {
			ff.Filter.MinSeverity = sv
			ff.Query.Set("severity", pb.SeverityLabel(sv))
		} else {
			errs = append(errs, fmt.Sprintf("severity %q is not one of info, low, medium, high, critical", truncate(sev, 40)))
		}
	}
	return errs
}
