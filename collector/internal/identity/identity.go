// Package identity decides who a gRPC caller is and what it may call. Over mTLS the identity is the
// verified client certificate's Subject CommonName and its role the Subject OrganizationalUnit:
// "keyguard-host" may call IngestService, "keyguard-operator" may call QueryService; any verified
// certificate may use health and reflection. In plaintext loopback mode there is no certificate: the host
// identity comes from the "x-keyguard-host" request metadata and every call is allowed.
package identity

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Roles carried in the certificate's OrganizationalUnit.
const (
	RoleHost     = "keyguard-host"
	RoleOperator = "keyguard-operator"
	// RoleCollector may record witness entries (WitnessService): a collector that keeps this one as
	// the witness of its agents' checkpoints.
	RoleCollector = "keyguard-collector"
)

// PlaintextHostHeader is the metadata key naming the host in plaintext mode.
const PlaintextHostHeader = "x-keyguard-host"

// Identity is an authenticated caller.
type Identity struct {
	Name   string
	Roles  []string
	Serial *big.Int // nil in plaintext mode
	// Cert is the verified client certificate (nil in plaintext mode).
	Cert *x509.Certificate
}

// Has reports whether the identity carries role.
func (id Identity) Has(role string) bool {
	for _, r := range id.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// ValidName reports whether s is acceptable as a host identity: 1-253 bytes of letters, digits, '.', '-', '_'.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, r := range s {
		ok := r == '.' || r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}

type ctxKey struct{}

// FromContext returns the identity the interceptor attached.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Authorizer authenticates and authorises calls.
type Authorizer struct {
	// Plaintext: no TLS; identity from metadata (loopback demo only).
	Plaintext bool
	// Revoked, when set, is consulted on every call so a certificate revoked while a stream is open stops
	// working on its next call.
	Revoked func(serial *big.Int) bool
}

func (a Authorizer) identify(ctx context.Context) (Identity, error) {
	if a.Plaintext {
		md, _ := metadata.FromIncomingContext(ctx)
		name := ""
		if v := md.Get(PlaintextHostHeader); len(v) > 0 {
			name = v[0]
		}
		return Identity{Name: name, Roles: []string{RoleHost, RoleOperator}}, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, status.Error(codes.Unauthenticated, "a verified client certificate is required")
	}
	leaf := info.State.VerifiedChains[0][0]
	return fromCert(leaf), nil
}

func fromCert(c *x509.Certificate) Identity {
	return Identity{Name: c.Subject.CommonName, Roles: c.Subject.OrganizationalUnit, Serial: c.SerialNumber, Cert: c}
}

func (a Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	id, err := a.identify(ctx)
	if err != nil {
		return ctx, err
	}
	if id.Serial != nil && a.Revoked != nil && a.Revoked(id.Serial) {
		return ctx, status.Errorf(codes.PermissionDenied, "client certificate %q (serial %s) has been revoked", id.Name, id.Serial.Text(16))
	}
	switch {
	case strings.HasPrefix(method, "/keyguard.v1.IngestService/"):
		if !id.Has(RoleHost) {
			return ctx, status.Errorf(codes.PermissionDenied, "certificate %q may not push events: host certificates need OU %q", id.Name, RoleHost)
		}
		if !ValidName(id.Name) {
			if a.Plaintext {
				return ctx, status.Errorf(codes.InvalidArgument, "plaintext mode: set a valid host name in the %q metadata (letters, digits, '.', '-', '_'); got %q", PlaintextHostHeader, id.Name)
			}
			return ctx, status.Errorf(codes.PermissionDenied, "certificate common name %q is not a valid host identity (letters, digits, '.', '-', '_')", id.Name)
		}
	case strings.HasPrefix(method, "/keyguard.v1.WitnessService/"):
		if !id.Has(RoleCollector) || id.Cert == nil {
			return ctx, status.Errorf(codes.PermissionDenied, "certificate %q may not record witness entries: collector certificates need OU %q (and mTLS)", id.Name, RoleCollector)
		}
	case strings.HasPrefix(method, "/keyguard.v1.QueryService/"):
		if !id.Has(RoleOperator) {
			return ctx, status.Errorf(codes.PermissionDenied, "certificate %q may not query events: operator certificates need OU %q", id.Name, RoleOperator)
		}
	}
	return context.WithValue(ctx, ctxKey{}, id), nil
}

// Unary is the unary server interceptor.
func (a Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream is the stream server interceptor.
func (a Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &wrapped{ServerStream: ss, ctx: ctx})
}

type wrapped struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrapped) Context() context.Context { return w.ctx }

// Describe formats an identity for logs.
func (id Identity) String() string {
	if id.Serial == nil {
		return fmt.Sprintf("%s (plaintext)", id.Name)
	}
	return fmt.Sprintf("%s (serial %s)", id.Name, id.Serial.Text(16))
}
