package detect

import (
	"bytes"
	"encoding/base64"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

var (
	pemBegin = []byte("-----BEGIN ")
	pemEnd   = []byte("-----END ")
	dashes5  = []byte("-----")
)

// findPEM reports "-----BEGIN <X> PRIVATE KEY-----" ... "-----END <X> PRIVATE KEY-----" blocks
// whose body is base64 (line breaks may be real or written as \n, \r\n escapes, as in JSON or YAML
// strings) decoding to at least 32 bytes. The block is reported whether or not its DER parses
// (a damaged private key is still a private key); it is attributed to a configured key when it does.
func (d *Detector) findPEM(w *window) {
	b := w.b
	for i := 0; i < len(b); {
		k := bytes.Index(b[i:], pemBegin)
		if k < 0 {
			return
		}
		st := i + k
		i = st + len(pemBegin)
		lab := b[i:min(len(b), i+48)]
		e := bytes.Index(lab, dashes5)
		if e < 0 {
			continue
		}
		label := lab[:e]
		if !bytes.HasSuffix(label, []byte("PRIVATE KEY")) || !printable(bytes.ReplaceAll(label, []byte(" "), []byte("x"))) {
			continue
		}
		bodyStart := i + e + len(dashes5)
		lim := min(len(b), st+MaxMatch)
		if bodyStart >= lim {
			continue
		}
		endMarker := make([]byte, 0, 64)
		endMarker = append(append(append(endMarker, pemEnd...), label...), dashes5...)
		k2 := bytes.Index(b[bodyStart:lim], endMarker)
		if k2 < 0 {
			continue
		}
		end := bodyStart + k2 + len(endMarker)
		der, encrypted, ok := decodePEMBody(b[bodyStart : bodyStart+k2])
		if !ok {
			continue
		}
		kind, pp := classifyPEM(string(label), der, encrypted)
		key := pubkeys.Match(d.attr, pp.pub)
		w.add(st, end-st, kind, key)
		w.learn(pp, key)
		i = end
	}
}

func classifyPEM(label string, der []byte, encrypted bool) (string, privParts) {
	switch label {
	case "RSA PRIVATE KEY":
		if encrypted {
			return KindPEMRSAEncrypted, privParts{}
		}
		pp, _ := parsePKCS1Parts(der)
		return KindPEMRSA, pp
	case "PRIVATE KEY":
		pp, _ := parsePKCS8Parts(der)
		return KindPEMPKCS8, pp
	case "ENCRYPTED PRIVATE KEY":
		return KindPEMPKCS8Enc, privParts{}
	case "EC PRIVATE KEY":
		if encrypted {
			return KindPEMEC, privParts{}
		}
		pp, _ := parseSEC1Parts(der, nil)
		return KindPEMEC, pp
	case "OPENSSH PRIVATE KEY":
		_, pub, _ := parseOpenSSH(der)
		return KindPEMOpenSSH, privParts{pub: pub}
	}
	return KindPEMOther, privParts{}
}

// decodePEMBody decodes a PEM body leniently: RFC 1421 headers ("Proc-Type: 4,ENCRYPTED",
// "DEK-Info: ..."), real or escaped line breaks, spaces and tabs are allowed; anything else that is
// not base64 rejects the block.
func decodePEMBody(body []byte) (der []byte, encrypted, ok bool) {
	clean := make([]byte, 0, len(body))
	line := make([]byte, 0, 80)
	flush := func() bool {
		if bytes.IndexByte(line, ':') >= 0 {
			if len(clean) > 0 {
				return false // a header after base64 data
			}
			if bytes.Contains(line, []byte("ENCRYPTED")) {
				encrypted = true
			}
		} else {
			for _, c := range line {
				if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
					return false
				}
			}
			clean = append(clean, line...)
		}
		line = line[:0]
		return true
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\n' || c == '\r':
			if !flush() {
				return nil, false, false
			}
		case c == '\\' && i+1 < len(body) && (body[i+1] == 'n' || body[i+1] == 'r'):
			i++
			if !flush() {
				return nil, false, false
			}
		case c == '\\' && i+1 < len(body) && body[i+1] == '\\':
			// double-escaped line break (\\n): the next iteration sees \n
		case c == ' ' || c == '\t':
		default:
			line = append(line, c)
		}
	}
	if !flush() {
		return nil, false, false
	}
	der = make([]byte, len(clean)/4*3+3) // room for either padded or unpadded decoding
	n, err := base64.StdEncoding.Decode(der, clean)
	if err != nil {
		// Tolerate missing padding.
		n, err = base64.RawStdEncoding.Decode(der, bytes.TrimRight(clean, "="))
		if err != nil {
			return nil, false, false
		}
	}
	if n < 32 {
		return nil, false, false
	}
	return der[:n], encrypted, true
}
