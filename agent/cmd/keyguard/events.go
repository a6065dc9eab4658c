package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/deploy/cmdline"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func init() {
	register("events", "query events stored by the collector (filters, table or JSON, -follow)", runEvents)
}

// enumValue maps a user word ("denied", "memory_access") to an enum value by its proto name.
func enumValue(prefix, word string, names map[string]int32) (int32, error) {
	key := prefix + strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(word), "-", "_"))
	if v, ok := names[key]; ok && v != 0 {
		return v, nil
	}
	var valid []string
	for n, v := range names {
		if v != 0 {
			valid = append(valid, strings.ToLower(strings.TrimPrefix(n, prefix)))
		}
	}
	return 0, fmt.Errorf("unknown value %q; valid: %s", word, strings.Join(valid, ", "))
}

func runEvents(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard events", "[flags]", "")
	var conn collectorFlags
	conn.register(fs)
	var hosts, kinds, decisions multiFlag
	fs.Var(&hosts, "host", "only these hosts (repeatable or comma-separated)")
	fs.Var(&kinds, "kind", "only these kinds: memory_access, protection_change, core_dump, key_file_access, side_door, break_glass, agent_health, loss_report, key_material_found, key_fingerprints")
	fs.Var(&decisions, "decision", "only these decisions: denied, allowed_audit, allowed_policy, allowed_break_glass, allowed")
	since := fs.String("since", "", "only events at or after this time (RFC 3339, or a duration such as 2h meaning 2h ago)")
	until := fs.String("until", "", "only events before this time (RFC 3339 or duration ago)")
	process := fs.String("process", "", "only events whose accessor/target/process comm or executable path equals this")
	pid := fs.Uint("pid", 0, "only events whose accessor/target/process has this PID")
	rule := fs.String("rule", "", "only events of this rule")
	minSev := fs.String("severity", "", "only events at or above this severity: info, low, medium (warning), high, critical")
	limit := fs.Int("limit", 100, "at most this many events (0 = all)")
	newest := fs.Bool("newest-first", false, "newest events first")
	asJSON := fs.Bool("json", false, "print one JSON object per line (protojson of keyguard.v1.StoredEvent)")
	follow := fs.Bool("follow", false, "after listing, keep printing new events as they are stored")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	filter, err := eventFilter(hosts, kinds, decisions, *since, *until, *process, uint32(*pid), *rule)
	if err == nil && *minSev != "" {
		sv, ok := pb.ParseSeverity(*minSev)
		if !ok {
			err = fmt.Errorf("-severity: unknown value %q; valid: info, low, medium, high, critical", *minSev)
		}
		filter.MinSeverity = sv
	}
	if err != nil {
		fmt.Fprintln(stderr, "events:", err)
		return cmdline.ExitUsage
	}
	cc, err := conn.dial()
	if err != nil {
		fmt.Fprintln(stderr, "events:", err)
		return 1
	}
	defer cc.Close()
	client := pb.NewQueryServiceClient(cc)
	out := newEventPrinter(stdout, *asJSON)

	listCtx, cancel := context.WithTimeout(ctx, conn.timeout)
	defer cancel()
	req := &pb.ListEventsRequest{Filter: filter, NewestFirst: *newest}
	printed := 0
	for *limit == 0 || printed < *limit {
		req.PageSize = 1000
		if *limit > 0 {
			req.PageSize = uint32(min(1000, *limit-printed))
		}
		resp, err := client.ListEvents(listCtx, req)
		if err != nil {
			fmt.Fprintln(stderr, "events:", status.Convert(err).Message())
			return 1
		}
		for _, e := range resp.GetEvents() {
			out.print(e)
			printed++
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	out.flush()
	if !*follow {
		return 0
	}
	watch, err := client.WatchEvents(ctx, &pb.WatchEventsRequest{Filter: filter})
	if err != nil {
		fmt.Fprintln(stderr, "events:", status.Convert(err).Message())
		return 1
	}
	for {
		r, err := watch.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintln(stderr, "events: watch:", status.Convert(err).Message())
			return 1
		}
		out.print(r.GetEvent())
		out.flush()
	}
}

type eventPrinter struct {
	json   bool
	w      io.Writer
	tw     *tabwriter.Writer
	header bool
}

func newEventPrinter(w io.Writer, asJSON bool) *eventPrinter {
	return &eventPrinter{json: asJSON, w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (p *eventPrinter) print(e *pb.StoredEvent) {
	if p.json {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(e)
		if err == nil {
			fmt.Fprintln(p.w, string(b))
		}
		return
	}
	if !p.header {
		fmt.Fprintln(p.tw, "TIME\tHOST\tSEQ\tSEVERITY\tKIND\tDECISION\tPROCESS\tTARGET\tRULE\tDETAIL")
		p.header = true
	}
	ev := e.GetEvent()
	kind, decision, proc, target, rule, detail := describeEvent(ev)
	fmt.Fprintf(p.tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.GetTime().AsTime().Local().Format("2006-01-02 15:04:05.000"),
		ev.GetHost(), ev.GetSeq(), pb.SeverityLabel(pb.SeverityOf(ev)), kind, decision, proc, target, rule, detail)
}

func (p *eventPrinter) flush() { p.tw.Flush() }

func procString(pr *pb.Process) string {
	if pr == nil {
		return "-"
	}
	return fmt.Sprintf("%s[%d]", clip(pr.GetComm(), 16), pr.GetPid())
}

// clip shortens and neutralises a string for a terminal table (no control characters).
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if len([]rune(s)) > n {
		return string([]rune(s)[:n-1]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}

func short(name, prefix string) string { return strings.ToLower(strings.TrimPrefix(name, prefix)) }

func describeEvent(ev *pb.Event) (kind, decision, proc, target, rule, detail string) {
	decision, proc, target, rule, detail = "-", "-", "-", "-", ""
	switch k := ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		m := k.MemoryAccess
		kind, decision, rule = "memory_access", short(m.GetDecision().String(), "DECISION_"), m.GetRule()
		proc, target = procString(m.GetAccessor()), procString(m.GetTarget())
		detail = short(m.GetOperation().String(), "ACCESS_OPERATION_")
		if m.GetProcPath() != "" {
			detail += " " + m.GetProcPath()
		}
	case *pb.Event_ProtectionChange:
		c := k.ProtectionChange
		kind, rule, proc = "protection_change", c.GetRule(), procString(c.GetProcess())
		detail = short(c.GetState().String(), "PROTECTION_STATE_") + " (" + short(c.GetReason().String(), "PROTECTION_REASON_") + ")"
	case *pb.Event_CoreDump:
		c := k.CoreDump
		kind, rule, proc = "core_dump", c.GetRule(), procString(c.GetProcess())
		decision = short(c.GetAction().String(), "CORE_DUMP_ACTION_")
		detail = fmt.Sprintf("signal %d %s", c.GetSignal(), c.GetReason())
	case *pb.Event_KeyFileAccess:
		c := k.KeyFileAccess
		kind, decision, rule, proc, detail = "key_file_access", short(c.GetDecision().String(), "DECISION_"), c.GetRule(), procString(c.GetProcess()), c.GetPath()
	case *pb.Event_SideDoor:
		c := k.SideDoor
		kind, decision, rule = "side_door", short(c.GetDecision().String(), "DECISION_"), c.GetRule()
		proc, target = procString(c.GetAccessor()), procString(c.GetTarget())
		detail = short(c.GetKind().String(), "SIDE_DOOR_KIND_") + " " + c.GetDetail()
	case *pb.Event_BreakGlass:
		c := k.BreakGlass
		kind, rule = "break_glass", c.GetRule()
		decision = short(c.GetState().String(), "BREAK_GLASS_STATE_")
		detail = fmt.Sprintf("by %s for %s uid %d: %s", c.GetOperator(), c.GetAccessorExePath(), c.GetAccessorUid(), c.GetReason())
	case *pb.Event_AgentHealth:
		c := k.AgentHealth
		kind = "agent_health"
		detail = fmt.Sprintf("%s kernel %s lsm=%v pinned=%v protected=%d findings=%d", short(c.GetState().String(), "AGENT_STATE_"),
			c.GetKernelRelease(), c.GetLsmActive(), c.GetEnforcementPinned(), c.GetProtectedProcessCount(), len(c.GetFindings()))
	case *pb.Event_LossReport:
		c := k.LossReport
		kind = "loss_report"
		detail = fmt.Sprintf("%d lost (%s)", c.GetCount(), short(c.GetSource().String(), "LOSS_SOURCE_"))
	case *pb.Event_KeyMaterialFound:
		c := k.KeyMaterialFound
		kind = "key_material_found"
		decision = "critical"
		target = c.GetPath()
		detail = fmt.Sprintf("%s at %d key %q", c.GetEncoding(), c.GetOffset(), c.GetKey())
		if c.GetQuarantinePath() != "" {
			detail += " quarantined"
		}
	default:
		kind = "unknown"
	}
	return kind, decision, proc, target, clip(rule, 24), clip(detail, 80)
}

// eventFilter builds the query filter from the command's flags.
func eventFilter(hosts, kinds, decisions []string, since, until, process string, pid uint32, rule string) (*pb.EventFilter, error) {
	filter := &pb.EventFilter{Hosts: hosts, Process: process, Pid: pid, Rule: rule}
	for _, k := range kinds {
		v, err := enumValue("EVENT_KIND_", k, pb.EventKind_value)
		if err != nil {
			return nil, fmt.Errorf("-kind: %w", err)
		}
		filter.Kinds = append(filter.Kinds, pb.EventKind(v))
	}
	for _, d := range decisions {
		v, err := enumValue("DECISION_", d, pb.Decision_value)
		if err != nil {
			return nil, fmt.Errorf("-decision: %w", err)
		}
		filter.Decisions = append(filter.Decisions, pb.Decision(v))
	}
	now := time.Now()
	for _, tf := range []struct {
		s   string
		dst **timestamppb.Timestamp
	}{{since, &filter.StartTime}, {until, &filter.EndTime}} {
		if tf.s == "" {
			continue
		}
		t, err := parseWhen(tf.s, now)
		if err != nil {
			return nil, err
		}
		*tf.dst = timestamppb.New(t)
	}
	return filter, nil
}
