package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/collector/internal/chain"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// MaxProblems caps the problems listed per host.
const MaxProblems = 100

// Verify recomputes the hash chain of each host (all hosts when names is empty) and reports events that
// were modified, deleted or relinked, a chain head that no longer matches, and events whose filter
// terms (terms.go) are missing.
func (s *Store) Verify(ctx context.Context, names []string) ([]*pb.HostChainReport, error) {
	defer s.since("verify", time.Now())
	if len(names) == 0 {
		rows, err := s.db.QueryContext(ctx, `SELECT host FROM hosts UNION SELECT DISTINCT host FROM events ORDER BY 1`)
		if err != nil {
			return nil, fmt.Errorf("list hosts to verify: %w", err)
		}
		for rows.Next() {
			var h string
			if err := rows.Scan(&h); err != nil {
				rows.Close()
				return nil, fmt.Errorf("list hosts to verify: %w", err)
			}
			names = append(names, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("list hosts to verify: %w", err)
		}
	}
	terms, err := s.allTerms(ctx)
	if err != nil {
		return nil, err
	}
	var out []*pb.HostChainReport
	for _, h := range names {
		r, err := s.verifyHost(ctx, h)
		if err != nil {
			return nil, err
		}
		reported := map[uint64]bool{} // positions with a problem already: one report per event
		for _, p := range r.Problems {
			reported[p.GetChainPosition()] = true
		}
		err = s.verifyTerms(ctx, h, terms, func(pos, seq uint64, format string, args ...any) {
			if reported[pos] {
				return
			}
			if len(r.Problems) >= MaxProblems {
				r.Truncated = true
				return
			}
			r.Problems = append(r.Problems, &pb.ChainProblem{Kind: pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED, ChainPosition: pos, Seq: seq, Detail: fmt.Sprintf(format, args...)})
			r.Ok = false
		})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (s *Store) verifyHost(ctx context.Context, host string) (*pb.HostChainReport, error) {
	rep := &pb.HostChainReport{Host: host}
	problem := func(kind pb.ChainProblemKind, pos, seq uint64, format string, args ...any) {
		if len(rep.Problems) >= MaxProblems {
			rep.Truncated = true
			return
		}
		rep.Problems = append(rep.Problems, &pb.ChainProblem{Kind: kind, ChainPosition: pos, Seq: seq, Detail: fmt.Sprintf(format, args...)})
	}
	// The host row is read first; only events up to its chain length are checked, so events committed
	// while verifying do not look like a head mismatch.
	var chainLen, basePos int64
	var head, baseHash []byte
	err := s.db.QueryRowContext(ctx, `SELECT chain_len, chain_head, chain_base_pos, chain_base_hash FROM hosts WHERE host = $1`, host).
		Scan(&chainLen, &head, &basePos, &baseHash)
	hostKnown := true
	if err == sql.ErrNoRows {
		hostKnown = false
		problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_HEAD_MISMATCH, 0, 0, "events exist for host %q but its host record (chain head) is missing", host)
		baseHash = chain.Genesis(host)
	} else if err != nil {
		return nil, fmt.Errorf("read chain head of %q: %w", host, err)
	}

	limit := int64(1<<63 - 1)
	if hostKnown {
		limit = chainLen
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, chain_pos, time_ns, kind, decision, rule, proc_pid, proc_comm, proc_exe,
		target_pid, target_comm, target_exe, payload, digest, prev_hash, hash FROM events WHERE host = $1 AND chain_pos <= $2 ORDER BY chain_pos`, host, limit)
	if err != nil {
		return nil, fmt.Errorf("read chain of %q: %w", host, err)
	}
	defer rows.Close()
	running := baseHash
	lastPos := uint64(basePos)
	for rows.Next() {
		var seq, pos, tns, procPid, tgtPid int64
		var kind, decision int32
		var rule, procComm, procExe, tgtComm, tgtExe string
		var payload, digest, prev, hash []byte
		if err := rows.Scan(&seq, &pos, &tns, &kind, &decision, &rule, &procPid, &procComm, &procExe,
			&tgtPid, &tgtComm, &tgtExe, &payload, &digest, &prev, &hash); err != nil {
			return nil, fmt.Errorf("read chain row of %q: %w", host, err)
		}
		rep.EventsChecked++
		p := uint64(pos)
		if p > lastPos+1 {
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED, lastPos+1, uint64(seq),
				"%d event(s) at chain positions %d..%d are missing (deleted); the next stored event is seq %d", p-lastPos-1, lastPos+1, p-1, seq)
		} else if !bytes.Equal(prev, running) {
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_RELINKED, p, uint64(seq),
				"seq %d does not link to the event before it (its previous-hash was altered)", seq)
		}
		d := chain.Digest(payload)
		switch {
		case !bytes.Equal(d, digest):
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED, p, uint64(seq), "seq %d: stored content no longer matches its digest (event modified)", seq)
		case !bytes.Equal(s.hasher.Link(prev, host, uint64(seq), p, d), hash):
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED, p, uint64(seq), "seq %d: chain hash does not match content, seq and position (event modified, or wrong chain key)", seq)
		default:
			ev := &pb.Event{}
			if err := proto.Unmarshal(payload, ev); err != nil {
				problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED, p, uint64(seq), "seq %d: stored content does not decode: %v", seq, err)
				break
			}
			ix := indexOf(ev)
			pr, tg := ix.proc, ix.target
			if ev.GetHost() != host || ev.GetSeq() != uint64(seq) || ix.timeNanos != tns || int32(ix.kind) != kind ||
				int32(ix.decision) != decision || ix.rule != rule ||
				pid(pr) != procPid || comm(pr) != procComm || exe(pr) != procExe ||
				pid(tg) != tgtPid || comm(tg) != tgtComm || exe(tg) != tgtExe {
				problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED, p, uint64(seq), "seq %d: indexed columns (time, kind, decision, rule or process) differ from the chained content (event modified)", seq)
			}
		}
		running = hash
		lastPos = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read chain of %q: %w", host, err)
	}
	if hostKnown {
		switch {
		case lastPos < uint64(chainLen):
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED, lastPos+1, 0,
				"%d event(s) at the end of the chain (positions %d..%d) are missing (deleted)", uint64(chainLen)-lastPos, lastPos+1, chainLen)
		case lastPos > uint64(chainLen):
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_HEAD_MISMATCH, lastPos, 0, "events extend past the recorded chain head %d", chainLen)
		case !bytes.Equal(running, head):
			problem(pb.ChainProblemKind_CHAIN_PROBLEM_KIND_HEAD_MISMATCH, lastPos, 0, "the last event's hash differs from the recorded chain head")
		}
	}
	rep.Ok = len(rep.Problems) == 0
	return rep, nil
}
