package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keyguard/keyguard/collector/internal/store"
)

// SessionCookie is the session cookie's name. The __Host- prefix makes the browser insist on Secure,
// Path=/ and no Domain.
const SessionCookie = "__Host-keyguard_session"

// session is the authenticated operator of a request.
type session struct {
	idHash []byte
	User   string
	Role   string
	CSRF   string
}

func (s *session) Admin() bool { return s != nil && s.Role == RoleAdmin }

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashID(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

type authedHandler func(w http.ResponseWriter, r *http.Request, s *session)

// authed requires a valid session; state-changing requests also need the session's CSRF token and a
// same-origin Origin header. Without a session, pages redirect to the login page and everything else
// gets 401.
func (c *Console) authed(h authedHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		s, err := c.sessionOf(r)
		if err != nil {
			if !errors.Is(err, store.ErrNoSession) {
				c.log.Error("console session lookup failed", "err", err)
				c.fail(w, r, nil, http.StatusServiceUnavailable, "The session store is unavailable; try again.")
				return
			}
			clearCookie(w)
			if r.Method == http.MethodGet && r.URL.Path != "/events/stream" {
				next := r.URL.RequestURI()
				http.Redirect(w, r, "/login?next="+url.QueryEscape(next), http.StatusSeeOther)
				return
			}
			c.fail(w, r, nil, http.StatusUnauthorized, "Log in first.")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !c.sameOrigin(r) {
				c.log.Warn("console refused cross-origin request", "user", s.User, "path", r.URL.Path, "origin", r.Header.Get("Origin"))
				c.fail(w, r, s, http.StatusForbidden, "Refused: the request did not come from this console (Origin check).")
				return
			}
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, s, http.StatusBadRequest, "The form could not be read.")
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.CSRF)) != 1 {
				c.log.Warn("console refused request without a valid CSRF token", "user", s.User, "path", r.URL.Path)
				c.fail(w, r, s, http.StatusForbidden, "Refused: the form's security token is missing or stale. Reload the page and try again.")
				return
			}
		}
		h(w, r, s)
	})
}

// admin lets only admins through (viewers get 403).
func (c *Console) admin(h authedHandler) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *session) {
		if !s.Admin() {
			c.log.Warn("console refused admin action to a viewer", "user", s.User, "path", r.URL.Path, "method", r.Method)
			c.fail(w, r, s, http.StatusForbidden, "Only console admins can issue operator tokens.")
			return
		}
		h(w, r, s)
	}
}

func (c *Console) sessionOf(r *http.Request) (*session, error) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil || len(ck.Value) < 20 || len(ck.Value) > 100 {
		return nil, store.ErrNoSession
	}
	id := hashID(ck.Value)
	se, err := c.st.TouchSession(r.Context(), id, c.opts.Now(), c.opts.SessionIdle, c.opts.SessionMax, min(30*time.Second, c.opts.SessionIdle/4))
	if err != nil {
		return nil, err
	}
	u, ok := c.users.lookup(se.User)
	if !ok { // removed from the users file: the session ends now
		_ = c.st.DeleteSession(r.Context(), id)
		return nil, store.ErrNoSession
	}
	return &session{idHash: id, User: u.Name, Role: u.Role, CSRF: se.CSRF}, nil
}

// sameOrigin checks the Origin header (or, without one, the Referer) against the console's own origin.
func (c *Console) sameOrigin(r *http.Request) bool {
	scheme := "https"
	if c.opts.Plaintext {
		scheme = "http"
	}
	want := scheme + "://" + r.Host
	if o := r.Header.Get("Origin"); o != "" {
		return o == want
	}
	ref := r.Header.Get("Referer")
	return ref != "" && (ref == want || strings.HasPrefix(ref, want+"/"))
}

func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

type loginData struct {
	Next  string
	User  string
	Error string
}

func safeNext(next string) string {
	// Only local paths: no scheme, no host, no //evil.example or /\evil.example.
	if next == "" || next[0] != '/' || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || len(next) > 2048 {
		return "/fleet"
	}
	if u, err := url.Parse(next); err != nil || u.Host != "" || u.Scheme != "" {
		return "/fleet"
	}
	return next
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	c.render(w, r, nil, http.StatusOK, "login", "Log in", loginData{Next: safeNext(r.URL.Query().Get("next"))})
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// loginPost checks name and password. A wrong password and an unknown user get the same answer and
// cost the same time; repeated failures are refused for a while (see limiter): an address backs off
// before a user name is locked.
func (c *Console) loginPost(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !c.sameOrigin(r) {
		c.fail(w, r, nil, http.StatusForbidden, "Refused: the login did not come from this console (Origin check).")
		return
	}
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, http.StatusBadRequest, "The form could not be read.")
		return
	}
	name, password := r.PostForm.Get("user"), r.PostForm.Get("password")
	next := safeNext(r.PostForm.Get("next"))
	shownName := name
	if !ValidUserName(shownName) {
		shownName = ""
	}
	ip := clientIP(r)
	now := c.opts.Now()
	if wait := c.limiter.blocked(now, name, ip); wait > 0 {
		c.log.Warn("console login rate-limited", "user", shownName, "ip", ip)
		w.Header().Set("Retry-After", itoa(int(wait.Seconds())+1))
		c.render(w, r, nil, http.StatusTooManyRequests, "login", "Log in",
			loginData{Next: next, User: shownName, Error: "Too many failed logins. Wait a few minutes and try again."})
		return
	}
	u, known := c.users.lookup(name)
	hash := u.Hash
	if !known || len(password) > 1024 {
		hash = dummyHash()
	}
	ok, err := CheckPassword(hash, password)
	if err != nil {
		c.log.Error("console users file holds an unreadable hash", "user", shownName, "err", err)
	}
	if !known || !ok || err != nil || len(password) > 1024 {
		// The backoff counts from the answer, not from the request: checking the hash takes a
		// while, and the client can only try again once it has the answer.
		c.limiter.fail(c.opts.Now(), name, ip)
		c.log.Warn("console login failed", "user", shownName, "ip", ip)
		c.render(w, r, nil, http.StatusUnauthorized, "login", "Log in",
			loginData{Next: next, User: shownName, Error: "Wrong user name or password."})
		return
	}
	c.limiter.succeeded(name, ip)
	id := randomToken(32)
	if err := c.st.CreateSession(r.Context(), hashID(id), u.Name, randomToken(32), now); err != nil {
		c.log.Error("console login: store session", "err", err)
		c.fail(w, r, nil, http.StatusServiceUnavailable, "The session store is unavailable; try again.")
		return
	}
	c.log.Info("console login", "user", u.Name, "role", u.Role, "ip", ip)
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(c.opts.SessionMax.Seconds())})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.st.DeleteSession(r.Context(), s.idHash); err != nil {
		c.log.Error("console logout", "err", err)
	}
	c.log.Info("console logout", "user", s.User)
	clearCookie(w)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// limiter throttles failed logins. It is per collector process: with several collectors behind a
// load balancer an attacker gets the limits once per collector.
//
// Backoff per address comes before lockout per user, so that an anonymous attacker cannot lock a
// named user out: failures of one address for one user name make that address wait, doubling from
// 1 s after the fifth failure up to the whole window; one address gets at most limitPerIP failures
// per window over all names; a user name is locked only when failures come from limitUserAddrs
// different addresses within the window (a distributed guess), and a success clears it.
type limiter struct {
	mu    sync.Mutex
	fails map[string][]time.Time          // "pair:ip\x00user" and "ip:addr" → failure times
	users map[string]map[string]time.Time // user → address → last failure
}

const (
	limitWindow    = 10 * time.Minute
	limitPairFree  = 5  // failures of one address for one user before it must wait
	limitPerIP     = 20 // failures of one address over all users
	limitUserAddrs = 5  // addresses failing for one user before the user is locked
)

func newLimiter() *limiter {
	return &limiter{fails: map[string][]time.Time{}, users: map[string]map[string]time.Time{}}
}

func pairKey(user, ip string) string { return "pair:" + ip + "\x00" + user }

func (l *limiter) prune(now time.Time, key string) []time.Time {
	ts := l.fails[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > limitWindow {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.fails, key)
		return nil
	}
	l.fails[key] = ts
	return ts
}

// userAddrs returns the last failure times of the addresses that failed for user in the window,
// oldest first.
func (l *limiter) userAddrs(now time.Time, user string) []time.Time {
	var ts []time.Time
	for ip, t := range l.users[user] {
		if now.Sub(t) > limitWindow {
			delete(l.users[user], ip)
			continue
		}
		ts = append(ts, t)
	}
	if len(l.users[user]) == 0 {
		delete(l.users, user)
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts
}

// blocked returns how long until the next attempt of ip for user is allowed (0 = now).
func (l *limiter) blocked(now time.Time, user, ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	if ts := l.prune(now, pairKey(user, ip)); len(ts) >= limitPairFree {
		backoff := min(time.Second<<(len(ts)-limitPairFree), limitWindow)
		wait = max(wait, backoff-now.Sub(ts[len(ts)-1]))
	}
	if ts := l.prune(now, "ip:"+ip); len(ts) >= limitPerIP {
		wait = max(wait, limitWindow-now.Sub(ts[len(ts)-limitPerIP]))
	}
	if ts := l.userAddrs(now, user); len(ts) >= limitUserAddrs {
		wait = max(wait, limitWindow-now.Sub(ts[len(ts)-limitUserAddrs]))
	}
	return max(wait, 0)
}

// fail records a failed login of ip for user.
func (l *limiter) fail(now time.Time, user, ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.fails) > 100000 { // bound memory under a spray of names
		for k := range l.fails {
			l.prune(now, k)
		}
	}
	if len(l.users) > 100000 {
		for u := range l.users {
			l.userAddrs(now, u)
		}
	}
	for _, k := range []string{pairKey(user, ip), "ip:" + ip} {
		l.fails[k] = append(l.prune(now, k), now)
		if len(l.fails[k]) > 100 {
			l.fails[k] = l.fails[k][len(l.fails[k])-100:]
		}
	}
	addrs := l.users[user]
	if addrs == nil {
		addrs = map[string]time.Time{}
		l.users[user] = addrs
	}
	if _, ok := addrs[ip]; ok || len(addrs) < 100 {
		addrs[ip] = now
	}
}

// succeeded clears user's failures (and ip's for user) after a correct password.
func (l *limiter) succeeded(user, ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fails, pairKey(user, ip))
	delete(l.users, user)
}
