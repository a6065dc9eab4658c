package detect

import (
	"bytes"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// findOpenSSH reports binary openssh-key-v1 containers (the decoded body of an "OPENSSH PRIVATE
// KEY" PEM block, as OpenSSH and x/crypto/ssh hold it in memory).
func (d *Detector) findOpenSSH(w *window) {
	b := w.b
	for i := 0; i < len(b); {
		k := bytes.Index(b[i:], opensshMagic)
		if k < 0 {
			return
		}
		p := i + k
		i = p + 1
		n, pub, ok := parseOpenSSH(b[p:min(len(b), p+MaxMatch)])
		if !ok {
			continue
		}
		w.add(p, n, KindOpenSSHBinary, pubkeys.Match(d.attr, pub))
		i = p + n
	}
}
