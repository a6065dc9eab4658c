package console

import (
	"fmt"
	"testing"
	"time"
)

// The login limiter: an address backs off before a user name is locked, so one anonymous address
// cannot lock a named user out, while a guess spread over many addresses still locks the name.
func TestLimiter(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, l *limiter)
	}{
		{"one address hammering a user only slows itself", func(t *testing.T, l *limiter) {
			now := t0
			for i := range 200 {
				w := l.blocked(now, "bob", "203.0.113.9")
				if i < limitPairFree && w != 0 {
					t.Fatalf("attempt %d blocked for %s; the first %d are free", i+1, w, limitPairFree)
				}
				now = now.Add(w) // a patient attacker waits each backoff out
				l.fail(now, "bob", "203.0.113.9")
			}
			// At most limitPerIP guesses per window: 200 take at least 9 windows.
			if d := now.Sub(t0); d < 9*limitWindow {
				t.Errorf("200 guesses from one address took only %s", d)
			}
			if w := l.blocked(now, "bob", "198.51.100.7"); w != 0 {
				t.Errorf("bob from his own address is blocked for %s by an anonymous attacker", w)
			}
		}},
		{"backoff doubles per failure of the address for the user", func(t *testing.T, l *limiter) {
			for i := range limitPairFree + 3 {
				l.fail(t0, "bob", "203.0.113.9")
				want := time.Duration(0)
				if n := i + 1; n >= limitPairFree {
					want = time.Second << (n - limitPairFree)
				}
				if w := l.blocked(t0, "bob", "203.0.113.9"); w != want {
					t.Fatalf("after %d failures wait %s, want %s", i+1, w, want)
				}
			}
		}},
		{"another user from the same address is not blocked", func(t *testing.T, l *limiter) {
			for range 6 {
				l.fail(t0, "bob", "203.0.113.9")
			}
			if w := l.blocked(t0, "victor", "203.0.113.9"); w != 0 {
				t.Errorf("victor blocked for %s by failures for bob", w)
			}
		}},
		{"an address spraying names is limited", func(t *testing.T, l *limiter) {
			for i := range limitPerIP {
				l.fail(t0, fmt.Sprintf("user%d", i), "203.0.113.9")
			}
			if w := l.blocked(t0, "fresh-name", "203.0.113.9"); w == 0 {
				t.Error("an address with 20 failures over 20 names is not limited")
			}
		}},
		{"failures from many addresses lock the user", func(t *testing.T, l *limiter) {
			for i := range limitUserAddrs {
				l.fail(t0, "bob", fmt.Sprintf("192.0.2.%d", i))
			}
			if w := l.blocked(t0, "bob", "198.51.100.7"); w <= 0 || w > limitWindow {
				t.Errorf("bob after failures from %d addresses: wait %s, want a lockout", limitUserAddrs, w)
			}
			if w := l.blocked(t0.Add(limitWindow+time.Second), "bob", "198.51.100.7"); w != 0 {
				t.Errorf("the lockout outlives the window: %s", w)
			}
		}},
		{"success clears the user", func(t *testing.T, l *limiter) {
			for i := range limitUserAddrs {
				l.fail(t0, "bob", fmt.Sprintf("192.0.2.%d", i))
			}
			l.succeeded("bob", "192.0.2.0")
			if w := l.blocked(t0, "bob", "198.51.100.7"); w != 0 {
				t.Errorf("bob blocked %s after a success", w)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newLimiter()) })
	}
}
