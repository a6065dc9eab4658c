// Package objhash holds the SHA-256 of the BPF object the agent embeds (bpf/keyguard_x86_bpfel.o on
// amd64, bpf/keyguard_arm64_bpfel.o on arm64), so that every keyguard binary can print it in its version
// without embedding the object itself. `make generate-bpf` rewrites sha256_<goarch>.go after bpf2go; a
// test checks each against its object.
package objhash

//go:generate go run gen.go
