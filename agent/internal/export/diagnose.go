package export

import (
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Delivery problem reasons (metrics label keyguard_agent_export_failures_total{reason}).
const (
	ReasonUnreachable  = "unreachable"   // no TCP connection: address, DNS, firewall, collector down
	ReasonTLSUntrusted = "tls_untrusted" // the collector's certificate does not verify against ca_file
	ReasonCertExpired  = "cert_expired"  // a certificate (ours or the collector's) is expired or not yet valid
	ReasonCertRefused  = "cert_refused"  // the collector refused our client certificate (revoked, unknown CA, wrong role)
	ReasonRefused      = "refused"       // the collector refused the stream or a batch (storage, conflict, invalid)
	ReasonOther        = "other"
)

// Reasons lists every reason, so metrics can start each at 0.
var Reasons = []string{ReasonUnreachable, ReasonTLSUntrusted, ReasonCertExpired, ReasonCertRefused, ReasonRefused, ReasonOther}

// Problem is why the agent cannot deliver events now, and what to do about it.
type Problem struct {
	Reason string    `json:"reason"`
	Advice string    `json:"advice"`
	Error  string    `json:"error"`
	Since  time.Time `json:"since"`
}

// Diagnose classifies a failed stream's error and says what the operator should do.
func Diagnose(err error, collector string) (reason, advice string) {
	msg := strings.ToLower(err.Error())
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(msg, s) {
				return true
			}
		}
		return false
	}
	code := codes.Unknown
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		code = se.GRPCStatus().Code()
	}
	switch {
	case has("certificate has expired", "expired certificate", "not yet valid", "certificate expired"):
		return ReasonCertExpired, "a TLS certificate is expired or not yet valid (this host's cert_file, or the collector's): renew it and check both clocks; events stay in the spool until then"
	case has("unknown authority", "failed to verify certificate", "certificate is valid for", "not valid for any names", "doesn't contain any ip sans"):
		return ReasonTLSUntrusted, "the collector's certificate does not verify: check that ca_file holds the CA that signed it and that the collector address (" + collector + ") is a name or IP in it"
	case has("revoked", "bad certificate", "unknown certificate", "certificate required", "handshake failure") || code == codes.PermissionDenied || code == codes.Unauthenticated:
		return ReasonCertRefused, "the collector refused this host's certificate (revoked, signed by a CA it does not trust, or not a host certificate): re-enroll this host or issue a new host certificate"
	case has("connection refused", "no such host", "i/o timeout", "no route to host", "network is unreachable", "deadline exceeded", "connection reset", "name resolver", "produced zero addresses") ||
		code == codes.Unavailable && !has("could not store", "storage"):
		return ReasonUnreachable, "cannot reach the collector at " + collector + ": check the export collector address, DNS and firewall, and that the collector runs; events stay in the spool until then"
	case code == codes.InvalidArgument || code == codes.AlreadyExists || code == codes.Unavailable || code == codes.ResourceExhausted:
		return ReasonRefused, "the collector refused the events (see the error and the collector's log): it may be out of storage, or this spool conflicts with what it holds"
	}
	return ReasonOther, "events cannot be delivered to " + collector + ": see the error; events stay in the spool"
}
