// Package dumps reads, redacts and verifies x86-64 Linux ELF core dumps as the kernel writes them,
// in one pass over a pipe and in bounded memory.
//
// # Input
//
// The layout of fs/binfmt_elf.c elf_core_dump: the ELF header, the program headers, the PT_NOTE
// data, padding to a page, then the PT_LOAD data in file-offset order (pages the kernel skipped
// arrive as zeros on a pipe, or as holes in a file). The input is read once, front to back, never
// seeked. Anything else is refused with an error, and the caller must discard the dump:
// not ELFCLASS64/little-endian/ET_CORE/EM_X86_64, unexpected header or entry sizes, section headers, PN_XNUM
// (more than 65534 program headers), program header types other than PT_NOTE and PT_LOAD carrying
// data, data regions that overlap or are not in program-header order, PT_NOTE data after PT_LOAD
// data (gdb's gcore writes notes last: such a file cannot be classified in one pass), overlapping
// PT_LOAD memory ranges, a PT_LOAD with file size above memory size, more than MaxNoteBytes of
// notes, a note header, name or descriptor that runs past its segment, NT_PRSTATUS, NT_PRPSINFO
// or NT_SIGINFO of the wrong size, a malformed NT_FILE or a second one, a truncated input, more
// than MaxTrailing bytes after the last segment.
//
// # What Redact removes
//
// Output has exactly the input's size and layout: the same ELF header, program headers, note
// headers and offsets, so debug/elf, readelf and gdb read it as they read the input.
//
//   - Memory: every PT_LOAD byte is zeroed unless it is kept. Kept are the bytes of file-backed
//     mappings — NT_FILE entries, except those that are memory with no file on disk (paths ending
//     in " (deleted)", /memfd:, /dev/zero, /SYSV…, /anon_hugepage, /dev/shm/; see
//     Mapping.Anonymous) — whether writable (.data, relocated pages) or not (ELF headers, text);
//     and the vdso (the read-only segment at NT_AUXV's AT_SYSINFO_EHDR), which gdb uses to unwind
//     through it. So anonymous memory is zeroed whether writable or not (heap, mmap'ed buffers,
//     read-only pages a program mprotect'ed its keys into, thread stacks).
//   - Stacks: a segment holding some thread's RSP is zeroed like any anonymous memory by default.
//     With Options.KeepStacks, for each thread the range [RSP−128, RSP+StackLimit) within its
//     segment is kept (the red zone and the live frames, what a backtrace needs); the rest of the
//     segment (dead frames below the stack pointer) is zeroed.
//   - Registers: in each NT_PRSTATUS, pr_reg's r15, r14, r13, r12, rbx, r11, r10, r9, r8, rax,
//     rcx, rdx, rsi and rdi are zeroed; rip, rsp, rbp, orig_rax, fs_base and gs_base are kept;
//     eflags keeps its low 32 bits, and cs, ss, ds, es, fs, gs their low 16 bits (all the kernel
//     ever writes there). Every other NT_PRSTATUS field is kept. NT_FPREGSET, NT_PRXFPREG and
//     NT_X86_XSTATE descriptors (x87/SSE/AVX/AVX-512 state, where key schedules live) are zeroed
//     entirely. Notes are recognised by type, whatever their owner name.
//   - Gaps: bytes covered by no header and no segment (padding) are zeroed.
//   - Detector matches: everything kept — ELF and program headers, every note, kept memory — goes
//     through the key detector (package detect) as one stream, and every match is zeroed before
//     any of its bytes is written: output is held back until the detector has settled it
//     (detect.Stream.Settled), and a match reported for bytes already written is an error. A
//     match in the ELF or program headers is an error (zeroing it would break the core). Zeroed
//     memory is fed to the detector as the zeros it becomes (long zero runs shortened, see
//     feeder), so the redactor scans exactly what Verify will scan.
//
// # Contract
//
// Redact writes output progressively. If it returns an error, what it wrote is incomplete and may
// not be safe: the caller writes to a temporary file, and passes the dump on only when Redact
// returned nil and Verify, a separate pass over the written file, found nothing.
//
// With Options.Sparse and an empty regular output file, zero runs of 64 KiB or more are left as
// holes (same bytes when read, little disk). Inspect reads only the headers and notes; Peek does
// the same on a pipe and returns a reader that replays the whole dump, for a handler that decides
// from the notes and then redacts or copies without buffering the dump.
//
// # Memory
//
// Redact holds the program headers (56 bytes each), one note at a time (NT_FILE at most 16 MiB)
// and the parsed NT_FILE mappings, the detector's window (about 2 MiB plus a 2 MiB table when
// RSA keys are configured) and the output it holds back (about as much again); never the dump.
package dumps
