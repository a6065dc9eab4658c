// Package objhash holds the SHA-256 of the BPF object the agent embeds (bpf/keyguard_x86_bpfel.o), so
// that every keyguard binary can print it in its version without embedding the object itself.
// `make generate-bpf` rewrites sha256.go after bpf2go; a test checks it against the object.
package objhash

//go:generate go run gen.go
