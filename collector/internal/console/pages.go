package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/collector/internal/query"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// pageSize is the number of events per page of the event list.
const pageSize = 50

// page is what every template gets.
type page struct {
	Title   string
	Session *session
	Nav     string
	Data    any
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{}
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("parse console layout: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("parse console page %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render executes a page into a buffer first, so a template error never sends half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, code int, name, title string, data any) {
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout.html", page{Title: title, Session: s, Nav: name, Data: data}); err != nil {
		c.log.Error("console render", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

type errorData struct {
	Code    int
	Message string
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, code int, msg string) {
	c.render(w, r, s, code, "error", http.StatusText(code), errorData{Code: code, Message: msg})
}

// apiMessage turns a QueryService error into text for the page.
func apiMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

// ---- fleet ----

type hostRow struct {
	Host         string
	Status       string
	Stale        bool
	Problem      bool
	AgentVersion string
	Kernel       string
	LSM          string
	Pinned       string
	// NotEnforcing: the agent refused to start, BPF LSM is inactive, nothing is pinned, keyguard was
	// uninstalled, or no process is protected. Tampered: the last chain verification failed.
	NotEnforcing string
	Tampered     string
	Protected    string
	Findings     []finding
	Lost         string
	LastLoss     string
	LastSeen     string
	LastSeenAgo  string
	Events       string
	// CSS classes, computed here rather than in the template (rendering 1,000 rows is template-bound).
	RowClass, LSMClass, PinnedClass, LostClass string
	EventsURL                                  string
	ChainURL                                   string
	HealthSummary                              string
}

type finding struct {
	Text  string
	Class string
}

type fleetData struct {
	Hosts      []hostRow
	Stale      int
	StaleAfter string
	LossNote   string
}

// lossScan bounds how many loss reports the fleet view sums (newest first).
const lossScan = 10000

func (c *Console) fleet(w http.ResponseWriter, r *http.Request, s *session) {
	data, err := c.fleetData(r.Context())
	if err != nil {
		c.fail(w, r, s, http.StatusServiceUnavailable, apiMessage(err))
		return
	}
	c.render(w, r, s, http.StatusOK, "fleet", "Fleet", data)
}

func (c *Console) fleetData(ctx context.Context) (*fleetData, error) {
	hosts, err := c.qs.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil {
		return nil, err
	}
	losses, note, err := c.fleetLosses(ctx)
	if err != nil {
		return nil, err
	}
	verdicts, err := c.st.Verdicts(ctx)
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	fd := &fleetData{StaleAfter: c.opts.StaleAfter.String(), LossNote: note}
	for _, h := range hosts.GetHosts() {
		row := c.newHostRow(h, now, verdicts, losses[h.GetHost()])
		if row.Stale {
			fd.Stale++
		}
		fd.Hosts = append(fd.Hosts, row)
	}
	return fd, nil
}

// hostLoss sums a host's loss reports; last is the time of its newest one.
type hostLoss struct {
	n    uint64
	last time.Time
}

// fleetLosses sums the hosts' loss reports, newest first, through the same ListEvents as the API. It
// reads at most about lossScan reports; when it stops early, note says so.
func (c *Console) fleetLosses(ctx context.Context) (losses map[string]*hostLoss, note string, err error) {
	losses = map[string]*hostLoss{}
	req := &pb.ListEventsRequest{Filter: &pb.EventFilter{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_LOSS_REPORT}}, PageSize: query.MaxPageSize, NewestFirst: true}
	scanned := 0
	for {
		resp, err := c.qs.ListEvents(ctx, req)
		if err != nil {
			return nil, "", err
		}
		for _, se := range resp.GetEvents() {
			h := se.GetEvent().GetHost()
			l := losses[h]
			if l == nil {
				l = &hostLoss{last: se.GetEvent().GetTime().AsTime()}
				losses[h] = l
			}
			l.n += se.GetEvent().GetLossReport().GetCount()
		}
		scanned += len(resp.GetEvents())
		if resp.GetNextPageToken() == "" {
			break
		}
		if scanned >= lossScan {
			note = fmt.Sprintf("Loss counts sum the newest %d loss reports only.", scanned)
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return losses, note, nil
}

// newHostRow builds a host's fleet table row from its summary, its chain verdict and its losses (nil:
// no loss report).
func (c *Console) newHostRow(h *pb.Host, now time.Time, verdicts map[string]store.Verdict, l *hostLoss) hostRow {
	row := hostRow{
		Host:         h.GetHost(),
		Status:       lower(h.GetStatus(), "HOST_STATUS_"),
		AgentVersion: h.GetAgentVersion(),
		Events:       strconv.FormatUint(h.GetEventCount(), 10),
		Lost:         "0",
		EventsURL:    "/events?host=" + urlQuery(h.GetHost()),
		ChainURL:     "/chain?host=" + urlQuery(h.GetHost()),
	}
	if row.Status == "unspecified" {
		row.Status = "no health report"
	}
	last := h.GetLastSeenTime().AsTime()
	row.LastSeen, row.LastSeenAgo = last.UTC().Format(timeLayout), ago(last, now)
	row.Stale = now.Sub(last) > c.opts.StaleAfter
	if hh := h.GetLastHealth(); hh != nil {
		row.addHealth(hh, h.GetStatus())
	}
	if v, ok := verdicts[h.GetHost()]; ok && !v.OK {
		row.Tampered = fmt.Sprintf("chain verification at %s found %d problem(s)", v.Time.UTC().Format(timeLayout), v.Problems)
		row.Problem = true
	}
	row.RowClass, row.LSMClass, row.PinnedClass, row.LostClass = "host", "lsm", "pinned", "lost"
	if l != nil {
		row.Lost, row.LastLoss = strconv.FormatUint(l.n, 10), "last loss report "+l.last.UTC().Format(timeLayout)
		if l.n > 0 {
			row.LostClass = "lost bad"
		}
	}
	if row.Stale {
		row.RowClass += " stale"
	}
	if row.Problem {
		row.RowClass += " problem"
	}
	if row.LSM == "no" {
		row.LSMClass = "lsm bad"
	}
	if row.Pinned == "no" {
		row.PinnedClass = "pinned bad"
	}
	return row
}

// addHealth fills the row from the host's last health report: kernel, enforcement, findings, and
// whether that is a problem.
func (row *hostRow) addHealth(hh *pb.AgentHealth, st pb.HostStatus) {
	row.Kernel = hh.GetKernelRelease()
	row.LSM, row.Pinned = yesNo(hh.GetLsmActive()), yesNo(hh.GetEnforcementPinned())
	row.Protected = strconv.FormatUint(uint64(hh.GetProtectedProcessCount()), 10)
	if hh.GetAgentVersion() != "" {
		row.AgentVersion = hh.GetAgentVersion()
	}
	for _, f := range hh.GetFindings() {
		row.Findings = append(row.Findings, finding{Text: f.GetName() + " = " + f.GetValue(), Class: "finding sev-" + lower(f.GetSeverity(), "SEVERITY_")})
	}
	row.Problem = !hh.GetLsmActive() || !hh.GetEnforcementPinned() || st == pb.HostStatus_HOST_STATUS_UNINSTALLED
	row.NotEnforcing = notEnforcing(hh, st)
	row.Problem = row.Problem || row.NotEnforcing != ""
}

// notEnforcing says why a host's keys are not guarded, from its last health report ("" when enforcing).
func notEnforcing(hh *pb.AgentHealth, st pb.HostStatus) string {
	switch {
	case hh.GetState() == pb.AgentState_AGENT_STATE_REFUSED:
		return "the agent refused to start: " + hh.GetDetail()
	case st == pb.HostStatus_HOST_STATUS_UNINSTALLED || hh.GetState() == pb.AgentState_AGENT_STATE_UNINSTALLED:
		return "keyguard was uninstalled"
	case !hh.GetLsmActive():
		return "BPF LSM is not active on this kernel (boot with lsm=...,bpf)"
	case !hh.GetEnforcementPinned():
		return "no enforcement programs are pinned"
	case hh.GetProtectedProcessCount() == 0:
		return "no process is protected (is the signer running, does a policy rule match it?)"
	}
	return ""
}

func urlQuery(s string) string {
	return strings.ReplaceAll(template.URLQueryEscaper(s), "%2c", ",")
}

// ---- events ----

type eventsData struct {
	Form      *filterForm
	Error     string
	Rows      []eventRow
	NextURL   string
	FirstURL  string
	StreamURL string
	Live      bool
	// Grouped view (view=grouped): counts per actor, target, kind, decision and rule.
	Grouped    bool
	Groups     []groupRow
	GroupedURL string
	ListURL    string
}

type groupRow struct {
	Count, Actor, Target, Kind, Decision, Rule, Severity, First, Last, URL string
}

func (c *Console) events(w http.ResponseWriter, r *http.Request, s *session) {
	ff, err := parseFilter(r.URL.Query(), c.opts.Now())
	d := eventsData{Form: ff}
	if err != nil {
		d.Error = apiMessage(err)
		c.render(w, r, s, http.StatusBadRequest, "events", "Events", d)
		return
	}
	resp, err := c.qs.ListEvents(r.Context(), &pb.ListEventsRequest{Filter: ff.Filter, PageSize: pageSize, PageToken: ff.Page, NewestFirst: true})
	if err != nil {
		d.Error = apiMessage(err)
		code := http.StatusBadRequest
		if status.Code(err) != codes.InvalidArgument {
			code = http.StatusServiceUnavailable
		}
		c.render(w, r, s, code, "events", "Events", d)
		return
	}
	for _, se := range resp.GetEvents() {
		d.Rows = append(d.Rows, rowOf(se))
	}
	q := ff.Query.Encode()
	d.ListURL, d.GroupedURL = "/events?"+q, "/events?view=grouped&"+q
	if r.URL.Query().Get("view") == "grouped" {
		if err := c.groups(r.Context(), ff, &d); err != nil {
			d.Error = apiMessage(err)
			c.render(w, r, s, http.StatusServiceUnavailable, "events", "Events", d)
			return
		}
		c.render(w, r, s, http.StatusOK, "events", "Events", d)
		return
	}
	d.FirstURL = "/events?" + q
	if t := resp.GetNextPageToken(); t != "" {
		nq := ff.Query
		nq.Set("page", t)
		d.NextURL = "/events?" + nq.Encode()
		nq.Del("page")
	}
	// Live updates only make sense on the first page of an open-ended search.
	if ff.Page == "" && ff.Filter.GetEndTime() == nil {
		d.Live = true
		d.StreamURL = "/events/stream?" + q
	}
	c.render(w, r, s, http.StatusOK, "events", "Events", d)
}

// maxGroups bounds the grouped view.
const maxGroups = 200

// groups fills the grouped view: like events counted together, largest first.
func (c *Console) groups(ctx context.Context, ff *filterForm, d *eventsData) error {
	gs, err := c.st.GroupEvents(ctx, ff.Filter, maxGroups)
	if err != nil {
		return err
	}
	d.Grouped, d.Rows = true, nil
	for _, g := range gs {
		q := ff.Query
		row := groupRow{Count: strconv.FormatInt(g.Count, 10), Actor: g.Actor, Target: g.Target, Kind: kindLabel(g.Kind),
			Decision: decisionLabel(g.Decision), Rule: g.Rule, Severity: pb.SeverityLabel(g.Severity),
			First: g.First.UTC().Format(timeLayout), Last: g.Last.UTC().Format(timeLayout)}
		if g.Actor != "" {
			nq := url.Values{}
			for k, v := range q {
				nq[k] = v
			}
			nq.Set("process", g.Actor)
			row.URL = "/events?" + nq.Encode()
		}
		d.Groups = append(d.Groups, row)
	}
	return nil
}

// watchStream adapts an HTTP Server-Sent Events response to the QueryService's WatchEvents stream, so
// the console follows new events with exactly the gRPC API's code.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	mu   *sync.Mutex
	w    http.ResponseWriter
	rc   *http.ResponseController
	sent int
}

func (ws *watchStream) Context() context.Context { return ws.ctx }

func (ws *watchStream) Send(m *pb.WatchEventsResponse) error {
	b, err := json.Marshal(rowOf(m.GetEvent()))
	if err != nil {
		return err
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if _, err := fmt.Fprintf(ws.w, "event: ev\ndata: %s\n\n", b); err != nil {
		return err
	}
	ws.sent++
	return ws.rc.Flush()
}

func (ws *watchStream) SetHeader(metadata.MD) error  { return nil }
func (ws *watchStream) SendHeader(metadata.MD) error { return nil }
func (ws *watchStream) SetTrailer(metadata.MD)       {}

func (c *Console) stream(w http.ResponseWriter, r *http.Request, s *session) {
	ff, err := parseFilter(r.URL.Query(), c.opts.Now())
	if err != nil {
		// Not echoed: the page that opened the stream shows the same error from the same filter.
		http.Error(w, "invalid filter: the event list shows why", http.StatusBadRequest)
		return
	}
	if c.live.Add(1) > maxLiveStreams {
		c.live.Add(-1)
		http.Error(w, "too many live views open; close some tabs", http.StatusServiceUnavailable)
		return
	}
	defer c.live.Add(-1)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// The session is rechecked periodically: a live view ends when its session expires or logs out.
	go func() {
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			mu.Lock()
			_, werr := fmt.Fprint(w, ": keepalive\n\n")
			if werr == nil {
				werr = rc.Flush()
			}
			mu.Unlock()
			if werr != nil {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if _, err := c.sessionOf(r); err != nil {
				cancel()
				return
			}
		}
	}()
	ws := &watchStream{ctx: ctx, mu: &mu, w: w, rc: rc}
	err = c.qs.WatchEvents(&pb.WatchEventsRequest{Filter: ff.Filter}, ws)
	if err != nil && ctx.Err() == nil {
		c.log.Warn("console live stream ended", "user", s.User, "err", err)
	}
}

// ---- one event ----

type detailData struct {
	Row      eventRow
	Sections []section
	Raw      string
	ChainURL string
	HostURL  string
}

func (c *Console) eventDetail(w http.ResponseWriter, r *http.Request, s *session) {
	host := r.PathValue("host")
	pos, err := strconv.ParseUint(r.PathValue("pos"), 10, 63)
	if err != nil || pos == 0 || len(host) > 253 || host == "" {
		c.fail(w, r, s, http.StatusNotFound, "No such event.")
		return
	}
	evs, err := c.st.ChainRange(r.Context(), host, pos-1, pos, nil, 1)
	if err != nil {
		c.log.Error("console event detail", "err", err)
		c.fail(w, r, s, http.StatusServiceUnavailable, "The event store is unavailable; try again.")
		return
	}
	if len(evs) == 0 {
		c.fail(w, r, s, http.StatusNotFound, "No such event (it may have been removed by retention).")
		return
	}
	se := evs[0]
	c.render(w, r, s, http.StatusOK, "event", "Event", detailData{
		Row: rowOf(se), Sections: detailSections(se), Raw: rawJSON(se),
		ChainURL: "/chain?host=" + urlQuery(host), HostURL: "/events?host=" + urlQuery(host),
	})
}

// ---- chain verification ----

type chainData struct {
	Host    string
	Ran     bool
	Error   string
	Reports []chainReport
}

type chainReport struct {
	Host     string
	OK       bool
	Checked  uint64
	Problems []string
	More     bool
}

// maxVerifyAll bounds "verify every host" from the console (each verification reads a whole chain).
const maxVerifyAll = 100

func (c *Console) chain(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := chainData{Host: q.Get("host")}
	if !q.Has("host") {
		c.render(w, r, s, http.StatusOK, "chain", "Chain verification", d)
		return
	}
	var hosts []string
	for _, h := range strings.FieldsFunc(d.Host, func(r rune) bool { return r == ',' || r == ' ' }) {
		hosts = append(hosts, h)
	}
	if len(hosts) == 0 {
		heads, err := c.st.ChainHeads(r.Context())
		if err != nil {
			c.fail(w, r, s, http.StatusServiceUnavailable, "The event store is unavailable; try again.")
			return
		}
		if len(heads) > maxVerifyAll {
			d.Error = fmt.Sprintf("%d hosts: verify at most %d at once from the console (name them), or run 'keyguard verify'.", len(heads), maxVerifyAll)
			c.render(w, r, s, http.StatusBadRequest, "chain", "Chain verification", d)
			return
		}
	}
	resp, err := c.qs.VerifyChain(r.Context(), &pb.VerifyChainRequest{Hosts: hosts})
	d.Ran = true
	if err != nil {
		d.Error = apiMessage(err)
		c.render(w, r, s, http.StatusBadRequest, "chain", "Chain verification", d)
		return
	}
	for _, rep := range resp.GetReports() {
		cr := chainReport{Host: rep.GetHost(), OK: rep.GetOk(), Checked: rep.GetEventsChecked(), More: rep.GetTruncated()}
		for _, p := range rep.GetProblems() {
			cr.Problems = append(cr.Problems, lower(p.GetKind(), "CHAIN_PROBLEM_KIND_")+": "+p.GetDetail())
		}
		d.Reports = append(d.Reports, cr)
	}
	c.log.Info("console chain verification", "user", s.User, "hosts", len(d.Reports))
	c.render(w, r, s, http.StatusOK, "chain", "Chain verification", d)
}
