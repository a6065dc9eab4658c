package detect

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

var (
	ktyMember        = []byte(`"kty"`)
	ktyMemberEscaped = []byte(`\"kty\"`)
)

// findJWK reports JSON objects with a "kty" member and private members ("d", "p", "q", "dp", "dq",
// "qi", "oth", or "k" for oct keys): single JWKs and each key of a JWKS. The object around each
// "kty" is delimited with a string-aware brace matcher and must parse with encoding/json.
func (d *Detector) findJWK(w *window) {
	b := w.b
	for i := 0; i < len(b); {
		k := bytes.Index(b[i:], ktyMember)
		if k < 0 {
			return
		}
		p := i + k
		i = p + 1
		lo := max(0, p-MaxMatch)
		from := p
		for try := 0; try < 4; try++ {
			ob := bytes.LastIndexByte(b[lo:from], '{')
			if ob < 0 {
				break
			}
			ob += lo
			from = ob
			end := matchBrace(b, ob, min(len(b), ob+MaxMatch))
			if end < 0 {
				continue
			}
			if end <= p {
				continue // a nested object before "kty": try the enclosing one
			}
			var j pubkeys.JWK
			if err := json.Unmarshal(b[ob:end], &j); err != nil || j.Kty == "" {
				break
			}
			if j.HasPrivate() {
				d.reportJWK(w, &j, ob, end)
				i = end
			}
			break
		}
	}
}

// findJWKEscaped reports JWKs written as a JSON string inside another JSON document
// ("{\"kty\":\"RSA\",\"d\":...}"). JWK members never contain braces, so the object is delimited
// by brace depth alone, unescaped, and parsed like a plain JWK.
func (d *Detector) findJWKEscaped(w *window) {
	b := w.b
	for i := 0; i < len(b); {
		k := bytes.Index(b[i:], ktyMemberEscaped)
		if k < 0 {
			return
		}
		p := i + k
		i = p + 1
		lo := max(0, p-MaxMatch)
		ob := bytes.LastIndexByte(b[lo:p], '{')
		if ob < 0 {
			continue
		}
		ob += lo
		end, depth := -1, 0
		for x := ob; x < min(len(b), ob+MaxMatch); x++ {
			if b[x] == '{' {
				depth++
			} else if b[x] == '}' {
				depth--
				if depth == 0 {
					end = x + 1
					break
				}
			}
		}
		if end <= p {
			continue
		}
		unq := make([]byte, 0, end-ob)
		for x := ob; x < end; x++ {
			if b[x] == '\\' && x+1 < end {
				x++
			}
			unq = append(unq, b[x])
		}
		var j pubkeys.JWK
		if err := json.Unmarshal(unq, &j); err != nil || j.Kty == "" || !j.HasPrivate() {
			continue
		}
		d.reportJWK(w, &j, ob, end)
		i = end
	}
}

func (d *Detector) reportJWK(w *window, j *pubkeys.JWK, start, end int) {
	pp := privParts{present: true}
	if pub, err := pubkeys.PublicFromJWK(j); err == nil {
		pp.pub = pub
	}
	key := pubkeys.Match(d.attr, pp.pub)
	w.add(start, end-start, KindJWK, key)
	num := func(s string) *big.Int {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil || len(b) == 0 {
			return nil
		}
		return new(big.Int).SetBytes(b)
	}
	switch j.Kty {
	case "RSA":
		k := &pkcs1Key{N: num(j.N), E: num(j.E), D: num(j.D), P: num(j.P), Q: num(j.Q), Dp: num(j.DP), Dq: num(j.DQ), Qinv: num(j.QI)}
		if k.N == nil || k.E == nil {
			return
		}
		pp.rsa = k
	case "EC":
		if x := num(j.D); x != nil {
			pp.scalar = x.Bytes()
		}
	case "OKP":
		if b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(j.D, "=")); err == nil && len(b) == 32 {
			pp.edSeed = b
		}
	}
	w.learn(pp, key)
}

// matchBrace returns the index just past the '}' closing the '{' at b[start], or -1 if it is not
// closed before lim.
func matchBrace(b []byte, start, lim int) int {
	depth := 0
	inStr := false
	for i := start; i < lim; i++ {
		c := b[i]
		if inStr {
			switch c {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				if c != '}' {
					return -1
				}
				return i + 1
			}
			if depth < 0 {
				return -1
			}
		}
	}
	return -1
}
