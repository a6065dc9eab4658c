package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/keyguard/keyguard/collector/enroll"
)

// The store is the collector's enrollment Registry: every method runs in one transaction, rows of
// the name and the token locked (PostgreSQL: the row is created first if missing, so two collectors
// claiming a new name queue on it; SQLite: write transactions lock the database).
var _ enroll.Registry = (*Store)(nil)

// Claim implements enroll.Registry.
func (s *Store) Claim(ctx context.Context, c enroll.Claim) (*big.Int, error) {
	var prev *big.Int
	err := s.enrollTx(ctx, func(tx *sql.Tx) error {
		if c.Nonce != "" {
			if err := s.spendToken(ctx, tx, c); err != nil {
				return err
			}
		}
		serial, notAfter, approved, err := s.lockName(ctx, tx, c.Name, c.Now)
		if err != nil {
			return err
		}
		if serial != "" && c.Now.UnixNano() < notAfter && !approved {
			return enroll.ErrLive
		}
		if serial != "" {
			prev, _ = new(big.Int).SetString(serial, 16)
		}
		return s.setHolder(ctx, tx, c.Name, c.Holder, c.Now)
	})
	return prev, err
}

// Replace implements enroll.Registry.
func (s *Store) Replace(ctx context.Context, name string, old *big.Int, next enroll.Holder) error {
	return s.enrollTx(ctx, func(tx *sql.Tx) error {
		now := time.Now()
		serial, _, _, err := s.lockName(ctx, tx, name, now)
		if err != nil {
			return err
		}
		if serial != "" && serial != old.Text(16) {
			return enroll.ErrToken
		}
		return s.setHolder(ctx, tx, name, next, now)
	})
}

// Approve implements enroll.Registry.
func (s *Store) Approve(ctx context.Context, name string) error {
	return s.enrollTx(ctx, func(tx *sql.Tx) error {
		now := time.Now()
		if _, _, _, err := s.lockName(ctx, tx, name, now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE enroll_names SET approved = 1, updated_ns = $1 WHERE name = $2`, now.UnixNano(), name)
		return err
	})
}

func (s *Store) enrollTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("enrollment registry: %w", err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		if errors.Is(err, enroll.ErrLive) || errors.Is(err, enroll.ErrToken) {
			return err
		}
		return fmt.Errorf("enrollment registry (check the database): %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("enrollment registry commit: %w", err)
	}
	return nil
}

// spendToken counts one use of c.Nonce, or fails with enroll.ErrToken when all are spent. Tokens
// past their expiry are forgotten (they no longer verify anyway).
func (s *Store) spendToken(ctx context.Context, tx *sql.Tx, c enroll.Claim) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM enroll_tokens WHERE exp_ns < $1`, c.Now.UnixNano()); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO enroll_tokens (nonce, uses, exp_ns) VALUES ($1, 0, $2) ON CONFLICT (nonce) DO NOTHING`,
		c.Nonce, c.NonceExp.UnixNano()); err != nil {
		return err
	}
	var uses int
	if err := tx.QueryRowContext(ctx, `SELECT uses FROM enroll_tokens WHERE nonce = $1`+s.forUpdate(), c.Nonce).Scan(&uses); err != nil {
		return err
	}
	if uses >= max(c.MaxUses, 1) {
		return enroll.ErrToken
	}
	_, err := tx.ExecContext(ctx, `UPDATE enroll_tokens SET uses = uses + 1 WHERE nonce = $1`, c.Nonce)
	return err
}

// lockName returns name's holder (serial "" when none) and approval, its row locked.
func (s *Store) lockName(ctx context.Context, tx *sql.Tx, name string, now time.Time) (serial string, notAfter int64, approved bool, err error) {
	if _, err = tx.ExecContext(ctx, `INSERT INTO enroll_names (name, serial, not_after_ns, approved, updated_ns) VALUES ($1, '', 0, 0, $2)
		ON CONFLICT (name) DO NOTHING`, name, now.UnixNano()); err != nil {
		return
	}
	var ap int
	err = tx.QueryRowContext(ctx, `SELECT serial, not_after_ns, approved FROM enroll_names WHERE name = $1`+s.forUpdate(), name).Scan(&serial, &notAfter, &ap)
	return serial, notAfter, ap != 0, err
}

func (s *Store) setHolder(ctx context.Context, tx *sql.Tx, name string, h enroll.Holder, now time.Time) error {
	_, err := tx.ExecContext(ctx, `UPDATE enroll_names SET serial = $1, not_after_ns = $2, approved = 0, updated_ns = $3 WHERE name = $4`,
		h.Serial.Text(16), h.NotAfter.UnixNano(), now.UnixNano(), name)
	return err
}
