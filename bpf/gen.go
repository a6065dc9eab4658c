// Package bpf holds keyguard's BPF programs (src/keyguard.bpf.c) and the Go bindings bpf2go generates from
// them, once per architecture: amd64 (keyguard_x86_bpfel.go/.o, built against src/x86/vmlinux.h) and arm64
// (keyguard_arm64_bpfel.go/.o, src/arm64/vmlinux.h); the arch-specific C is in src/kg_arch.h. The generated
// files are committed so `go build` needs no clang; run `make generate-bpf` after changing the C sources
// and commit the result (CI fails on drift). `make vmlinux` refreshes both headers.
package bpf

import "crypto/sha256"

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64 -type kg_event -type kg_mark -type kg_rule -type kg_file_id -type kg_accessor_key -type kg_grant -type kg_agent -type kg_late_mark -type kg_proc -type kg_mode -type kg_decision -type kg_event_kind -type kg_op -type kg_reason -type kg_counter -type kg_dump_mode -type kg_dump_action -type kg_handler -type kg_tamper -type kg_own_kind -type kg_own_key -type kg_side_door -type kg_module_mode -type kg_settings -type kg_install -type kg_token_id -type kg_key_op -type kg_guarded -type kg_access_class -type kg_agg_key -type kg_agg -type kg_agg_stat -type kg_digest_key -type kg_exe_check Keyguard src/keyguard.bpf.c -- -Isrc -Isrc/x86
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target arm64 -type kg_event -type kg_mark -type kg_rule -type kg_file_id -type kg_accessor_key -type kg_grant -type kg_agent -type kg_late_mark -type kg_proc -type kg_mode -type kg_decision -type kg_event_kind -type kg_op -type kg_reason -type kg_counter -type kg_dump_mode -type kg_dump_action -type kg_handler -type kg_tamper -type kg_own_kind -type kg_own_key -type kg_side_door -type kg_module_mode -type kg_settings -type kg_install -type kg_token_id -type kg_key_op -type kg_guarded -type kg_access_class -type kg_agg_key -type kg_agg -type kg_agg_stat -type kg_digest_key -type kg_exe_check Keyguard src/keyguard.bpf.c -- -Isrc -Isrc/arm64

// ObjectDigest identifies this build of the BPF object. The loader pins links under it, so a restarted
// agent of the same build adopts what is pinned and a different build replaces it.
func ObjectDigest() [32]byte { return sha256.Sum256(_KeyguardBytes) }
