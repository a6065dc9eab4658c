// Package delivery holds the end-to-end delivery tests and benchmarks of the agent's event export:
// the real keyguard-collector binary, the real export pipeline in the keyguard-loadgen binary, real
// loopback gRPC with mTLS, real SQLite and a real PostgreSQL, with collectors and agents SIGKILLed and
// network paths cut mid-stream. It has no non-test code.
package delivery
