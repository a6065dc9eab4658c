package console

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keyguard/keyguard/collector/internal/identity"
	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/proto/optoken"
)

// Limits of the token form.
const (
	maxReasonBytes    = 1000
	maxBreakGlass     = 4 * time.Hour // the agent refuses longer grants
	tokenHistoryLimit = 100
)

type tokenForm struct {
	Action, Host, Reason, Valid, Rule, Executable, UID, Duration string
}

type tokensData struct {
	Enabled bool
	CSRF    string
	Form    tokenForm
	Error   string
	Issued  string // the token, shown once
	Claims  *optoken.Claims
	History []store.IssuedToken
}

func (c *Console) tokensData(r *http.Request, s *session, f tokenForm) tokensData {
	d := tokensData{Enabled: c.opts.OperatorKey != nil, CSRF: s.CSRF, Form: f}
	if d.Form.Valid == "" {
		d.Form.Valid = "1h"
	}
	if d.Form.Action == "" {
		d.Form.Action = optoken.ActionBreakGlass
	}
	h, err := c.st.IssuedTokens(r.Context(), tokenHistoryLimit)
	if err != nil {
		c.log.Error("console list issued tokens", "err", err)
	}
	d.History = h
	return d
}

func (c *Console) tokensPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, s, http.StatusOK, "tokens", "Operator tokens", c.tokensData(r, s, tokenForm{}))
}

var ruleNameOK = func(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r == '.' || r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// claimsFromForm validates the form and returns the claims to sign.
func claimsFromForm(f tokenForm, operator string, now time.Time) (optoken.Claims, error) {
	for name, v := range map[string]string{"action": f.Action, "host": f.Host, "reason": f.Reason, "valid": f.Valid,
		"rule": f.Rule, "executable": f.Executable, "uid": f.UID, "duration": f.Duration} {
		if !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
			return optoken.Claims{}, fmt.Errorf("the %s field contains invalid UTF-8 or a NUL byte", name)
		}
	}
	c := optoken.Claims{Action: f.Action, Host: f.Host, Operator: operator, Reason: strings.TrimSpace(f.Reason)}
	if !identity.ValidName(f.Host) {
		return c, fmt.Errorf("host must be the agent's host name: 1-253 of a-z A-Z 0-9 . - _")
	}
	if len(c.Reason) > maxReasonBytes {
		return c, fmt.Errorf("the reason is %d bytes; at most %d", len(c.Reason), maxReasonBytes)
	}
	if utf8.RuneCountInString(c.Reason) < 10 {
		return c, fmt.Errorf("write a reason of at least 10 characters (it is recorded with the token)")
	}
	for _, r := range c.Reason {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			return c, fmt.Errorf("the reason contains control characters")
		}
	}
	valid, err := time.ParseDuration(f.Valid)
	if err != nil || valid <= 0 || valid > optoken.MaxValidity {
		return c, fmt.Errorf("valid for must be a duration between 1s and %s, like 1h", optoken.MaxValidity)
	}
	switch f.Action {
	case optoken.ActionUninstall:
	case optoken.ActionBreakGlass:
		if !ruleNameOK(f.Rule) {
			return c, fmt.Errorf("rule must be a policy rule name: 1-63 of a-z 0-9 . _ -")
		}
		if len(f.Executable) > 4096 || !path.IsAbs(f.Executable) || path.Clean(f.Executable) != f.Executable || strings.ContainsAny(f.Executable, "\n\r\t") {
			return c, fmt.Errorf("executable must be a clean absolute path, like /usr/bin/gdb")
		}
		var uid int64
		if f.UID == "any" {
			uid = -1
		} else if uid, err = strconv.ParseInt(f.UID, 10, 64); err != nil || uid < 0 || uid > 1<<32-2 {
			return c, fmt.Errorf("uid must be a user id (0-4294967294) or \"any\"")
		}
		d, err := time.ParseDuration(f.Duration)
		if err != nil || d <= 0 || d > maxBreakGlass {
			return c, fmt.Errorf("duration of the grant must be between 1s and %s, like 15m", maxBreakGlass)
		}
		c.Rule, c.Executable, c.UID, c.Duration = f.Rule, f.Executable, &uid, d.String()
	default:
		return c, fmt.Errorf("action must be uninstall or break-glass")
	}
	c.IssuedAt = now.UTC().Truncate(time.Second)
	c.ExpiresAt = c.IssuedAt.Add(valid)
	c.Nonce = randomToken(16)
	return c, c.Check()
}

// tokensPost signs a token with the collector's operator key, records the issuance (log and a
// console_tokens row) and shows the token once.
func (c *Console) tokensPost(w http.ResponseWriter, r *http.Request, s *session) {
	pf := r.PostForm
	f := tokenForm{Action: pf.Get("action"), Host: strings.TrimSpace(pf.Get("host")), Reason: pf.Get("reason"), Valid: strings.TrimSpace(pf.Get("valid")),
		Rule: strings.TrimSpace(pf.Get("rule")), Executable: strings.TrimSpace(pf.Get("executable")), UID: strings.TrimSpace(pf.Get("uid")),
		Duration: strings.TrimSpace(pf.Get("duration"))}
	if c.opts.OperatorKey == nil {
		d := c.tokensData(r, s, f)
		d.Error = "No operator key is configured on this collector (console.operator_key): tokens cannot be issued here."
		c.render(w, r, s, http.StatusServiceUnavailable, "tokens", "Operator tokens", d)
		return
	}
	claims, err := claimsFromForm(f, s.User, c.opts.Now())
	if err != nil {
		d := c.tokensData(r, s, f)
		d.Error = err.Error()
		c.render(w, r, s, http.StatusBadRequest, "tokens", "Operator tokens", d)
		return
	}
	tok, err := optoken.Sign(c.opts.OperatorKey, claims)
	if err != nil {
		d := c.tokensData(r, s, f)
		d.Error = "signing failed: " + err.Error()
		c.render(w, r, s, http.StatusBadRequest, "tokens", "Operator tokens", d)
		return
	}
	detail := ""
	if claims.Action == optoken.ActionBreakGlass {
		uid := strconv.FormatInt(*claims.UID, 10)
		if *claims.UID < 0 {
			uid = "any"
		}
		detail = fmt.Sprintf("rule=%s executable=%s uid=%s duration=%s", claims.Rule, claims.Executable, uid, claims.Duration)
	}
	sum := sha256.Sum256([]byte(tok))
	id, err := c.st.RecordToken(r.Context(), store.IssuedToken{Issued: claims.IssuedAt, Expires: claims.ExpiresAt, Operator: s.User,
		Action: claims.Action, Host: claims.Host, Reason: claims.Reason, Detail: detail, Nonce: claims.Nonce, TokenSHA256: sum[:]})
	if err != nil {
		// Not recorded, so not shown: an unrecorded token must not leave the console.
		c.log.Error("console could not record an issued token; not showing it", "err", err)
		c.fail(w, r, s, http.StatusServiceUnavailable, "The token could not be recorded, so it is not shown. Try again.")
		return
	}
	c.log.Warn("console issued operator token", "id", id, "operator", s.User, "action", claims.Action, "host", claims.Host,
		"reason", claims.Reason, "detail", detail, "expires", claims.ExpiresAt, "nonce", claims.Nonce, "token_sha256", hex.EncodeToString(sum[:]))
	d := c.tokensData(r, s, tokenForm{})
	d.Issued, d.Claims = tok, &claims
	c.render(w, r, s, http.StatusOK, "tokens", "Operator tokens", d)
}
