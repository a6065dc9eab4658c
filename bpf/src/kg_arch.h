/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The architecture-specific bits of keyguard.bpf.c: the prefix of the syscall entry functions (fexit
 * targets), how the current syscall's number and first two arguments are read from the task's pt_regs,
 * and the syscall numbers op_of() and in_vm_rw() know.
 * bpf2go builds the object once per target with -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 and that
 * architecture's vmlinux.h (src/x86/, src/arm64/) on the include path.
 *
 * arm64 uses the generic syscall table: no open, readlink, stat or lstat (only their *at forms); those
 * get numbers no syscall has, so their cases never match.
 */
#ifndef KG_ARCH_H
#define KG_ARCH_H

#if defined(__TARGET_ARCH_x86)
#define KG_SYSCALL_PREFIX "__x64_sys_" /* the syscall entry functions fexit attaches to */
#define KG_COMPAT_PREFIX "__ia32_compat_sys_" /* 32-bit entries (int 0x80, sysenter, syscall from ia32) */
#define KG_X32_PREFIX "__x64_compat_sys_"     /* x32 entries */
#define KG_SC_NR(regs) BPF_CORE_READ(regs, orig_ax)
#define KG_NR_OPEN 2
#define KG_NR_STAT 4
#define KG_NR_LSTAT 6
#define KG_NR_READLINK 89
#define KG_NR_PTRACE 101
#define KG_NR_OPENAT 257
#define KG_NR_NEWFSTATAT 262
#define KG_NR_READLINKAT 267
#define KG_NR_PERF_EVENT_OPEN 298
#define KG_NR_PROCESS_VM_READV 310
#define KG_NR_PROCESS_VM_WRITEV 311
#define KG_NR_KCMP 312
#define KG_NR_STATX 332
/* The 32-bit (ia32) and x32 numbers of process_vm_readv/writev. Unused as native x86-64 numbers (the
 * native table skips 335-423; x32 numbers carry bit 30), so a match names the syscall on every entry. */
#define KG_NR_COMPAT_PROCESS_VM_READV 347
#define KG_NR_COMPAT_PROCESS_VM_WRITEV 348
#define KG_NR_X32_PROCESS_VM_READV (0x40000000 | 539)
#define KG_NR_X32_PROCESS_VM_WRITEV (0x40000000 | 540)
#elif defined(__TARGET_ARCH_arm64)
#define KG_SYSCALL_PREFIX "__arm64_sys_"
#define KG_COMPAT_PREFIX "__arm64_compat_sys_" /* AArch32 entries */
#define KG_SC_NR(regs) BPF_CORE_READ(regs, syscallno)
#define KG_NR_OPEN -2
#define KG_NR_STAT -3
#define KG_NR_LSTAT -4
#define KG_NR_READLINK -5
#define KG_NR_OPENAT 56
#define KG_NR_READLINKAT 78
#define KG_NR_NEWFSTATAT 79
#define KG_NR_PTRACE 117
#define KG_NR_PERF_EVENT_OPEN 241
#define KG_NR_PROCESS_VM_READV 270
#define KG_NR_PROCESS_VM_WRITEV 271
#define KG_NR_KCMP 272
#define KG_NR_STATX 291
/* AArch32 (EABI) numbers; the native table has none there (it skips 295-402). No x32 on arm64. */
#define KG_NR_COMPAT_PROCESS_VM_READV 376
#define KG_NR_COMPAT_PROCESS_VM_WRITEV 377
#define KG_NR_X32_PROCESS_VM_READV -6
#define KG_NR_X32_PROCESS_VM_WRITEV -7
#else
#error "keyguard.bpf.c supports __TARGET_ARCH_x86 and __TARGET_ARCH_arm64"
#endif

/* Both architectures number these two alike (438 and 437). */
#define KG_NR_OPENAT2 437
#define KG_NR_PIDFD_GETFD 438

/* The current syscall's first and second arguments (orig_x0 on arm64: x0 is the return value). */
#define KG_SC_ARG0(regs) PT_REGS_PARM1_CORE_SYSCALL(regs)
#define KG_SC_ARG1(regs) PT_REGS_PARM2_CORE_SYSCALL(regs)

#endif /* KG_ARCH_H */
