package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrNoSession means a console session does not exist or has expired.
var ErrNoSession = errors.New("no such console session")

// Session is a console login session. Sessions live in the database so that every collector sharing it
// accepts them; the cookie holds a random secret and the database only its SHA-256.
type Session struct {
	User    string
	CSRF    string
	Created time.Time
	Last    time.Time
}

// CreateSession stores a new session under the hash of its secret.
func (s *Store) CreateSession(ctx context.Context, idHash []byte, user, csrf string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO console_sessions (id_hash, username, csrf, created_ns, last_ns) VALUES ($1, $2, $3, $4, $4)`,
		idHash, user, csrf, now.UnixNano())
	if err != nil {
		return fmt.Errorf("store console session: %w", err)
	}
	return nil
}

// TouchSession returns the session if it is younger than maxAge and was used within idle, and records
// now as its last use (at most once per touchEvery, to spare the database). An expired session is deleted
// and ErrNoSession returned.
func (s *Store) TouchSession(ctx context.Context, idHash []byte, now time.Time, idle, maxAge, touchEvery time.Duration) (Session, error) {
	var se Session
	var created, last int64
	err := s.db.QueryRowContext(ctx, `SELECT username, csrf, created_ns, last_ns FROM console_sessions WHERE id_hash = $1`, idHash).
		Scan(&se.User, &se.CSRF, &created, &last)
	if errors.Is(err, sql.ErrNoRows) {
		return se, ErrNoSession
	}
	if err != nil {
		return se, fmt.Errorf("read console session: %w", err)
	}
	se.Created, se.Last = time.Unix(0, created), time.Unix(0, last)
	if now.Sub(se.Created) > maxAge || now.Sub(se.Last) > idle {
		if err := s.DeleteSession(ctx, idHash); err != nil {
			return se, err
		}
		return se, ErrNoSession
	}
	if now.Sub(se.Last) >= touchEvery {
		if _, err := s.db.ExecContext(ctx, `UPDATE console_sessions SET last_ns = $1 WHERE id_hash = $2 AND last_ns < $1`, now.UnixNano(), idHash); err != nil {
			return se, fmt.Errorf("update console session: %w", err)
		}
		se.Last = now
	}
	return se, nil
}

// DeleteSession removes a session (logout, expiry).
func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, idHash); err != nil {
		return fmt.Errorf("delete console session: %w", err)
	}
	return nil
}

// DeleteUserSessions removes every session of a user (a user removed from the users file).
func (s *Store) DeleteUserSessions(ctx context.Context, user string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE username = $1`, user); err != nil {
		return fmt.Errorf("delete console sessions of %q: %w", user, err)
	}
	return nil
}

// ExpireSessions deletes sessions created before createdBefore or unused since lastBefore.
func (s *Store) ExpireSessions(ctx context.Context, createdBefore, lastBefore time.Time) (int64, error) {
	r, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE created_ns < $1 OR last_ns < $2`, createdBefore.UnixNano(), lastBefore.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("expire console sessions: %w", err)
	}
	n, _ := r.RowsAffected()
	return n, nil
}

// IssuedToken records one operator token issued through the console (the token itself is not kept,
// only its SHA-256).
type IssuedToken struct {
	ID          int64
	Issued      time.Time
	Expires     time.Time
	Operator    string
	Action      string
	Host        string
	Reason      string
	Detail      string
	Nonce       string
	TokenSHA256 []byte
	Collector   string
}

// RecordToken stores an issuance record and returns its id.
func (s *Store) RecordToken(ctx context.Context, t IssuedToken) (int64, error) {
	var id int64
	err := s.db.QueryRowContext(ctx, `INSERT INTO console_tokens (issued_ns, expires_ns, operator, action, host, reason, detail, nonce, token_sha256, collector)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id`,
		t.Issued.UnixNano(), t.Expires.UnixNano(), t.Operator, t.Action, t.Host, t.Reason, t.Detail, t.Nonce, t.TokenSHA256, s.collector).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record issued token: %w", err)
	}
	return id, nil
}

// IssuedTokens returns the newest issuance records, newest first.
func (s *Store) IssuedTokens(ctx context.Context, limit int) ([]IssuedToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, issued_ns, expires_ns, operator, action, host, reason, detail, nonce, token_sha256, collector
		FROM console_tokens ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list issued tokens: %w", err)
	}
	defer rows.Close()
	var out []IssuedToken
	for rows.Next() {
		var t IssuedToken
		var issued, expires int64
		if err := rows.Scan(&t.ID, &issued, &expires, &t.Operator, &t.Action, &t.Host, &t.Reason, &t.Detail, &t.Nonce, &t.TokenSHA256, &t.Collector); err != nil {
			return nil, fmt.Errorf("read issued token: %w", err)
		}
		t.Issued, t.Expires = time.Unix(0, issued), time.Unix(0, expires)
		out = append(out, t)
	}
	return out, rows.Err()
}
