package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/collector/pgtest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

const (
	events     = 100000
	faultAt    = 30000 // acknowledged events before the fault is injected
	outage     = 500 * time.Millisecond
	runTimeout = 180 * time.Second
)

// TestDeliveryExactlyOnce pushes 100,000 events from an agent process while one fault hits the path
// mid-stream, on SQLite and on PostgreSQL, and checks that afterwards every event is stored exactly
// once with continuous sequence numbers.
func TestDeliveryExactlyOnce(t *testing.T) {
	b := buildBinaries(t)
	faults := []struct {
		name string
		// run drives one scenario; the agent is already created, the collector running.
		run func(t *testing.T, env *scenario)
	}{
		{"collector SIGKILLed and restarted", func(t *testing.T, env *scenario) {
			env.agent.start()
			waitAcked(t, env.db, env.host, faultAt, runTimeout)
			env.coll.kill()
			time.Sleep(outage)
			env.coll.restart()
		}},
		{"agent SIGKILLed and restarted", func(t *testing.T, env *scenario) {
			// Paced so that the kill lands while the agent is still producing events: what it had
			// only in memory is gone (like a kernel ring buffer's contents), what it spooled must
			// arrive exactly once, and the restarted agent continues the numbering.
			env.agent.args = append(env.agent.args, "-rate", "20000")
			env.agent.start()
			waitAcked(t, env.db, env.host, faultAt/3, runTimeout)
			env.agent.p.kill()
			time.Sleep(outage)
			env.agent.start()
		}},
		{"network path cut and restored", func(t *testing.T, env *scenario) {
			env.agent.start()
			waitAcked(t, env.db, env.host, faultAt, runTimeout)
			env.proxy.cut()
			time.Sleep(outage)
			env.proxy.restore(t)
		}},
	}
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			// SQLite and PostgreSQL runs load different processes: overlap them.
			t.Parallel()
			for _, f := range faults {
				t.Run(f.name, func(t *testing.T) {
					env := newScenario(t, b, be.dsn(t), "host-a")
					f.run(t, env)
					s := env.agent.finish(runTimeout)
					n := verifyExactlyOnce(t, env.db, env.host, events)
					t.Logf("%d events stored exactly once; last run: %+v", n, s)
					// The fault really hit the stream.
					if env.agent.runs == 1 && s.Reconnect == 0 {
						t.Fatalf("the agent never reconnected: the fault missed the stream")
					}
				})
			}
		})
	}
}

type scenario struct {
	host  string
	db    *sql.DB
	coll  *collector
	proxy *proxy
	agent *agentProc
}

func newScenario(t *testing.T, b binaries, dsn, host string) *scenario {
	k := newPKI(t)
	env := &scenario{host: host}
	env.coll = startCollector(t, b, k, "c1", dsn)
	env.db = openDB(t, dsn)
	env.proxy = newProxy(t, env.coll.addr)
	env.agent = newAgent(t, b, k, host, env.proxy.addr, events)
	return env
}

// TestTwoCollectorsSharingPostgres spreads agents over two collectors that share one PostgreSQL
// database; one agent's path is moved from the first collector to the second mid-stream, so both
// collectors write the same host. Afterwards every host has every event exactly once.
func TestTwoCollectorsSharingPostgres(t *testing.T) {
	b := buildBinaries(t)
	dsn := pgtest.NewDatabase(t)
	k := newPKI(t)
	c1 := startCollector(t, b, k, "c1", dsn)
	c2 := startCollector(t, b, k, "c2", dsn)
	db := openDB(t, dsn)
	const perHost = 25000
	mover := newProxy(t, c1.addr)
	agents := map[string]*agentProc{
		"host-1": newAgent(t, b, k, "host-1", c1.addr, perHost),
		"host-2": newAgent(t, b, k, "host-2", c2.addr, perHost),
		"host-3": newAgent(t, b, k, "host-3", c2.addr, perHost),
		"mover":  newAgent(t, b, k, "mover", mover.addr, perHost),
	}
	for _, a := range agents {
		a.start()
	}
	waitAcked(t, db, "mover", perHost/3, runTimeout)
	mover.cut()
	mover.retarget(c2.addr)
	mover.restore(t)
	for host, a := range agents {
		s := a.finish(runTimeout)
		n := verifyExactlyOnce(t, db, host, perHost)
		t.Logf("%s: %d events stored exactly once (%+v)", host, n, s)
	}
	var collectors int
	if err := db.QueryRow(`SELECT COUNT(DISTINCT collector) FROM events WHERE host = 'mover'`).Scan(&collectors); err != nil {
		t.Fatal(err)
	}
	if collectors != 2 {
		t.Fatalf("the moved agent's events were stored by %d collectors, want both", collectors)
	}
}

// TestWipedSpoolContinuesNumbering deletes an agent's spool after it delivered events, as an operator
// reinstalling the agent would: the new spool starts numbering at 1, the collector's handshake says
// what it already holds, and the agent renumbers its unsent events after it instead of colliding.
func TestWipedSpoolContinuesNumbering(t *testing.T) {
	b := buildBinaries(t)
	const perRun = 5000
	env := newScenario(t, b, filepath.Join(t.TempDir(), "events.db"), "host-w")
	env.agent.target = perRun
	env.agent.args = replaceFlag(env.agent.args, "-target", strconv.Itoa(perRun))
	env.agent.start()
	env.agent.finish(runTimeout)
	if err := os.RemoveAll(env.agent.spool); err != nil {
		t.Fatal(err)
	}
	env.agent.start()
	s := env.agent.finish(runTimeout)
	n := verifyExactlyOnce(t, env.db, env.host, 2*perRun)
	if n != 2*perRun || s.Submitted != perRun {
		t.Fatalf("%d events stored, second run submitted %d; want %d and %d", n, s.Submitted, 2*perRun, perRun)
	}
}

func replaceFlag(args []string, flag, value string) []string {
	for i := range args {
		if args[i] == flag && i+1 < len(args) {
			args[i+1] = value
		}
	}
	return args
}

// TestFullSpoolEvictionDelivered fills a small agent spool while the collector is down, so that
// allowed accesses are evicted to keep the denials, then starts the collector: it must store every
// denial and the spool's loss report, and the evicted sequence numbers must be declared skipped so
// that the host's acknowledgement still reaches the last number (nothing is waited for forever).
func TestFullSpoolEvictionDelivered(t *testing.T) {
	b := buildBinaries(t)
	k := newPKI(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	coll := newCollector(t, b, k, "c1", dsn)
	cert, key := k.host(t, "host-e")
	p, err := export.New(export.Config{
		Collector: coll.addr, CAFile: k.caFile, CertFile: cert, KeyFile: key, ServerName: "localhost",
		SpoolDir: filepath.Join(t.TempDir(), "spool"), SpoolMaxBytes: 1 << 20, SpoolSegmentBytes: 32 << 10,
		BackoffMax: 200 * time.Millisecond, AgentVersion: "test",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		p.Close()
	}()
	const n = 8000
	denied := 0
	for i := range n {
		ev := sampleEvent()
		ma := ev.GetMemoryAccess()
		ma.Detail = fmt.Sprintf("n=%d", i)
		ma.Decision = keyguardv1.Decision_DECISION_ALLOWED
		if i%5 == 0 {
			ma.Decision = keyguardv1.Decision_DECISION_DENIED
			denied++
		}
		for p.Stats().QueueLen > 1000 {
			time.Sleep(time.Millisecond)
		}
		p.Submit(ev, export.PriorityOf(ev))
	}
	for st := p.Stats(); st.QueueLen > 0 || st.Spool.DurableSeq < st.Spool.NextSeq-1; st = p.Stats() {
		time.Sleep(time.Millisecond)
	}
	st := p.Stats()
	if st.Spool.Evicted == 0 || st.Spool.Refused != 0 {
		t.Fatalf("want evictions and no refusals (the denials fit); spool %+v", st.Spool)
	}
	last := st.Spool.NextSeq - 1
	t.Logf("spool filled: %+v", st.Spool)

	coll.start()
	db := openDB(t, dsn)
	waitAcked(t, db, "host-e", last, runTimeout)

	rows, err := db.Query(`SELECT seq, payload FROM events WHERE host = 'host-e' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	stored := map[uint64]bool{}
	gone := map[uint64]bool{}
	gotDenied := 0
	var evicted uint64
	for rows.Next() {
		var seq int64
		var payload []byte
		if err := rows.Scan(&seq, &payload); err != nil {
			t.Fatal(err)
		}
		stored[uint64(seq)] = true
		var ev keyguardv1.Event
		if err := proto.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		if lr := ev.GetLossReport(); lr != nil {
			evicted += lr.GetCount()
			for _, r := range lr.GetEvicted() {
				for s := r.GetFirst(); s <= r.GetLast(); s++ {
					gone[s] = true
				}
			}
		} else if ev.GetMemoryAccess().GetDecision() == keyguardv1.Decision_DECISION_DENIED {
			gotDenied++
		}
	}
	if gotDenied != denied {
		t.Fatalf("%d of %d denials stored", gotDenied, denied)
	}
	if evicted != st.Spool.Evicted {
		t.Fatalf("stored loss reports count %d evicted, the spool evicted %d", evicted, st.Spool.Evicted)
	}
	for s := uint64(1); s <= last; s++ {
		if stored[s] == gone[s] {
			t.Fatalf("seq %d: stored=%v, reported evicted=%v", s, stored[s], gone[s])
		}
	}
	t.Logf("%d events stored, %d evicted and reported, acknowledged through %d", len(stored), evicted, last)
}
