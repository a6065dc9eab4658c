// SPDX-License-Identifier: GPL-2.0
/*
 * keyguard BPF LSM programs: keep every other process, root included, out of the memory of processes
 * that hold signing keys.
 *
 * Protection is a mark in task storage on the thread-group leader. It is set in the kernel when a
 * process executes a protected executable (bprm_check_security) or opens a protected key file
 * (file_open), by the agent for processes found running (pidfd-keyed update), and copied to every
 * fork child in task_alloc, so there is no window. A process in a protected cgroup is protected by
 * a lookup of its cgroup ancestry at check time.
 *
 * Every way into another process's memory that the kernel guards with ptrace_may_access() ends in
 * ptrace_access_check; PTRACE_TRACEME, reads through /proc files opened before protection, and
 * tracers that attached before protection have their own hooks here.
 *
 * Verifier notes (6.1 and 6.12): deny branches are written as `if (cond) { count; return -EPERM; }`
 * because 6.12 rejects a negated-boolean return value.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "keyguard.h"
#include "kg_arch.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define EAGAIN 11
#define ENOMEM 12
#define EACCES 13
#define CLONE_VM 0x00000100
#define CLONE_THREAD 0x00010000
#define PTRACE_MODE_NOAUDIT 0x04
#define MAY_WRITE 0x2
#define MAY_READ 0x4
#define PROC_SUPER_MAGIC 0x9fa0
#define KG_CGROUP_DEPTH 8
#define PF_SIGNALED 0x00000400
#define SIGKILL 9
#define BPF_FS_MAGIC 0xcafe4a11
#define FMODE_WRITE 0x2
#define BPF_LINK_UPDATE_CMD 29
#define BPF_LINK_GET_FD_BY_ID_CMD 30
#define BPF_LINK_DETACH_CMD 34
#define BPF_PROG_LOAD_CMD 5
#define BPF_F_SLEEPABLE_FLAG (1U << 4)

/* Load-time settings, written by the agent before loading (see loader.Config). */
const volatile __u32 cfg_report_noaudit = 0; /* emit events for PTRACE_MODE_NOAUDIT checks (ps, top) */
const volatile __u32 cfg_deny_traced = 1;    /* refuse exec/key-open by a process under a tracer */
const volatile __u32 cfg_dump_guard = 1;     /* kg_dump_emit is attached; 0: redact is enforced as block */
const volatile __u32 cfg_vm_rw_tracked = 1;  /* the ends of process_vm_readv/writev are traced (fexit attached) */
const volatile __u32 cfg_deny_metadata = 0;  /* decide metadata reads like memory (see access_class) */
const volatile __u32 cfg_inflight_wait = 1;  /* 0 only in the race test's control run: key opens ignore reads in
					      * flight and /proc/PID/mem readers that passed their check before the mark
					      * are not killed (the no-window design switched off) */
const volatile __u32 cfg_fork_recheck = 1; /* 0 only in the fork race test's control run: no second look at
					     * the parent's mark after the child's memory is copied, and key
					     * opens ignore processes that share the opener's memory */
const volatile __u32 cfg_digest = 1; /* bpf_ima_file_hash works here: executables are hashed at exec (loader
				      * variant DigestIMA); 0: no digest checks (strict rules then admit nobody,
				      * and keyguard's trust is by inode only) */

/* Keeps the shared types in BTF so bpf2go can generate their Go definitions (-type). */
const volatile struct {
	enum kg_mode mode;
	enum kg_decision decision;
	enum kg_event_kind kind;
	enum kg_op op;
	enum kg_reason reason;
	enum kg_counter counter;
	enum kg_dump_mode dump_mode;
	enum kg_dump_action dump_action;
	struct kg_handler handler;
	enum kg_tamper tamper;
	enum kg_own_kind own_kind;
	struct kg_own_key own_key;
	enum kg_side_door side_door;
	struct kg_event event;
	struct kg_file_id file_id;
	struct kg_accessor_key accessor_key;
	struct kg_grant grant;
	struct kg_agent agent;
	struct kg_late_mark late_mark;
	struct kg_rule rule;
	struct kg_mark mark;
	enum kg_module_mode module_mode;
	struct kg_settings settings;
	struct kg_install install;
	struct kg_token_id token_id;
	enum kg_key_op key_op;
	enum kg_guarded guarded;
	enum kg_access_class access_class;
	struct kg_agg_key agg_key;
	struct kg_agg agg;
	enum kg_agg_stat agg_stat;
	struct kg_digest_key digest_key;
	struct kg_exe_check exe_check;
} kg_types;

/* All state lives in maps pinned by name in the agent's bpffs folder, so it survives agent restarts
 * and upgrades (the loader reuses compatible pinned maps). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Events that did not fit in the ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kg_mark);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} marks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct kg_late_mark);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} late_marks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct kg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kg_file_id);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} exe_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kg_file_id);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} key_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cgroup_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kg_accessor_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct kg_accessor_key);
	__type(value, struct kg_grant);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} breakglass SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_agent);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent SEC(".maps");

/* keyguard's dump handler executable, set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_handler);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} handler SEC(".maps");

/* Pipes the kernel created for keyguard's handler: inode address of the helper's stdin → its inode
 * number (pipefs numbers are not reused soon, so a freed and reallocated inode does not match). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} handler_pipes SEC(".maps");

/* keyguard's own maps, programs, links and bpffs folders, filled by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct kg_own_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} own SEC(".maps");

/* Host-wide settings from the policy (one entry; zero = strictest). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

/* What the operator approved at install time; read by the agent only (no program reads it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_install);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} install SEC(".maps");

/* Who may open a rule's key files besides its own processes (policy `openers`): executable + uid under
 * the rule's id; dev = ino = KG_OPENERS_ANY with uid KG_ANY_UID means anyone (`openers: any`). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kg_accessor_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} openers SEC(".maps");

/* Block devices (kernel dev_t) whose contents include a key file's filesystem: the filesystem's own
 * device, the whole disk of a partition, a loop or dm device's lower devices. Value: a rule id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} raw_devs SEC(".maps");

/* Memory reads of another process in flight: reader thread id → target tgid, from just before the
 * read's check until its copy is over (process_vm_readv/writev: ptrace_access_check to the end of
 * process_vm_rw; /proc/PID/mem: entry to exit of mem_rw, whatever fd, syscall or io_uring request
 * brought it there). A key-file open that protects its process waits for these (EAGAIN). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inflight SEC(".maps");

/* Operator tokens already used (SHA-256 of the nonce → expiry, unix seconds): a token works once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kg_token_id);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} used_tokens SEC(".maps");

/* Approved executable digests: strict rules' and keyguard's own (see struct kg_digest_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kg_digest_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} digests SEC(".maps");

/* What exec found each process's executable to be (struct kg_exe_check), on the thread-group leader. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kg_exe_check);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} exe_checks SEC(".maps");

/* Is the digest check switched on for id (a strict rule, or KG_DIGEST_AGENT)? */
static __always_inline int digest_required(__u32 id)
{
	struct kg_digest_key k = {.rule_id = id};

	return bpf_map_lookup_elem(&digests, &k) != 0;
}

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&lost, &zero);
	if (c)
		*c += 1;
}

/* Fast paths (see keyguard.h): a filter over listed files and cgroups, and two "ever used" flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KG_FAST_SLOTS);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* registered as keyguard's own: nobody else can clear a slot */
} fastpath SEC(".maps");

/* Is a fastpath slot set? An inlined array lookup; a slot out of range counts as set (fail closed). */
static __always_inline int fast_set(__u32 slot)
{
	__u8 *v = bpf_map_lookup_elem(&fastpath, &slot);

	return !v || *v;
}

static __always_inline __u32 fast_slot(__u32 dev, __u64 id)
{
	return KG_FAST_FIRST + (__u32)(((((__u64)dev << 32) ^ id) * KG_FAST_MUL) >> (64 - KG_FAST_BITS));
}

/* May the file (dev, ino) be in exe_rules, key_rules or own (KG_OWN_EXE)? 0 proves it is in none, so
 * the hash lookups by (dev, ino) can be skipped for every file keyguard does not list. */
static __always_inline int maybe_listed(__u64 dev, __u64 ino)
{
	return fast_set(fast_slot((__u32)dev, ino));
}

static __always_inline void task_exe(struct task_struct *t, __u64 *dev, __u64 *ino)
{
	struct file *f = BPF_CORE_READ(t, mm, exe_file);

	*dev = 0;
	*ino = 0;
	if (!f)
		return;
	*dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	*ino = BPF_CORE_READ(f, f_inode, i_ino);
}

/* Scratch space for building a path, one per CPU (programs do not nest on a CPU here). */
struct kg_scratch {
	char path[KG_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_scratch);
} scratch SEC(".maps");

struct path_walk {
	__u64 d, mnt, mnt_root;
	__u32 off;
	__u32 root;
};

/* One step up the dentry tree, crossing mounts; bpf_loop keeps the verifier's work to one body. */
static long path_step(__u64 i, void *ctx)
{
	struct path_walk *w = ctx;
	struct dentry *d = (struct dentry *)w->d, *parent;
	struct mount *mnt = (struct mount *)w->mnt, *up;
	const unsigned char *name;
	struct kg_scratch *s;
	__u32 zero = 0;
	long n;

	if (w->d == w->mnt_root) {
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (up == mnt) {
			w->root = 1; /* the root of the root mount */
			return 1;
		}
		w->d = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = (__u64)up;
		w->mnt_root = (__u64)BPF_CORE_READ(up, mnt.mnt_root);
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (parent == d) {
		w->root = 1;
		return 1;
	}
	if (w->off >= KG_PATH_LEN / 2)
		return 1; /* truncated: no root marker */
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	name = BPF_CORE_READ(d, d_name.name);
	n = bpf_probe_read_kernel_str(s->path + (w->off & (KG_PATH_LEN / 2 - 1)), KG_PATH_LEN / 2, name);
	if (n <= 0)
		return 1;
	w->off += n;
	w->d = (__u64)parent;
	return 0;
}

/*
 * The executable's path as NUL-terminated components, leaf first, with a "/" component when the walk
 * reached the root (bpf_d_path is not allowed in these hooks). Userspace reverses it; a path without
 * the root marker was cut short.
 */
static __always_inline void exe_path(struct file *f, char *buf)
{
	struct vfsmount *vmnt = BPF_CORE_READ(f, f_path.mnt);
	struct path_walk w = {};
	struct kg_scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return;
	__builtin_memset(s->path, 0, sizeof(s->path));
	w.d = (__u64)BPF_CORE_READ(f, f_path.dentry);
	w.mnt = (__u64)vmnt - bpf_core_field_offset(struct mount, mnt);
	w.mnt_root = (__u64)BPF_CORE_READ(vmnt, mnt_root);
	bpf_loop(32, path_step, &w, 0);
	if (w.root && w.off < KG_PATH_LEN / 2)
		s->path[w.off & (KG_PATH_LEN / 2 - 1)] = '/';
	__builtin_memcpy(buf, s->path, KG_PATH_LEN);
}

static __always_inline void fill_proc(struct kg_proc *p, struct task_struct *t)
{
	struct file *f;
	const unsigned char *name;

	p->pid = BPF_CORE_READ(t, tgid);
	p->tid = BPF_CORE_READ(t, pid);
	p->uid = BPF_CORE_READ(t, real_cred, uid.val);
	p->euid = BPF_CORE_READ(t, cred, euid.val);
	p->cgroup_id = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&p->comm, t, comm);
	task_exe(t, &p->exe_dev, &p->exe_ino);
	f = BPF_CORE_READ(t, mm, exe_file);
	if (f) {
		name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
		bpf_probe_read_kernel_str(p->exe_name, sizeof(p->exe_name), name);
		exe_path(f, p->exe_path);
	}
}

/*
 * kernfs_node's parent pointer was renamed __parent (RCU-protected) in 6.15; probed by CO-RE. Both
 * reads go through flavour types, so the loader knows the one CO-RE drops is guarded (variants.go).
 */
struct kernfs_node___new {
	struct kernfs_node *__parent;
} __attribute__((preserve_access_index));

struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(((struct kernfs_node___new *)0)->__parent))
		return BPF_CORE_READ((struct kernfs_node___new *)kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

/* The rule of the nearest protected cgroup among t's cgroup and its ancestors, or 0. */
static __always_inline __u32 cgroup_rule(struct task_struct *t)
{
	struct kernfs_node *kn;

	if (!fast_set(KG_FAST_CGROUPS)) /* no cgroup rule was ever loaded */
		return 0;
	kn = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn);
	for (int i = 0; i < KG_CGROUP_DEPTH; i++) {
		__u64 id;
		__u32 *r;

		if (!kn)
			return 0;
		id = BPF_CORE_READ(kn, id);
		if (fast_set(fast_slot(KG_FAST_CGROUP_DEV, id))) {
			r = bpf_map_lookup_elem(&cgroup_rules, &id);
			if (r)
				return *r;
		}
		kn = kn_parent(kn);
	}
	return 0;
}

/* task_struct->bpf_storage (5.13 and later), read through a flavour type so a kernel without it only
 * loses the shortcut below. */
struct task_struct___storage {
	struct bpf_local_storage *bpf_storage;
} __attribute__((preserve_access_index));

/*
 * The mark in t's task storage, or NULL. A task that never had task storage of any map (most tasks)
 * has bpf_storage NULL; the helper would read that same pointer first and return NULL, so the helper
 * call is skipped: one field load decides unprotected processes.
 */
static __always_inline int no_task_storage(struct task_struct *t)
{
	return bpf_core_field_exists(((struct task_struct___storage *)0)->bpf_storage) &&
	       !((struct task_struct___storage *)t)->bpf_storage;
}

static __always_inline struct kg_mark *mark_get(struct task_struct *t)
{
	if (no_task_storage(t))
		return 0;
	return bpf_task_storage_get(&marks, t, 0, 0);
}

/* Protection of a task given as a trusted BTF pointer: its leader's mark, or its cgroup. */
static __always_inline int protection(struct task_struct *t, struct kg_mark *out)
{
	struct kg_mark *m = mark_get(t->group_leader);

	if (m && m->rule_id) {
		out->rule_id = m->rule_id;
		out->reason = m->reason;
		return 1;
	}
	out->rule_id = cgroup_rule(t);
	out->reason = KG_REASON_CGROUP;
	return out->rule_id != 0;
}

static __always_inline int is_agent(struct task_struct *t)
{
	__u32 zero = 0;
	struct kg_agent *a = bpf_map_lookup_elem(&agent, &zero);
	__u64 dev, ino;

	if (!a || !a->tgid || a->tgid != BPF_CORE_READ(t, tgid))
		return 0;
	task_exe(t, &dev, &ino);
	return dev == a->exe_dev && ino == a->exe_ino;
}

/* Operation and detail from the accessor's current syscall (numbers: kg_arch.h). */
static __always_inline __u32 op_of(struct task_struct *cur, __s32 *nr_out, char *detail)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(cur);
	const char *path = 0;
	long nr, arg0;
	__u32 op;

	if (!regs)
		return KG_OP_OTHER;
	nr = KG_SC_NR(regs);
	arg0 = KG_SC_ARG0(regs);
	*nr_out = nr;
	switch (nr) {
	case KG_NR_PTRACE:
		if (arg0 == 16)
			return KG_OP_PTRACE_ATTACH;
		if (arg0 == 0x4206)
			return KG_OP_PTRACE_SEIZE;
		return KG_OP_PTRACE_OTHER;
	case KG_NR_PROCESS_VM_READV:
	case KG_NR_COMPAT_PROCESS_VM_READV:
	case KG_NR_X32_PROCESS_VM_READV:
		return KG_OP_PROCESS_VM_READV;
	case KG_NR_PROCESS_VM_WRITEV:
	case KG_NR_COMPAT_PROCESS_VM_WRITEV:
	case KG_NR_X32_PROCESS_VM_WRITEV:
		return KG_OP_PROCESS_VM_WRITEV;
	case KG_NR_PIDFD_GETFD:
		return KG_OP_PIDFD_GETFD;
	case KG_NR_KCMP:
		return KG_OP_KCMP;
	case KG_NR_PERF_EVENT_OPEN:
		return KG_OP_PERF_EVENT_OPEN;
	case KG_NR_OPEN: /* open(path, ...) */
		path = (const char *)arg0;
		op = KG_OP_PROC_OPEN;
		break;
	case KG_NR_OPENAT: /* openat(dirfd, path, ...) */
	case KG_NR_OPENAT2:
		path = (const char *)KG_SC_ARG1(regs);
		op = KG_OP_PROC_OPEN;
		break;
	case KG_NR_READLINK: /* readlink(path, ...) */
	case KG_NR_STAT:
	case KG_NR_LSTAT:
		path = (const char *)arg0;
		op = KG_OP_PROC_LINK;
		break;
	case KG_NR_READLINKAT: /* readlinkat(dirfd, path, ...) */
	case KG_NR_NEWFSTATAT:
	case KG_NR_STATX:
		path = (const char *)KG_SC_ARG1(regs);
		op = KG_OP_PROC_LINK;
		break;
	default:
		return KG_OP_OTHER;
	}
	if (path && detail)
		bpf_probe_read_user_str(detail, KG_DETAIL_LEN, path);
	return op;
}

/* A zeroed event of the given kind for a process's protection, or NULL (counted as lost). */
static __always_inline struct kg_event *new_event(__u32 kind, struct kg_mark *prot)
{
	struct kg_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->kind = kind;
	e->rule_id = prot->rule_id;
	e->reason = prot->reason;
	e->syscall_nr = -1;
	return e;
}

/* ---- Precision and aggregation of access events (issue 13) ----
 *
 * Precision: every ptrace check is classed by what it exposes (enum kg_access_class). A check is
 * metadata only when positively known to be: the accessor's syscall returns names and attributes, never
 * contents (readlink, stat, access families), or it opens through a /proc/PID link that leads to a file
 * rather than into the process (exe, cwd, root, ns/ *), or it opens /proc/PID/attr/ *. The object is
 * named by the kernel (the dentry followed or opened, noted per thread in proc_obj just before its check),
 * never by the path string the accessor passed. Everything else is memory: ptrace, process_vm_*,
 * pidfd_getfd, kcmp, mem, environ, auxv, maps, fd/N, map_files, checks at read time, any mode with ATTACH.
 * Traversal through root and cwd reaches files whose own hooks decide them (key files by inode at open;
 * a /proc/PID/mem below them is its own check); exe opens the binary on disk, not the process.
 *
 * Aggregation: repeated attempts with the same (actor executable and uid, target thread, operation,
 * access mode, class, decision, rule) in one window are one agg entry, whichever process made them: a
 * loop of one-shot attacker processes (fork, or fork+exec of one binary, per attempt) is accounted like
 * a loop in one process, so it cannot fill the ring buffer. The first attempt is reported at once
 * through the ring buffer, naming its process; the others only count, with the last one's process and
 * the number of processes (kg_agg). The window is an epoch (agg_epoch) the agent bumps; it then waits until no
 * program can still use the old one (an update of agg_sync, a map-in-map, waits for an RCU grace period)
 * and drains the old entries into aggregate events. Nothing is evicted: when agg is full, attempts are
 * reported one by one as before, and only a full ring buffer then counts them as lost.
 */
#define EEXIST 17

static __always_inline int str_is(const char *buf, const char *lit, int n);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH); /* an evicted note only makes a check count as memory */
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct kg_proc_obj);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* pinned and registered as keyguard's own: a forged note could let memory pass */
} proc_obj SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 8192);
	__type(key, struct kg_agg_key);
	__type(value, struct kg_agg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agg_epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_AGG_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agg_stats SEC(".maps");

/* A zeroed agg value to insert from (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_agg);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* registered as keyguard's own, so nobody writes counts into it */
} agg_zero SEC(".maps");

/* The agent's RCU barrier: updating an element of a map-in-map returns only after every program that
 * could still see the old agg_epoch has finished. No program reads it. */
struct agg_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct agg_inner);
} agg_sync SEC(".maps");

static __always_inline void agg_stat(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&agg_stats, &idx);
	if (c)
		*c += 1;
}

/* Note the /proc object (a link followed or a file opened) this thread is about to be checked for. */
/* The proc_inode around a /proc inode (container_of, with the offset relocated for the running kernel).
 * Not a trusted pointer: read it with BPF_CORE_READ only. */
static __always_inline struct proc_inode *proc_inode_of(struct inode *inode)
{
	return (struct proc_inode *)((unsigned long)inode - bpf_core_field_offset(struct proc_inode, vfs_inode));
}

/*
 * The task whose pid a /proc/PID or /proc/PID/task/TID inode names (pid->tasks[PIDTYPE_PID].first is its
 * pid_links[PIDTYPE_PID]), or NULL: no pid, or the task is gone. Not a trusted pointer either.
 */
static __always_inline struct task_struct *proc_task(struct inode *inode)
{
	__u64 first = (__u64)BPF_CORE_READ(proc_inode_of(inode), pid, tasks[0].first);

	if (!first)
		return 0;
	return (struct task_struct *)(first - bpf_core_field_offset(struct task_struct, pid_links));
}

static __always_inline void note_proc_obj(struct dentry *d, struct inode *inode, int link)
{
	struct proc_inode *pi = proc_inode_of(inode);
	struct kg_proc_obj o = {.class = KG_CLASS_MEMORY};
	char name[8] = {}, parent[8] = {};
	struct task_struct *task, *leader;
	struct pid *pid;
	__u64 first;
	__u32 tid;

	o.pid = (__u64)BPF_CORE_READ(pi, pid);
	/* No pid (/proc/self, /proc/sys, ...) or the process's own /proc/PID: no ptrace check follows. The
	 * common case (a process reading its own /proc/self/...) leaves here: direct loads, one probe read. */
	if (!o.pid || o.pid == (__u64)bpf_get_current_task_btf()->group_leader->thread_pid)
		return;
	tid = (__u32)bpf_get_current_pid_tgid();
	pid = (struct pid *)o.pid; /* not inside BPF_CORE_READ: o is a local struct, CO-RE cannot relocate it */
	first = (__u64)BPF_CORE_READ(pid, tasks[0].first);
	if (!first) /* the process is gone: no check follows either */
		return;
	task = (struct task_struct *)(first - bpf_core_field_offset(struct task_struct, pid_links));
	leader = BPF_CORE_READ(task, group_leader);
	/*
	 * A note is only read by the check of a protected process. One that has no task storage at all
	 * (so no mark) while no cgroup rule exists is not protected: skip the name reads and the map update.
	 * If it becomes protected before its check, the check finds no note and counts as memory (the strict
	 * class). A note written earlier, while this process was protected, cannot be mistaken for another
	 * process's: the note carries the process's start time (struct pid addresses are reused).
	 */
	if (bpf_core_field_exists(((struct task_struct___storage *)0)->bpf_storage) && !fast_set(KG_FAST_CGROUPS) &&
	    !BPF_CORE_READ((struct task_struct___storage *)leader, bpf_storage))
		return;
	o.start = (__u32)BPF_CORE_READ(leader, start_boottime);
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(d, d_name.name));
	bpf_probe_read_kernel_str(parent, sizeof(parent), BPF_CORE_READ(d, d_parent, d_name.name));
	if (link && (str_is(name, "exe", 4) || str_is(name, "cwd", 4) || str_is(name, "root", 5) || str_is(parent, "ns", 3)))
		o.class = KG_CLASS_METADATA;
	if (!link && str_is(parent, "attr", 5))
		o.class = KG_CLASS_METADATA;
	bpf_map_update_elem(&proc_obj, &tid, &o, BPF_ANY);
}

/* The class of a ptrace check of child in access mode, made during syscall nr (x86-64). */
static __always_inline __u32 access_class(struct task_struct *child, __u32 mode, long nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), class = KG_CLASS_MEMORY;
	struct kg_proc_obj *o;

	if (mode & 0x02 /* ATTACH */)
		return KG_CLASS_MEMORY;
	switch (nr) {
	case 89: case 267:        /* readlink, readlinkat */
	case 4: case 6: case 262: /* stat, lstat, newfstatat */
	case 332:                 /* statx */
	case 21: case 269: case 439: /* access, faccessat, faccessat2 */
		return KG_CLASS_METADATA;
	case 2: case 257: case 437: case 85: /* open, openat, openat2, creat */
		break;
	default:
		return KG_CLASS_MEMORY;
	}
	o = bpf_map_lookup_elem(&proc_obj, &tid);
	if (!o)
		return KG_CLASS_MEMORY;
	if (o->pid == (__u64)BPF_CORE_READ(child, thread_pid) &&
	    o->start == (__u32)BPF_CORE_READ(child, group_leader, start_boottime))
		class = o->class;
	bpf_map_delete_elem(&proc_obj, &tid);
	return class;
}

SEC("lsm/inode_follow_link")
int BPF_PROG(kg_inode_follow_link, struct dentry *dentry, struct inode *inode, bool rcu, int ret)
{
	if (ret)
		return ret;
	if (inode->i_sb->s_magic == PROC_SUPER_MAGIC)
		note_proc_obj(dentry, inode, 1);
	return 0;
}

/* Fill an access event (zeroed, boot_ns/kind/rule/reason set) for an attempt by actor on target. */
static __always_inline void fill_access(struct kg_event *e, struct task_struct *actor, struct task_struct *target,
					__u32 access_mode, __u32 op, __u32 class, __u32 decision, __u32 mode,
					const unsigned char *name)
{
	e->decision = decision;
	e->rule_mode = mode;
	e->access_mode = access_mode;
	e->access_class = class;
	if (op == KG_OP_OTHER)
		op = op_of(bpf_get_current_task_btf(), &e->syscall_nr, e->detail);
	else if (name)
		bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), name);
	e->op = op;
	fill_proc(&e->actor, actor);
	fill_proc(&e->target, target);
}

/* Note the actor process (tgid, start) of an attempt in v: the last one, and one more process when it
 * started after every earlier actor of the entry. */
static __always_inline void agg_actor(struct kg_agg *v, __u32 tgid, __u64 start)
{
	v->last_tgid = tgid;
	if (start > v->newest_start) {
		v->newest_start = start;
		__sync_fetch_and_add(&v->processes, 1);
	}
}

static __always_inline void agg_count(struct kg_agg *v, __u64 now, __u32 tgid, __u64 start)
{
	__sync_fetch_and_add(&v->count, 1);
	if (!v->first_ns)
		v->first_ns = now;
	v->last_ns = now;
	agg_actor(v, tgid, start);
	agg_stat(KG_AGG_COUNTED);
}

/* Report an access attempt: the first of its window at once, repeats counted in agg (see above). */
static __always_inline void report_access(struct task_struct *actor, struct task_struct *target, struct kg_mark *prot,
					  __u32 access_mode, __u32 op, __u32 sys_op, __u32 class, __u32 decision,
					  __u32 mode, const unsigned char *name)
{
	struct kg_agg_key k = {};
	struct kg_agg *v;
	struct kg_event *e;
	__u32 zero = 0, *epoch;
	__u64 now = bpf_ktime_get_boot_ns(), start = BPF_CORE_READ(actor, group_leader, start_boottime);
	__u32 tgid = BPF_CORE_READ(actor, tgid);
	long err;

	task_exe(actor, &k.actor_dev, &k.actor_ino);
	k.actor_uid = BPF_CORE_READ(actor, real_cred, uid.val);
	k.target_tgid = BPF_CORE_READ(target, tgid);
	k.target_tid = BPF_CORE_READ(target, pid);
	k.access_mode = access_mode;
	k.target_start = BPF_CORE_READ(target, group_leader, start_boottime);
	k.op = op == KG_OP_OTHER ? sys_op : op;
	k.decision = decision;
	k.access_class = class;
	k.rule_id = prot->rule_id;
	k.kind = KG_EVENT_ACCESS;
	epoch = bpf_map_lookup_elem(&agg_epoch, &zero);
	if (epoch)
		k.epoch = *epoch;
	v = bpf_map_lookup_elem(&agg, &k);
	if (v) {
		agg_count(v, now, tgid, start);
		return;
	}
	v = bpf_map_lookup_elem(&agg_zero, &zero);
	err = v ? bpf_map_update_elem(&agg, &k, v, BPF_NOEXIST) : -ENOMEM;
	if (err == -EEXIST && (v = bpf_map_lookup_elem(&agg, &k))) { /* another CPU was first */
		agg_count(v, now, tgid, start);
		return;
	}
	v = err ? 0 : bpf_map_lookup_elem(&agg, &k);
	if (!v) { /* agg is full: report this attempt on its own */
		agg_stat(KG_AGG_FULL);
		e = new_event(KG_EVENT_ACCESS, prot);
		if (!e)
			return;
		fill_access(e, actor, target, access_mode, op, class, decision, mode, name);
		bpf_ringbuf_submit(e, 0);
		return;
	}
	v->ev.boot_ns = now;
	v->ev.kind = KG_EVENT_ACCESS;
	v->ev.rule_id = prot->rule_id;
	v->ev.reason = prot->reason;
	v->ev.syscall_nr = -1;
	fill_access(&v->ev, actor, target, access_mode, op, class, decision, mode, name);
	agg_actor(v, tgid, start);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) { /* ring buffer full: the attempt is counted in the aggregate instead of lost */
		agg_count(v, now, tgid, start); /* the same process: not counted twice */
		return;
	}
	bpf_probe_read_kernel(e, sizeof(*e), &v->ev);
	bpf_ringbuf_submit(e, 0);
	agg_stat(KG_AGG_FIRST);
}
/* ---- end of precision and aggregation ---- */


/*
 * Decide an access by actor to a protected target and report it. op == KG_OP_OTHER means "derive it
 * from the current syscall". Returns 0 or -EPERM.
 */
/* The decision on an access by actor to a process protected by prot's rule (no event). */
static __always_inline __u32 verdict(struct task_struct *actor, struct kg_mark *prot, __u32 *mode_out)
{
	struct kg_accessor_key key = {};
	struct kg_rule *rule;
	struct kg_grant *grant;
	__u32 mode = KG_MODE_ENFORCE;

	/* A mark whose rule is no longer in the policy stays enforced: fail closed. */
	rule = bpf_map_lookup_elem(&rules, &prot->rule_id);
	if (rule)
		mode = rule->mode;
	*mode_out = mode;

	task_exe(actor, &key.dev, &key.ino);
	key.rule_id = prot->rule_id;
	key.uid = BPF_CORE_READ(actor, real_cred, uid.val);
	if (bpf_map_lookup_elem(&allow, &key))
		return KG_DECISION_ALLOWED_POLICY;
	if ((grant = bpf_map_lookup_elem(&breakglass, &key)) && grant->expires_boot_ns > bpf_ktime_get_boot_ns())
		return KG_DECISION_ALLOWED_BREAK_GLASS;
	key.uid = KG_ANY_UID;
	if (bpf_map_lookup_elem(&allow, &key))
		return KG_DECISION_ALLOWED_POLICY;
	if ((grant = bpf_map_lookup_elem(&breakglass, &key)) && grant->expires_boot_ns > bpf_ktime_get_boot_ns())
		return KG_DECISION_ALLOWED_BREAK_GLASS;
	if (mode == KG_MODE_AUDIT)
		return KG_DECISION_ALLOWED_AUDIT;
	return KG_DECISION_DENIED;
}

/*
 * Decide an access by actor to a protected target and report it. op == KG_OP_OTHER means "derive it
 * from the current syscall". Returns 0 or -EPERM.
 */
static __always_inline int is_keyguard(struct task_struct *t);

static __always_inline int decide(struct task_struct *actor, struct task_struct *target,
				  struct kg_mark *prot, __u32 access_mode, __u32 op, const unsigned char *name)
{
	__u32 mode = KG_MODE_ENFORCE, decision, class = KG_CLASS_MEMORY, sys_op = op;
	__s32 nr = -1;
	int ret = 0;

	if (is_agent(actor)) {
		count(KG_CNT_AGENT);
		return 0;
	}
	if (op == KG_OP_OTHER) {
		sys_op = op_of(bpf_get_current_task_btf(), &nr, 0);
		class = access_class(target, access_mode, nr);
	}
	if (class == KG_CLASS_METADATA && !cfg_deny_metadata) {
		/* Metadata is allowed; keyguard's own processes (dump handler, CLI) are not reported. */
		if (is_keyguard(actor)) {
			count(KG_CNT_AGENT);
			return 0;
		}
		agg_stat(KG_AGG_METADATA);
		decision = KG_DECISION_ALLOWED_POLICY;
	} else {
		decision = verdict(actor, prot, &mode);
	}
	switch (decision) {
	case KG_DECISION_ALLOWED_POLICY:
		count(KG_CNT_ALLOWED_POLICY);
		break;
	case KG_DECISION_ALLOWED_BREAK_GLASS:
		count(KG_CNT_BREAK_GLASS);
		break;
	case KG_DECISION_ALLOWED_AUDIT:
		count(KG_CNT_AUDIT);
		break;
	default:
		count(KG_CNT_DENIED);
		ret = -EPERM;
	}

	if ((access_mode & PTRACE_MODE_NOAUDIT) && !cfg_report_noaudit) {
		count(KG_CNT_NOAUDIT_CHECKS);
		return ret;
	}
	report_access(actor, target, prot, access_mode, op, sys_op, class, decision, mode, name);
	return ret;
}

static __always_inline void emit_protect(struct task_struct *t, struct kg_mark *m, const unsigned char *name)
{
	struct kg_event *e = new_event(KG_EVENT_PROTECT, m);

	if (!e)
		return;
	if (name)
		bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), name);
	fill_proc(&e->target, t);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int is_own(__u32 kind, __u64 id)
{
	struct kg_own_key k = {.kind = kind, .id = id};

	return bpf_map_lookup_elem(&own, &k) != 0;
}

/* Is t running a trusted keyguard-agent executable (the agent, its dump handler, or an upgrade the
 * running agent saw being installed)? */
static __always_inline int is_keyguard(struct task_struct *t)
{
	struct kg_own_key k = {.kind = KG_OWN_EXE};
	struct kg_exe_check *ck;
	__u64 dev;

	task_exe(t, &dev, &k.id);
	k.dev = (__u32)dev;
	if (!bpf_map_lookup_elem(&own, &k))
		return 0;
	/* By content too, where the kernel hashes executables: the digest exec measured must be one the
	 * agent recorded (a trusted inode whose blocks changed behind the kernel's back is not keyguard). */
	if (!cfg_digest || !digest_required(KG_DIGEST_AGENT))
		return 1;
	ck = bpf_task_storage_get(&exe_checks, t->group_leader, 0, 0);
	return ck && ck->agent;
}

/* Is cur allowed through a side door by the policy (allow map entries under the pseudo rule id)? */
static __always_inline int allowed_by(struct task_struct *cur, __u32 allow_rule)
{
	struct kg_accessor_key key = {.rule_id = allow_rule};

	task_exe(cur, &key.dev, &key.ino);
	key.uid = BPF_CORE_READ(cur, real_cred, uid.val);
	if (bpf_map_lookup_elem(&allow, &key))
		return 1;
	key.uid = KG_ANY_UID;
	return bpf_map_lookup_elem(&allow, &key) != 0;
}

static __always_inline struct kg_settings *get_settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

/*
 * A side door around the ptrace checks. keyguard itself passes silently; an accessor the policy allows
 * passes and is reported; everyone else is refused (side_doors: enforce, the default) or reported
 * (audit). name is a kernel string for the event's detail (or NULL); target/prot name the protected
 * process concerned, if any.
 */
static __always_inline int side_door(struct task_struct *cur, __u32 door, __u32 allow_rule, __u32 cnt, __u32 access,
				     const void *name, struct task_struct *target, struct kg_mark *prot)
{
	struct kg_settings *st = get_settings();
	struct kg_mark none = {};
	struct kg_event *e;
	__u32 decision;
	int ret = 0;

	if (is_keyguard(cur))
		return 0;
	if (allowed_by(cur, allow_rule)) {
		decision = KG_DECISION_ALLOWED_POLICY;
	} else if (st && st->side_doors == KG_MODE_AUDIT) {
		decision = KG_DECISION_ALLOWED_AUDIT;
		count(KG_CNT_SIDE_DOOR_AUDIT);
	} else {
		decision = KG_DECISION_DENIED;
		count(cnt);
		ret = -EPERM;
	}
	e = new_event(KG_EVENT_SIDE_DOOR, prot ? prot : &none);
	if (e) {
		e->op = door;
		e->decision = decision;
		e->access_mode = access;
		if (name)
			bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), name);
		fill_proc(&e->actor, cur);
		if (target)
			fill_proc(&e->target, target);
		bpf_ringbuf_submit(e, 0);
	}
	return ret;
}

/* Does the NUL-terminated kernel string in buf equal lit (n bytes including its NUL)? */
static __always_inline int str_is(const char *buf, const char *lit, int n)
{
	for (int i = 0; i < n && i < 16; i++)
		if (buf[i] != lit[i])
			return 0;
	return 1;
}

#define S_IFMT_BITS 00170000
#define S_IFCHR_BITS 0020000
#define KG_MKDEV(ma, mi) (((ma) << 20) | (mi))

/*
 * Side doors opened through a file (from file_open):
 * - write opens of the sysctls that decide where core dumps go and who may trace (kernel.core_pattern,
 *   kernel.core_pipe_limit, fs.suid_dumpable, kernel.yama.ptrace_scope). There is no sysctl LSM hook;
 *   every write, `sysctl -w` or a shell redirect, opens the /proc/sys file, matched here by its ctl_table
 *   (so a bind mount or another procfs instance matches too).
 * - /proc/kcore, and the character devices mem (1:1), kmem (1:2) and port (1:4) wherever their nodes are.
 */
static __always_inline int proc_side_door(struct file *file)
{
	struct inode *inode = file->f_inode;
	struct super_block *sb = inode->i_sb;
	struct dentry *d = file->f_path.dentry;
	char name[16] = {};

	if (file->f_mode & FMODE_WRITE) {
		struct ctl_table *t = BPF_CORE_READ(proc_inode_of(inode), sysctl_entry);

		if (t) {
			bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(t, procname));
			if (str_is(name, "core_pattern", 13) || str_is(name, "core_pipe_limit", 16) ||
			    str_is(name, "suid_dumpable", 14) || str_is(name, "ptrace_scope", 13))
				return side_door(bpf_get_current_task_btf(), KG_SIDE_SYSCTL, KG_ALLOW_SYSCTL,
						 KG_CNT_SYSCTL_DENIED, 0, name, 0, 0);
			return 0;
		}
	}
	/* Only /proc/kcore, a file in the root of /proc, is of interest below: compared as numbers. */
	if ((__u64)d->d_parent != (__u64)sb->s_root)
		return 0;
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(d, d_name.name));
	if (str_is(name, "kcore", 6))
		return side_door(bpf_get_current_task_btf(), KG_SIDE_KMEM, KG_ALLOW_KMEM, KG_CNT_KMEM_DENIED, 0,
				 name, 0, 0);
	return 0;
}

/* Character devices: /dev/mem, /dev/kmem, /dev/port. */
static __always_inline int kmem_side_door(struct file *file)
{
	__u32 rdev = file->f_inode->i_rdev;

	if (rdev == KG_MKDEV(1, 1) || rdev == KG_MKDEV(1, 2) || rdev == KG_MKDEV(1, 4))
		return side_door(bpf_get_current_task_btf(), KG_SIDE_KMEM, KG_ALLOW_KMEM, KG_CNT_KMEM_DENIED, rdev,
				 file->f_path.dentry->d_name.name, 0, 0);
	return 0;
}

/* Report a refused tamper attempt by cur. */
static __always_inline void report_tamper(struct task_struct *cur, __u32 what, __u64 id, const unsigned char *name)
{
	struct kg_mark none = {};
	struct kg_event *e;

	count(KG_CNT_TAMPER);
	e = new_event(KG_EVENT_TAMPER, &none);
	if (e) {
		e->op = what;
		e->decision = KG_DECISION_DENIED;
		e->access_mode = (__u32)id;
		if (name)
			bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), name);
		fill_proc(&e->actor, cur);
		bpf_ringbuf_submit(e, 0);
	}
}

/* Refuse a tamper attempt by anything but keyguard itself, and report it. Not from sleepable programs:
 * is_keyguard reads the leader's task storage, a pointer the verifier trusts only under RCU. */
static __always_inline int tamper(__u32 what, __u64 id, const unsigned char *name)
{
	struct task_struct *cur = bpf_get_current_task_btf();

	if (is_keyguard(cur))
		return 0;
	report_tamper(cur, what, id, name);
	return -EPERM;
}

/* --- keys at rest: key files only for their holders; listed executables and keyguard's own ---------- */

#define S_IFBLK_BITS 0060000

/* Report an open or metadata change of a guarded file. The file's identity goes in target.exe_dev and
 * target.exe_ino (target.pid stays 0: no process is the target). */
static __always_inline void emit_key(struct task_struct *cur, __u32 op, __u32 what, __u32 rule_id, __u32 mode,
				     __u32 decision, struct inode *inode, const unsigned char *name)
{
	struct kg_mark prot = {.rule_id = rule_id, .reason = KG_REASON_KEY_FILE};
	struct kg_event *e = new_event(KG_EVENT_KEY_FILE, &prot);

	if (!e)
		return;
	e->op = op;
	e->decision = decision;
	e->rule_mode = mode;
	e->access_mode = what;
	if (name)
		bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), name);
	fill_proc(&e->actor, cur);
	e->target.exe_dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->target.exe_ino = BPF_CORE_READ(inode, i_ino);
	bpf_ringbuf_submit(e, 0);
}

/*
 * Decide an operation on a guarded file by someone who is not its holder: the allow list (key managers,
 * package managers) passes and is reported; the rule's audit mode reports; everything else is refused.
 */
static __always_inline int guard_decide(struct task_struct *cur, __u32 op, __u32 what, __u32 rule_id, __u32 allow_rule,
					struct inode *inode, const unsigned char *name)
{
	struct kg_rule *rule = bpf_map_lookup_elem(&rules, &rule_id);
	__u32 mode = KG_MODE_ENFORCE, decision;
	int ret = 0;

	if (rule)
		mode = rule->mode;
	if (allowed_by(cur, allow_rule)) {
		decision = KG_DECISION_ALLOWED_POLICY;
		count(KG_CNT_ALLOWED_POLICY);
	} else if (mode == KG_MODE_AUDIT) {
		decision = KG_DECISION_ALLOWED_AUDIT;
		count(KG_CNT_AUDIT);
	} else {
		decision = KG_DECISION_DENIED;
		count(KG_CNT_DENIED);
		ret = -EPERM;
	}
	emit_key(cur, op, what, rule_id, mode, decision, inode, name);
	return ret;
}

static __always_inline int is_trusted_exe(struct inode *inode)
{
	struct kg_own_key k = {.kind = KG_OWN_EXE};

	k.dev = (__u32)BPF_CORE_READ(inode, i_sb, s_dev);
	k.id = BPF_CORE_READ(inode, i_ino);
	if (!maybe_listed(k.dev, k.id))
		return 0;
	return bpf_map_lookup_elem(&own, &k) != 0;
}

/*
 * Link, rename, unlink, truncate, chmod/chown and xattrs of a key file (only key managers) or of a
 * listed executable (only package managers). By inode: every path and mount of the file is the same.
 */
static __always_inline int guard_inode(struct inode *inode, __u32 op, const unsigned char *name)
{
	struct kg_file_id id = {};
	struct task_struct *cur;
	__u32 *rule_id;

	if (!inode)
		return 0;
	id.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	id.ino = BPF_CORE_READ(inode, i_ino);
	if (!maybe_listed(id.dev, id.ino))
		return 0;
	rule_id = bpf_map_lookup_elem(&key_rules, &id);
	if (rule_id) {
		cur = bpf_get_current_task_btf();
		if (is_keyguard(cur))
			return 0;
		return guard_decide(cur, op, KG_GUARD_KEY_FILE, *rule_id, KG_ALLOW_KEYMGR, inode, name);
	}
	rule_id = bpf_map_lookup_elem(&exe_rules, &id);
	if (rule_id) {
		cur = bpf_get_current_task_btf();
		if (is_keyguard(cur))
			return 0;
		return guard_decide(cur, op, KG_GUARD_SIGNER_EXE, *rule_id, KG_ALLOW_PKGMGR, inode, name);
	}
	return 0;
}

/* May cur open the rule's key files by the policy's `openers` (and become protected by the open)? */
static __always_inline int is_opener(struct task_struct *cur, __u32 rule_id)
{
	struct kg_accessor_key key = {.dev = KG_OPENERS_ANY, .ino = KG_OPENERS_ANY, .rule_id = rule_id, .uid = KG_ANY_UID};

	if (bpf_map_lookup_elem(&openers, &key))
		return 1;
	task_exe(cur, &key.dev, &key.ino);
	if (bpf_map_lookup_elem(&openers, &key))
		return 1;
	key.uid = BPF_CORE_READ(cur, real_cred, uid.val);
	return bpf_map_lookup_elem(&openers, &key) != 0;
}

/* Target of the locked additions that order a mark against an in-flight read (x86: lock add, a full fence). */
__u64 kg_fence = 0;

struct inflight_scan {
	__u32 tgid;
	__u32 found;
};

static long inflight_cb(struct bpf_map *map, __u32 *reader, __u32 *target, struct inflight_scan *s)
{
	if (*target == s->tgid) {
		s->found = 1;
		return 1;
	}
	return 0;
}

/* Is a memory read of process tgid between its check and the end of its copy? */
static __always_inline int reads_in_flight(__u32 tgid)
{
	struct inflight_scan s = {.tgid = tgid};

	bpf_for_each_map_elem(&inflight, inflight_cb, &s, 0);
	return s.found;
}

/* A reader publishes its read of target before it looks at target's mark (see kg_file_open). */
static __always_inline int publish_read(__u32 target)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (bpf_map_update_elem(&inflight, &tid, &target, BPF_ANY))
		return -1;
	__sync_fetch_and_add(&kg_fence, 1); /* a locked instruction: the record is visible before the mark is read */
	return 0;
}

static __always_inline void end_read(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&inflight, &tid);
}

/* The target of a /proc/PID/{mem,environ} file, or NULL (proc_task). */
static __always_inline struct task_struct *proc_file_task(struct file *file)
{
	return proc_task(BPF_CORE_READ(file, f_inode));
}

/* The late mark of a process given by an untrusted pointer, if it is still the same process. */
static __always_inline struct kg_late_mark *late_mark_of(struct task_struct *target, __u32 tgid)
{
	struct kg_late_mark *late = bpf_map_lookup_elem(&late_marks, &tgid);
	struct task_struct *leader = BPF_CORE_READ(target, group_leader);

	if (late && late->start_ticks == BPF_CORE_READ(leader, start_boottime) / KG_NSEC_PER_TICK)
		return late;
	return 0;
}

/* Threads inside process_vm_rw() (every entry: x86-64, ia32 compat, x32), by thread id: filled by
 * kg_vm_rw_enter where the loader attaches it (Variants: vm_rw_end fexit/process_vm_rw). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} vm_rw_calls SEC(".maps");

/* Is the current thread in process_vm_readv or process_vm_writev (inside process_vm_rw, or by its
 * syscall number)? */
static __always_inline int in_vm_rw(struct task_struct *cur)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(cur);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	long nr;

	if (bpf_map_lookup_elem(&vm_rw_calls, &tid))
		return 1;

	if (!regs)
		return 0;
	nr = KG_SC_NR(regs);
	return nr == KG_NR_PROCESS_VM_READV || nr == KG_NR_PROCESS_VM_WRITEV || nr == KG_NR_COMPAT_PROCESS_VM_READV ||
	       nr == KG_NR_COMPAT_PROCESS_VM_WRITEV || nr == KG_NR_X32_PROCESS_VM_READV || nr == KG_NR_X32_PROCESS_VM_WRITEV;
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(kg_ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_mark prot = {};
	int vm = 0;

	if (ret)
		return ret;
	/* process_vm_readv copies after this one check: publish the read first (ended at syscall exit). */
	if (cfg_vm_rw_tracked && (mode & 0x12) == 0x12 /* ATTACH_REALCREDS, as process_vm_rw_core asks */ &&
	    child->tgid != cur->tgid && in_vm_rw(cur)) {
		if (publish_read(child->tgid))
			return -ENOMEM;
		vm = 1;
	}
	if (!protection(child, &prot))
		return 0;
	ret = decide(cur, child, &prot, mode, KG_OP_OTHER, 0);
	if (ret && vm)
		end_read(); /* refused: nothing will be copied */
	return ret;
}

SEC("fexit/" KG_SYSCALL_PREFIX "process_vm_readv")
int BPF_PROG(kg_vm_readv_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}

SEC("fexit/" KG_SYSCALL_PREFIX "process_vm_writev")
int BPF_PROG(kg_vm_writev_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}

/* The compat entries (32-bit processes; x32 on x86) of the syscall-entry variant: a kernel that has
 * them gets this variant only when they are traced too (the loader's vmRWEnd). */
SEC("fexit/" KG_COMPAT_PREFIX "process_vm_readv")
int BPF_PROG(kg_vm_readv_compat_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}

SEC("fexit/" KG_COMPAT_PREFIX "process_vm_writev")
int BPF_PROG(kg_vm_writev_compat_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}

#ifdef KG_X32_PREFIX
SEC("fexit/" KG_X32_PREFIX "process_vm_readv")
int BPF_PROG(kg_vm_readv_x32_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}

SEC("fexit/" KG_X32_PREFIX "process_vm_writev")
int BPF_PROG(kg_vm_writev_x32_exit, struct pt_regs *regs, long ret)
{
	end_read();
	return 0;
}
#endif

/* mm_struct->owner (CONFIG_MEMCG), read through a flavour type. */
struct mm_struct___owner {
	struct task_struct *owner;
} __attribute__((preserve_access_index));

/*
 * The process whose memory a /proc/PID/mem read copies: the owner of the mm the file holds
 * (file->private_data, the mm its pid's task had at open). That is not always the pid's process: the task
 * may since be gone or run another mm (exec) while the mm lives on in processes that shared it (a vfork or
 * CLONE_VM child's fd reads its parent, before and after the child's exec or exit; a thread's fd reads its
 * process after the thread exited). mm->owner is the task the mm was made for (exec, fork), moved to
 * another task running the mm when that task exits. Without the field: the pid's task when it still runs
 * that mm, else *kill (fail closed). NULL: nothing to protect.
 */
static __always_inline struct task_struct *mem_target(struct file *file, int *kill)
{
	struct mm_struct *mm = (struct mm_struct *)BPF_CORE_READ(file, private_data);
	struct task_struct *target;

	*kill = 0;
	if (!mm)
		return 0;
	/* NULL owner: the owner exited and no task runs the mm any more (only transient references such as
	 * other readers hold it), so it is no process's memory to protect. */
	if (bpf_core_field_exists(((struct mm_struct___owner *)0)->owner))
		return BPF_CORE_READ((struct mm_struct___owner *)mm, owner);
	target = proc_file_task(file);
	if (target && (struct mm_struct *)BPF_CORE_READ(target, mm) == mm)
		return target;
	if (BPF_CORE_READ(mm, mm_users.counter))
		*kill = 1; /* a live mm whose process cannot be known */
	return 0;
}

/*
 * Every copy through /proc/PID/mem, whatever fd (kept from before the mark or fresh), syscall (read,
 * pread, readv) or io_uring request brought it here, decided for the process whose memory it copies
 * (mem_target: the owner of the fd's mm, which a vfork child's fd shares with its parent). Publish the
 * read, then look at the mark: a process
 * marked after this read passed file_permission makes the reader die before its first page (SIGKILL stops
 * get_user_pages before it copies anything), unless the rule allows the reader.
 */
SEC("fentry/mem_rw")
int BPF_PROG(kg_mem_rw_enter, struct file *file, char *buf, size_t len, loff_t *ppos, int write)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_late_mark *late;
	struct kg_mark prot = {};
	struct task_struct *target;
	__u32 tgid, mode;
	int kill;

	target = mem_target(file, &kill);
	if (kill && !is_agent(cur)) {
		bpf_send_signal(SIGKILL); /* fail closed: a read whose owner is unknown must not copy */
		count(KG_CNT_DENIED);
		return 0;
	}
	if (!target)
		return 0;
	tgid = BPF_CORE_READ(target, tgid);
	if (tgid == cur->tgid)
		return 0;
	if (publish_read(tgid)) {
		bpf_send_signal(SIGKILL); /* fail closed: an untracked read must not copy */
		return 0;
	}
	late = late_mark_of(target, tgid);
	if (!late || is_agent(cur) || !cfg_inflight_wait)
		return 0;
	prot.rule_id = late->rule_id;
	prot.reason = late->reason;
	if (verdict(cur, &prot, &mode) != KG_DECISION_DENIED)
		return 0;
	bpf_send_signal(SIGKILL);
	end_read();
	count(KG_CNT_DENIED);
	return 0;
}

SEC("fexit/mem_rw")
int BPF_PROG(kg_mem_rw_exit, struct file *file, char *buf, size_t len, loff_t *ppos, int write, long ret)
{
	end_read();
	return 0;
}

/* A protected process asking to be traced by its parent: the parent is the accessor. */
SEC("lsm/ptrace_traceme")
int BPF_PROG(kg_ptrace_traceme, struct task_struct *parent, int ret)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_mark prot = {};

	if (ret)
		return ret;
	if (!protection(cur, &prot))
		return 0;
	return decide(parent, cur, &prot, 0x02 /* ATTACH */, KG_OP_TRACEME, 0);
}

/* Give the new process task the mark m of cur's process (and what exec found, for strict rules). 0, or
 * -ENOMEM when task storage cannot be had: the fork must not produce an unprotected copy. */
static __always_inline int inherit(struct task_struct *cur, struct kg_mark *m, struct task_struct *task)
{
	struct kg_exe_check *ck, *cc;
	struct kg_mark *c;

	c = bpf_task_storage_get(&marks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c)
		return -ENOMEM;
	c->rule_id = m->rule_id;
	c->reason = KG_REASON_INHERIT;
	count(KG_CNT_INHERIT);
	/* The child runs the same executable: it keeps what exec found (strict rules). */
	ck = bpf_task_storage_get(&exe_checks, cur->group_leader, 0, 0);
	if (ck && ck->rule_id) {
		cc = bpf_task_storage_get(&exe_checks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!cc)
			return -ENOMEM;
		*cc = *ck;
	}
	return 0;
}

/* Fork: the child inherits the mark before it ever runs. Threads share the leader's mark. A mark that
 * the parent gets after this (a key-file open by another thread) is looked at again by kg_fork_copied. */
SEC("lsm/task_alloc")
int BPF_PROG(kg_task_alloc, struct task_struct *task, unsigned long clone_flags, int ret)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_mark *m;

	if (ret)
		return ret;
	if (clone_flags & CLONE_THREAD)
		return 0;
	m = mark_get(cur->group_leader);
	if (!m || !m->rule_id)
		return 0;
	/* fail closed: an unprotected copy of a key holder must not exist */
	return inherit(cur, m, task);
}

/*
 * Fork, second look: the key-open race of a fork by one thread and a key-file open by another.
 *
 * copy_process() runs security_task_alloc (kg_task_alloc) before copy_mm(). A thread B that passes
 * task_alloc while its process is unmarked, then a thread A of the same process that opens a listed key
 * file (marked) and loads the key before B's copy_mm() copies the memory, would leave a child that holds
 * the key and no mark. copy_namespaces() is called right after copy_mm() for every fork (thread or
 * process, any clone flags) and long before attach_pid() makes the child findable by pid, so here:
 *
 *   - the child's memory is final: a private copy (COW) holds only what the parent stored before
 *     copy_mm() returned (dup_mmap ends with a TLB flush of the parent's mm, after which every store of
 *     the parent goes to its own copy), and a store A made there followed A's mark and a full fence
 *     (key_open). This program's look at the mark comes after that copy (and a full fence on the slow
 *     path), so a child that holds the key sees its parent's mark here.
 *   - no reader can have the child yet: /proc/PID, process_vm_readv, ptrace, pidfd_open all find a task
 *     through its pid, which is attached after this; so no access to the child began before its mark,
 *     no /proc/CHILD/mem fd was kept from before it, no io_uring request or ptrace attachment names it,
 *     and no in-flight read needs to be waited for. Every later access is checked against this mark
 *     (ptrace_access_check at open/attach/process_vm_readv; io_uring opens go through the same check).
 *     An auto-attached tracer (PTRACE_O_TRACEFORK) implies a traced parent, whose key open is refused
 *     (cfg_deny_traced).
 *   - a child that shares the parent's memory (CLONE_VM without CLONE_THREAD: vfork, posix_spawn) also
 *     shares every key loaded later: kg_task_alloc and this program mark it if the parent is marked by
 *     then; if not, key_open sees the extra mm user (mm_shared) and refuses the open with EAGAIN until
 *     the child has exec'd or exited. The fence below orders the child's mm_users reference before this
 *     look at the mark, as key_open orders its mark before its look at mm_users.
 *
 * The child cannot be refused here (fentry): if its mark cannot be stored, the parent gets SIGKILL, which
 * copy_process() checks (fatal_signal_pending) before it attaches the child, so the fork fails and no
 * unprotected copy ever runs. The fast path: a parent with no task storage leaves after one field load.
 */
SEC("fentry/copy_namespaces")
int BPF_PROG(kg_fork_copied, unsigned long clone_flags, struct task_struct *task)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct task_struct *leader = cur->group_leader;
	struct kg_mark *m;

	if (!cfg_fork_recheck || (clone_flags & CLONE_THREAD))
		return 0;
	if (clone_flags & CLONE_VM)
		__sync_fetch_and_add(&kg_fence, 1); /* the child's mmget() before the look at the mark */
	if (no_task_storage(leader))
		return 0;
	__sync_fetch_and_add(&kg_fence, 1);
	m = bpf_task_storage_get(&marks, leader, 0, 0);
	if (!m || !m->rule_id)
		return 0;
	if (!no_task_storage(task)) {
		struct kg_mark *c = bpf_task_storage_get(&marks, task, 0, 0);

		if (c && c->rule_id)
			return 0; /* marked by kg_task_alloc: the usual case */
	}
	if (inherit(cur, m, task))
		bpf_send_signal(SIGKILL); /* fail closed: the fork fails before the child is attached */
	return 0;
}

/*
 * The kernel starts a pipe core_pattern helper from a kernel thread (no mm yet) with the pipe as fd 0.
 * When that helper is keyguard's handler, remember the pipe: it is the one destination a protected
 * process's dump may be written to (kg_dump_emit).
 */
static __always_inline void approve_handler_pipe(struct task_struct *cur, struct linux_binprm *bprm)
{
	struct kg_handler *h;
	struct file **fds, *f0;
	__u32 zero = 0;
	__u64 addr, ino;

	if (cur->mm) /* the kernel's usermode helper has no mm yet: every other exec leaves here */
		return;
	h = bpf_map_lookup_elem(&handler, &zero);
	if (!h || !h->ino || h->ino != bprm->file->f_inode->i_ino || h->dev != bprm->file->f_inode->i_sb->s_dev)
		return;
	fds = BPF_CORE_READ(cur, files, fdt, fd);
	if (!fds)
		return;
	bpf_probe_read_kernel(&f0, sizeof(f0), fds);
	if (!f0)
		return;
	addr = (__u64)BPF_CORE_READ(f0, f_inode);
	ino = BPF_CORE_READ(f0, f_inode, i_ino);
	bpf_map_update_elem(&handler_pipes, &addr, &ino, BPF_ANY);
}

/*
 * Exec, before the point of no return: (1) exec from a non-leader thread frees the old leader and its
 * storage, so copy the mark to the exec'ing thread; (2) mark on exec of a protected executable here,
 * where failure can still fail the exec; (3) a process under a tracer may not exec a protected
 * executable, or the tracer would read it afterwards.
 */
SEC("lsm/bprm_check_security")
int BPF_PROG(kg_bprm_check_security, struct linux_binprm *bprm, int ret)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_file_id id = {};
	struct kg_mark *m, *c;
	__u32 *rule_id;

	if (ret)
		return ret;
	approve_handler_pipe(cur, bprm);
	if (cur->group_leader != cur) {
		m = mark_get(cur->group_leader);
		if (m && m->rule_id) {
			c = bpf_task_storage_get(&marks, cur, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (!c)
				return -ENOMEM;
			c->rule_id = m->rule_id;
			c->reason = m->reason;
		}
	}

	id.dev = bprm->file->f_inode->i_sb->s_dev;
	id.ino = bprm->file->f_inode->i_ino;
	if (!maybe_listed(id.dev, id.ino))
		return 0;
	rule_id = bpf_map_lookup_elem(&exe_rules, &id);
	if (!rule_id)
		return 0;

	if (cfg_deny_traced && cur->ptrace) {
		struct kg_mark prot = {.rule_id = *rule_id, .reason = KG_REASON_EXEC};
		int r = decide(cur->parent, cur, &prot, 0x02, KG_OP_EXEC_TRACED, bprm->file->f_path.dentry->d_name.name);

		if (r)
			return r;
	}
	c = bpf_task_storage_get(&marks, cur, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c)
		return -ENOMEM;
	c->rule_id = *rule_id;
	c->reason = KG_REASON_EXEC;
	return 0;
}

/*
 * Hash the executable (SHA-256 of the whole file, by IMA: its cached measurement when an IMA policy
 * measured the file, which IMA drops when the file is written, or a fresh read) and look the digest up
 * under id. Exec holds the file against writers (deny_write_access) from open to the end of the process
 * image, so the content hashed here is the content mapped.
 */
static __always_inline int exe_digest_ok(struct file *f, __u32 id, struct kg_exe_check *ck)
{
	struct kg_digest_key k = {.rule_id = id};

	ck->hash_ret = bpf_ima_file_hash(f, k.sha256, sizeof(k.sha256));
	if (ck->hash_ret != KG_HASH_ALGO_SHA256)
		return 0; /* no hash, or IMA's hash is another algorithm (ima_hash=): fail closed */
	return bpf_map_lookup_elem(&digests, &k) != 0;
}

/*
 * Digest checks at exec, for executables that need one only: a strict rule's listed executable, or
 * keyguard's trusted executable while the agent has recorded its digest. Other executables pay one task
 * storage read (only a process that ever ran such an executable has an entry, reset here).
 */
static __always_inline void exec_digest(struct task_struct *cur, struct linux_binprm *bprm, __u32 *rule_id)
{
	struct kg_exe_check *ck = no_task_storage(cur) ? 0 : bpf_task_storage_get(&exe_checks, cur, 0, 0);
	__u32 id;

	if (ck)
		ck->rule_id = ck->agent = 0;
	if (!cfg_digest)
		return;
	if (rule_id)
		id = *rule_id;
	else if (is_trusted_exe(bprm->file->f_inode))
		id = KG_DIGEST_AGENT;
	else
		return;
	if (!digest_required(id))
		return;
	ck = bpf_task_storage_get(&exe_checks, cur, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!ck)
		return; /* fail closed: no verdict, no digest trust */
	if (!exe_digest_ok(bprm->file, id, ck)) {
		if (id == KG_DIGEST_AGENT) /* not keyguard: its content is not one the agent recorded */
			report_tamper(cur, KG_TAMPER_EXE_DIGEST, bprm->file->f_inode->i_ino, bprm->file->f_path.dentry->d_name.name);
		return;
	}
	if (id == KG_DIGEST_AGENT)
		ck->agent = 1;
	else
		ck->rule_id = id;
}

/*
 * After a successful exec (past the point of no return, so a failed exec leaves no verdict behind): the
 * digest checks, and the report of a protected executable's exec (its mark was set in
 * bprm_check_security). Sleepable: hashing reads the file.
 */
SEC("lsm.s/bprm_committed_creds")
int BPF_PROG(kg_bprm_committed_creds, struct linux_binprm *bprm)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_file_id id = {};
	struct kg_mark *m;
	__u32 *rule_id;

	id.dev = bprm->file->f_inode->i_sb->s_dev;
	id.ino = bprm->file->f_inode->i_ino;
	rule_id = maybe_listed(id.dev, id.ino) ? bpf_map_lookup_elem(&exe_rules, &id) : 0;
	exec_digest(cur, bprm, rule_id);
	if (!rule_id)
		return 0;
	m = mark_get(cur);
	if (!m)
		return 0;
	count(KG_CNT_MARK_EXEC);
	emit_protect(cur, m, bprm->file->f_path.dentry->d_name.name);
	return 0;
}

/*
 * A strict rule's key file: only a process whose executable matched one of the rule's approved digests
 * when it was exec'd (or a fork child of one) opens it; a replaced signer binary is refused (audit mode:
 * reported). Key managers and keyguard never get here.
 */
static __always_inline int strict_open(struct task_struct *cur, struct task_struct *leader, __u32 rule_id,
				       struct inode *inode, const unsigned char *name)
{
	struct kg_exe_check *ck = bpf_task_storage_get(&exe_checks, leader, 0, 0);
	struct kg_rule *rule;
	__u32 mode = KG_MODE_ENFORCE;

	if (ck && ck->rule_id == rule_id)
		return 0;
	rule = bpf_map_lookup_elem(&rules, &rule_id);
	if (rule)
		mode = rule->mode;
	if (mode == KG_MODE_AUDIT) {
		count(KG_CNT_AUDIT);
		emit_key(cur, KG_KEY_OPEN_DIGEST, KG_GUARD_KEY_FILE, rule_id, mode, KG_DECISION_ALLOWED_AUDIT, inode, name);
		return 0;
	}
	count(KG_CNT_DENIED);
	emit_key(cur, KG_KEY_OPEN_DIGEST, KG_GUARD_KEY_FILE, rule_id, mode, KG_DECISION_DENIED, inode, name);
	return -EPERM;
}

/*
 * Does another process share cur's memory (clone with CLONE_VM but not CLONE_THREAD: a vfork or
 * posix_spawn child before its exec)? It would hold every key cur loads, unmarked if it was created before
 * cur's mark. Each thread of the process holds one mm_users reference, taken (copy_mm) before it counts in
 * signal->live and dropped (exit_mm) after it stopped counting, so a process alone has mm_users <= live;
 * anything more is another process or a short-lived reference (a /proc reader, a thread being created):
 * the open waits (EAGAIN) either way. Read after the mark and a full fence (see kg_fork_copied).
 */
static __always_inline int mm_shared(struct task_struct *cur)
{
	struct mm_struct *mm = cur->mm;

	if (!mm)
		return 0;
	return BPF_CORE_READ(mm, mm_users.counter) > BPF_CORE_READ(cur, signal, live.counter);
}

/*
 * A key file: only its holders open it (the rule's processes, matched by executable at exec, by cgroup, or
 * already marked by the rule), plus key managers and the rule's openers; everyone else is refused (audit
 * mode: reported). An opener that is not protected yet becomes protected by the open (key managers are
 * not marked), and
 * the open waits (EAGAIN) while a read of its memory that passed its check before the mark is still
 * copying, so no read that began before the mark returns bytes loaded after the open, and while another
 * process shares its memory (mm_shared). A fork racing the open is looked at again by kg_fork_copied.
 */
static __always_inline int key_open(struct file *file, __u32 rule_id)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct task_struct *leader = cur->group_leader;
	const unsigned char *name = file->f_path.dentry->d_name.name;
	struct kg_late_mark late = {};
	struct kg_mark *m;
	__u32 tgid = cur->tgid;

	m = mark_get(leader);
	if (!m || m->rule_id != rule_id) {
		if (is_keyguard(cur))
			return 0;
		/* Key managers (deployment, rotation) open key files without being marked: a mark would pass to
		 * every child of a deploy tool. They are trusted with the file, like the package manager. */
		if (allowed_by(cur, KG_ALLOW_KEYMGR)) {
			count(KG_CNT_ALLOWED_POLICY);
			emit_key(cur, KG_KEY_OPEN, KG_GUARD_KEY_FILE, rule_id, KG_MODE_ENFORCE, KG_DECISION_ALLOWED_POLICY,
				 file->f_inode, name);
			return 0;
		}
		if (cgroup_rule(cur) != rule_id && !is_opener(cur, rule_id)) {
			int r = guard_decide(cur, KG_KEY_OPEN, KG_GUARD_KEY_FILE, rule_id, KG_ALLOW_KEYMGR, file->f_inode, name);

			if (r)
				return r;
		}
	}
	if (digest_required(rule_id)) {
		int r = strict_open(cur, leader, rule_id, file->f_inode, name);

		if (r)
			return r;
	}
	if (cfg_deny_traced && (cur->ptrace || BPF_CORE_READ(leader, ptrace))) {
		struct kg_mark prot = {.rule_id = rule_id, .reason = KG_REASON_KEY_FILE};
		int r = decide(cur->parent, cur, &prot, 0x02, KG_OP_KEYFILE_TRACED, name);

		if (r)
			return r;
	}
	m = bpf_task_storage_get(&marks, leader, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!m) /* fail closed: no key without protection */
		return -ENOMEM;
	if (m->rule_id && m->reason != KG_REASON_KEY_FILE)
		return 0; /* protected before it ran (exec, inherited) or found by the scan */
	if (!m->rule_id) {
		m->rule_id = rule_id;
		m->reason = KG_REASON_KEY_FILE;
		late.start_ticks = BPF_CORE_READ(leader, start_boottime) / KG_NSEC_PER_TICK;
		late.rule_id = rule_id;
		late.reason = KG_REASON_KEY_FILE;
		bpf_map_update_elem(&late_marks, &tgid, &late, BPF_ANY);
		count(KG_CNT_MARK_KEY_FILE);
		emit_protect(cur, m, name);
	}
	/* A locked instruction orders the mark before the look at in-flight reads (readers do the reverse:
	 * publish, then look at the mark), so a read either sees the mark or is seen here. */
	__sync_fetch_and_add(&kg_fence, 1);
	if ((cfg_inflight_wait && reads_in_flight(tgid)) || (cfg_fork_recheck && mm_shared(cur))) {
		emit_key(cur, KG_KEY_OPEN_BUSY, KG_GUARD_KEY_FILE, rule_id, KG_MODE_ENFORCE, KG_DECISION_DENIED, file->f_inode,
			 name);
		return -EAGAIN;
	}
	return 0;
}

/* bpf_task_from_pid (6.2 and later): a trusted task from a pid number. Weak: on a kernel without it the
 * loader resolves bpf_ksym_exists() to 0 and the verifier drops the code that calls it. */
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(&(sym)))
#endif

/* The task of a /proc inode's pid (untrusted: for CO-RE reads only), or NULL. */
/*
 * Might this /proc open be one proc_mm_refused() decides? Inline, so the commonest /proc opens (a
 * process's own /proc/self/..., /proc/PID/stat and friends) leave here without a call: the names it
 * decides are 3, 4, 5, 7, 9 or 12 long with mode 0600 (mem), 0400 (environ, auxv, pagemap) or 0444
 * (maps, smaps, smaps_rollup, numa_maps), and a process's own files need no check.
 */
static __always_inline int proc_mm_candidate(struct file *file)
{
	__u32 len = file->f_path.dentry->d_name.len, perm = file->f_inode->i_mode & 0777;
	__u64 pid;

	if (len != 3 && len != 4 && len != 5 && len != 7 && len != 9 && len != 12)
		return 0;
	if (perm != 0400 && perm != 0600 && perm != 0444)
		return 0;
	pid = (__u64)BPF_CORE_READ(proc_inode_of(file->f_inode), pid);
	return pid && pid != (__u64)bpf_get_current_task_btf()->group_leader->thread_pid;
}

/*
 * /proc/PID/{mem,environ,auxv,pagemap,maps,smaps,smaps_rollup,numa_maps} (and task/TID/...), the files
 * whose open takes the process's mm through mm_access(): decided in file_open, before the file's own
 * open makes its ptrace check, with the decision that check would get. Newer kernels' mm_access() lets
 * a CAP_PERFMON caller through a PTRACE_MODE_READ check after ptrace_access_check refused it (root
 * opening environ, auxv, pagemap or the maps family), so the refusal must not depend on that check.
 * Kernels without bpf_task_from_pid (6.1) have no such override: the ptrace check alone decides there.
 * Only a refusal is decided here; an allowed access is left to the ptrace check, which reports it.
 * Returns the ptrace mode of the refused open (prot filled in), or 0. Not inlined, with a small frame:
 * the caller reports the refusal (decide) from its own frame, whose stack and this one's add up.
 */
static __noinline __u32 proc_mm_refused(struct file *file, struct kg_mark *prot)
{
	struct task_struct *cur, *target;
	struct pid *pid;
	__u32 mode, rule_mode, refused = 0;
	char n[16] = {};
	s32 nr;

	bpf_probe_read_kernel_str(n, sizeof(n), file->f_path.dentry->d_name.name);
	if (str_is(n, "mem", 4))
		mode = 0x0a; /* PTRACE_MODE_ATTACH_FSCREDS, as mem_open asks */
	else if (str_is(n, "environ", 8) || str_is(n, "auxv", 5) || str_is(n, "pagemap", 8) || str_is(n, "maps", 5) ||
		 str_is(n, "smaps", 6) || str_is(n, "smaps_rollup", 13) || str_is(n, "numa_maps", 10))
		mode = 0x09; /* PTRACE_MODE_READ_FSCREDS */
	else
		return 0;
	pid = BPF_CORE_READ(proc_inode_of(file->f_inode), pid);
	nr = BPF_CORE_READ(pid, numbers[0].nr);
	target = nr ? bpf_task_from_pid(nr) : 0;
	if (!target)
		return 0;
	/* The number may have been reused since the task this inode names exited (the file's own open then
	 * fails with ESRCH): decide only for the task the inode still names. */
	cur = bpf_get_current_task_btf();
	if (target->thread_pid == pid && target->tgid != cur->tgid && protection(target, prot) && !is_agent(cur) &&
	    verdict(cur, prot, &rule_mode) == KG_DECISION_DENIED)
		refused = mode;
	bpf_task_release(target);
	return refused;
}

/*
 * Every open: side doors (sysctls, kernel memory, raw disks), write opens of listed executables and of
 * keyguard's trusted executable, and key files. Files that are none of these pay two field reads and one
 * hash lookup.
 */
SEC("lsm/file_open")
int BPF_PROG(kg_file_open, struct file *file, int ret)
{
	struct inode *inode;
	__u32 mode;
	struct kg_file_id id = {};
	__u32 *rule_id;

	if (ret)
		return ret;
	/*
	 * The common case first, in a few loads: a file outside /proc that is no device and that keyguard
	 * lists nothing at (key file, listed or trusted executable, loop image: maybe_listed is 0 for it).
	 */
	mode = file->f_inode->i_mode & S_IFMT_BITS;
	if (file->f_inode->i_sb->s_magic != PROC_SUPER_MAGIC && mode != S_IFCHR_BITS && mode != S_IFBLK_BITS &&
	    !maybe_listed(file->f_inode->i_sb->s_dev, file->f_inode->i_ino))
		return 0;
	/* file->f_inode is loaded again at each use rather than kept in a variable from the fast path: clang
	 * then spilled it into a stack slot it shares with an int, which 6.12's verifier refuses to shift.
	 * Each kind returns from its own branch: /proc holds no key file, listed executable or device. */
	if (file->f_inode->i_sb->s_magic == PROC_SUPER_MAGIC) {
		note_proc_obj(file->f_path.dentry, file->f_inode, 0); /* issue 13: precision */
		if (bpf_ksym_exists(bpf_task_from_pid) && proc_mm_candidate(file)) {
			struct kg_mark prot = {};
			struct task_struct *target;
			__u32 ptrace_mode = proc_mm_refused(file, &prot);

			if (ptrace_mode && (target = proc_task(file->f_inode)) &&
			    decide(bpf_get_current_task_btf(), target, &prot, ptrace_mode, KG_OP_OTHER, 0))
				return -EACCES; /* the errno the kernel's own refusal gives (mm_access) */
		}
		return proc_side_door(file);
	}
	if (mode == S_IFCHR_BITS)
		return kmem_side_door(file);
	inode = file->f_inode;
	if (mode == S_IFBLK_BITS) {
		__u32 rdev = inode->i_rdev;

		if (bpf_map_lookup_elem(&raw_devs, &rdev))
			return side_door(bpf_get_current_task_btf(), KG_SIDE_RAW_DISK, KG_ALLOW_RAWDISK, KG_CNT_KMEM_DENIED, rdev,
					 file->f_path.dentry->d_name.name, 0, 0);
		return 0;
	}
	/* maybe_listed() said yes above: a key file, listed or trusted executable, or loop image perhaps. */
	id.dev = inode->i_sb->s_dev;
	id.ino = inode->i_ino;
	if (file->f_mode & FMODE_WRITE) {
		if (is_trusted_exe(inode))
			return tamper(KG_TAMPER_EXE_WRITE, id.ino, file->f_path.dentry->d_name.name);
		rule_id = bpf_map_lookup_elem(&exe_rules, &id);
		if (rule_id)
			return guard_inode(inode, KG_KEY_WRITE, file->f_path.dentry->d_name.name);
	}
	rule_id = bpf_map_lookup_elem(&key_rules, &id);
	if (!rule_id)
		return 0;
	if (*rule_id == KG_ALLOW_RAWDISK) /* a loop image holding a key file's filesystem */
		return side_door(bpf_get_current_task_btf(), KG_SIDE_RAW_DISK, KG_ALLOW_RAWDISK, KG_CNT_KMEM_DENIED, 0,
				 file->f_path.dentry->d_name.name, 0, 0);
	return key_open(file, *rule_id);
}

/*
 * Reads and writes through /proc/PID/mem or /proc/PID/environ. The ptrace check runs at open only, so a
 * file opened before its process became protected (key-file open, agent scan, new cgroup rule) would
 * keep reading. Cheap exits first: this runs on every read and write.
 */
SEC("lsm/file_permission")
int BPF_PROG(kg_file_permission, struct file *file, int mask, int ret)
{
	struct task_struct *cur, *target;
	struct kg_late_mark *late;
	struct kg_mark prot = {};
	const unsigned char *name;
	char n[8] = {};
	__u32 tgid, len;

	if (ret)
		return ret;
	if (!(mask & (MAY_READ | MAY_WRITE)))
		return 0;
	if (file->f_inode->i_sb->s_magic != PROC_SUPER_MAGIC)
		return 0;
	/* "mem" or "environ": compare the length first, it needs no helper call. */
	len = file->f_path.dentry->d_name.len;
	if (len != 3 && len != 7)
		return 0;
	name = file->f_path.dentry->d_name.name;
	bpf_probe_read_kernel_str(n, sizeof(n), name);
	if (!(n[0] == 'm' && n[1] == 'e' && n[2] == 'm' && n[3] == 0) &&
	    !(n[0] == 'e' && n[1] == 'n' && n[2] == 'v' && n[3] == 'i' && n[4] == 'r' && n[5] == 'o' &&
	      n[6] == 'n' && n[7] == 0))
		return 0;

	target = proc_task(file->f_inode);
	if (!target)
		return 0;
	cur = bpf_get_current_task_btf();
	tgid = BPF_CORE_READ(target, tgid);
	if (tgid == cur->tgid)
		return 0;
	late = late_mark_of(target, tgid);
	if (late) {
		prot.rule_id = late->rule_id;
		prot.reason = late->reason;
	} else {
		prot.rule_id = cgroup_rule(target);
		prot.reason = KG_REASON_CGROUP;
		if (!prot.rule_id)
			return 0;
	}
	return decide(cur, target, &prot, 0x02 | 0x08, KG_OP_PROC_READ, name);
}

static __always_inline void emit_dump(struct task_struct *t, struct kg_mark *m, __u32 action, __u32 sig)
{
	struct kg_event *e = new_event(KG_EVENT_DUMP, m);

	if (!e)
		return;
	e->op = action;
	e->access_mode = sig;
	fill_proc(&e->target, t);
	bpf_ringbuf_submit(e, 0);
}

/* SIG_KERNEL_COREDUMP_MASK: SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU, SIGXFSZ, SIGSYS. */
#define KG_SIG_COREDUMP_MASK ((1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 7) | (1u << 8) | (1u << 11) | \
			      (1u << 24) | (1u << 25) | (1u << 31))

/* Remember which fatal signal a protected process is getting, for the core-dump event. */
SEC("tp_btf/signal_deliver")
int BPF_PROG(kg_signal_deliver, int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
{
	struct task_struct *cur;
	struct kg_mark *m;

	/* Only a signal whose default action dumps core, delivered with that default action, can start a
	 * dump (get_signal → do_coredump); every other delivery is of no interest here. */
	if (sig <= 0 || sig >= 32 || !((1u << sig) & KG_SIG_COREDUMP_MASK))
		return 0;
	if (ka && ka->sa.sa_handler != 0 /* SIG_DFL */)
		return 0;
	cur = bpf_get_current_task_btf();
	m = mark_get(cur->group_leader);
	if (m && m->rule_id)
		m->dump_signal = sig;
	return 0;
}

/*
 * do_coredump() prepares credentials before it creates a core file or starts a pipe helper, and
 * get_signal() has set PF_SIGNALED by then. Denying here for a protected process leaves no core file
 * and starts no helper: not one byte of the dump exists anywhere.
 */
SEC("lsm/cred_prepare")
int BPF_PROG(kg_cred_prepare, struct cred *new, const struct cred *old, gfp_t gfp, int ret)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_rule *rule;
	struct kg_mark prot = {}, *m;
	__u32 mode = KG_DUMP_MODE_BLOCK;

	if (ret)
		return ret;
	if (!(cur->flags & PF_SIGNALED))
		return 0;
	if (!protection(cur, &prot))
		return 0;
	m = mark_get(cur->group_leader);
	rule = bpf_map_lookup_elem(&rules, &prot.rule_id);
	if (rule)
		mode = rule->dumps;
	if (mode == KG_DUMP_MODE_ALLOW) {
		count(KG_CNT_DUMP_ALLOWED);
		emit_dump(cur, &prot, KG_DUMP_ALLOWED, m ? m->dump_signal : 0);
		return 0;
	}
	/* Without the dump_emit guard nothing keeps the dump from a foreign destination: block it. */
	if (mode == KG_DUMP_MODE_REDACT && cfg_dump_guard) {
		count(KG_CNT_DUMP_TO_HANDLER);
		emit_dump(cur, &prot, KG_DUMP_TO_HANDLER, m ? m->dump_signal : 0);
		return 0;
	}
	/* block, and any unknown mode: fail closed */
	count(KG_CNT_DUMP_BLOCKED);
	emit_dump(cur, &prot, KG_DUMP_BLOCKED, m ? m->dump_signal : 0);
	return -EPERM;
}

/*
 * Every write of a core dump. A protected process's dump may only go into a pipe the kernel created for
 * keyguard's handler; anything else (core_pattern changed behind keyguard's back, a file pattern, another
 * helper) gets SIGKILL before its first byte, which makes the kernel stop the dump (dump_interrupted).
 */
SEC("fentry/dump_emit")
int BPF_PROG(kg_dump_emit, struct coredump_params *cprm, const void *buf, int nr)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_mark prot = {}, *m;
	__u64 addr, *ino;

	if (!protection(cur, &prot))
		return 0;
	{
		struct kg_rule *rule = bpf_map_lookup_elem(&rules, &prot.rule_id);

		if (rule && rule->dumps == KG_DUMP_MODE_ALLOW)
			return 0;
	}
	addr = (__u64)BPF_CORE_READ(cprm, file, f_inode);
	ino = bpf_map_lookup_elem(&handler_pipes, &addr);
	if (ino && *ino == BPF_CORE_READ(cprm, file, f_inode, i_ino))
		return 0;
	bpf_send_signal(SIGKILL);
	m = mark_get(cur->group_leader);
	if (m && !(m->dump_flags & KG_DUMPF_REPORTED)) {
		m->dump_flags |= KG_DUMPF_REPORTED;
		count(KG_CNT_DUMP_KILLED);
		emit_dump(cur, &prot, KG_DUMP_BAD_DESTINATION, BPF_CORE_READ(cprm, siginfo, si_signo));
	}
	return 0;
}

/* --- keyguard guards itself ------------------------------------------------------------------ */

/* A new fd of an existing map (OBJ_GET, MAP_GET_FD_BY_ID): keyguard's maps only read-only for others. */
SEC("lsm/bpf_map")
int BPF_PROG(kg_bpf_map, struct bpf_map *map, fmode_t fmode)
{
	if (!(fmode & FMODE_WRITE) || !is_own(KG_OWN_MAP, map->id))
		return 0;
	return tamper(KG_TAMPER_MAP_WRITE, map->id, 0);
}

/* A new fd of an existing program: keyguard's programs are nobody else's business. */
SEC("lsm/bpf_prog")
int BPF_PROG(kg_bpf_prog, struct bpf_prog *prog)
{
	__u32 id = BPF_CORE_READ(prog, aux, id);

	if (!is_own(KG_OWN_PROG, id))
		return 0;
	return tamper(KG_TAMPER_PROG_FD, id, 0);
}

/*
 * Program types that run in other processes' context or can reach user memory by other means:
 * bpf_probe_read_user in a kprobe, tracepoint, perf_event or raw tracepoint that fires in the victim,
 * bpf_copy_from_user_task in anything sleepable.
 */
static __always_inline int reads_user_memory(__u32 type, __u32 flags)
{
	if (flags & BPF_F_SLEEPABLE_FLAG)
		return 1;
	switch (type) {
	case 2:  /* KPROBE (and uprobe) */
	case 5:  /* TRACEPOINT */
	case 7:  /* PERF_EVENT */
	case 17: /* RAW_TRACEPOINT */
	case 24: /* RAW_TRACEPOINT_WRITABLE */
	case 26: /* TRACING: fentry, fexit, fmod_ret, tp_btf, iter */
	case 28: /* EXT: replaces functions of other programs */
	case 29: /* LSM */
	case 31: /* SYSCALL */
		return 1;
	}
	return 0;
}

/* BPF_PROG_LOAD: only keyguard and the policy's bpf_loaders may load programs that can read user memory. */
static __always_inline int bpf_load(union bpf_attr *attr)
{
	__u32 type = BPF_CORE_READ(attr, prog_type);

	if (!reads_user_memory(type, BPF_CORE_READ(attr, prog_flags)))
		return 0;
	return side_door(bpf_get_current_task_btf(), KG_SIDE_BPF_LOAD, 0, KG_CNT_BPF_LOAD_DENIED, type,
			 &attr->prog_name, 0, 0);
}

/* The link commands of bpf(2): links have no fd hook of their own, so look at the command. */
SEC("lsm/bpf")
int BPF_PROG(kg_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct task_struct *cur;
	struct file **fds, *f;
	struct bpf_link *l;
	__u32 fd, id, max;

	if (cmd == BPF_PROG_LOAD_CMD)
		return bpf_load(attr);
	if (cmd == BPF_LINK_GET_FD_BY_ID_CMD) {
		id = BPF_CORE_READ(attr, link_id);
		if (is_own(KG_OWN_LINK, id))
			return tamper(KG_TAMPER_LINK_FD, id, 0);
		return 0;
	}
	if (cmd != BPF_LINK_DETACH_CMD && cmd != BPF_LINK_UPDATE_CMD)
		return 0;
	fd = cmd == BPF_LINK_DETACH_CMD ? BPF_CORE_READ(attr, link_detach.link_fd) : BPF_CORE_READ(attr, link_update.link_fd);
	cur = bpf_get_current_task_btf();
	max = BPF_CORE_READ(cur, files, fdt, max_fds);
	if (fd >= max)
		return 0;
	fds = BPF_CORE_READ(cur, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	l = BPF_CORE_READ(f, private_data);
	id = BPF_CORE_READ(l, id);
	if (is_own(KG_OWN_LINK, id))
		return tamper(KG_TAMPER_LINK_DETACH, id, 0);
	return 0;
}

static __always_inline int own_dir(struct inode *dir)
{
	__u32 zero = 0;
	struct kg_agent *a = bpf_map_lookup_elem(&agent, &zero);

	if (!dir || dir->i_sb->s_magic != BPF_FS_MAGIC)
		return 0;
	if (!a || a->bpffs_dev != dir->i_sb->s_dev)
		return 0;
	return is_own(KG_OWN_DIR, dir->i_ino);
}

static __always_inline int own_dentry_dir(struct dentry *d)
{
	struct inode *i = d->d_inode;

	return i && own_dir(i);
}

SEC("lsm/inode_unlink")
int BPF_PROG(kg_inode_unlink, struct inode *dir, struct dentry *dentry)
{
	if (own_dir(dir))
		return tamper(KG_TAMPER_PIN_UNLINK, 0, dentry->d_name.name);
	return guard_inode(dentry->d_inode, KG_KEY_UNLINK, dentry->d_name.name);
}

SEC("lsm/inode_rmdir")
int BPF_PROG(kg_inode_rmdir, struct inode *dir, struct dentry *dentry)
{
	if (own_dir(dir) || own_dentry_dir(dentry))
		return tamper(KG_TAMPER_PIN_UNLINK, 0, dentry->d_name.name);
	return 0;
}

SEC("lsm/inode_rename")
int BPF_PROG(kg_inode_rename, struct inode *old_dir, struct dentry *old_dentry, struct inode *new_dir, struct dentry *new_dentry)
{
	int r;

	if (own_dir(old_dir) || own_dir(new_dir) || own_dentry_dir(old_dentry))
		return tamper(KG_TAMPER_PIN_RENAME, 0, old_dentry->d_name.name);
	r = guard_inode(old_dentry->d_inode, KG_KEY_RENAME, old_dentry->d_name.name);
	if (r)
		return r;
	/* a file renamed over a key file or listed executable replaces it */
	return guard_inode(new_dentry->d_inode, KG_KEY_RENAME, new_dentry->d_name.name);
}

SEC("lsm/inode_link")
int BPF_PROG(kg_inode_link, struct dentry *old_dentry, struct inode *dir, struct dentry *new_dentry)
{
	return guard_inode(old_dentry->d_inode, KG_KEY_LINK, new_dentry->d_name.name);
}

/* truncate(2), open(O_TRUNC) and, on 6.1, ftruncate(2) (6.2+ has file_truncate for ftruncate; an fd
 * that can write a guarded file is refused at open). keyguard's trusted executable: nobody. */
SEC("lsm/path_truncate")
int BPF_PROG(kg_path_truncate, const struct path *path)
{
	struct dentry *d = path->dentry;
	struct inode *inode = d->d_inode;

	if (inode && is_trusted_exe(inode))
		return tamper(KG_TAMPER_EXE_WRITE, inode->i_ino, d->d_name.name);
	return guard_inode(inode, KG_KEY_TRUNCATE, d->d_name.name);
}

SEC("lsm/path_chmod")
int BPF_PROG(kg_path_chmod, const struct path *path, umode_t mode)
{
	return guard_inode(path->dentry->d_inode, KG_KEY_CHMOD, path->dentry->d_name.name);
}

SEC("lsm/path_chown")
int BPF_PROG(kg_path_chown, const struct path *path)
{
	return guard_inode(path->dentry->d_inode, KG_KEY_CHOWN, path->dentry->d_name.name);
}

/* The first argument is a user_namespace (6.1) or an mnt_idmap (6.12); only the dentry is used. */
SEC("lsm/inode_setxattr")
int BPF_PROG(kg_inode_setxattr, void *idmap, struct dentry *dentry, const char *name)
{
	return guard_inode(dentry->d_inode, KG_KEY_XATTR, dentry->d_name.name);
}

SEC("lsm/inode_removexattr")
int BPF_PROG(kg_inode_removexattr, void *idmap, struct dentry *dentry, const char *name)
{
	return guard_inode(dentry->d_inode, KG_KEY_XATTR, dentry->d_name.name);
}

/*
 * An inode leaving memory with no links left is gone for good: its number may be given to a new file.
 * Forget it as a trusted executable, a listed executable and a key file, so that new file is none of them.
 */
SEC("lsm/inode_free_security")
int BPF_PROG(kg_inode_free_security, struct inode *inode)
{
	struct kg_own_key k = {.kind = KG_OWN_EXE};
	struct kg_file_id id = {};

	if (inode->i_nlink)
		return 0;
	id.dev = inode->i_sb->s_dev;
	id.ino = inode->i_ino;
	if (!maybe_listed(id.dev, id.ino))
		return 0;
	k.dev = (__u32)id.dev;
	k.id = id.ino;
	bpf_map_delete_elem(&own, &k);
	bpf_map_delete_elem(&exe_rules, &id);
	bpf_map_delete_elem(&key_rules, &id);
	return 0;
}

/* Unmounting the bpffs instance that holds the pins would release them. */
SEC("lsm/sb_umount")
int BPF_PROG(kg_sb_umount, struct vfsmount *mnt, int flags)
{
	__u32 zero = 0;
	struct kg_agent *a = bpf_map_lookup_elem(&agent, &zero);
	struct super_block *sb = mnt->mnt_sb;

	if (!a || !a->bpffs_dev || sb->s_magic != BPF_FS_MAGIC || sb->s_dev != a->bpffs_dev)
		return 0;
	return tamper(KG_TAMPER_UMOUNT, 0, 0);
}

/*
 * perf events that copy user memory or registers (PERF_SAMPLE_STACK_USER, PERF_SAMPLE_REGS_USER, AUX
 * tracing) of a protected process. Root (CAP_PERFMON) never reaches ptrace_access_check for perf, so the
 * target is checked here, once the event knows it. CPU-wide events cannot be filtered by target: they
 * are refused while any protected process exists (marks recorded in late_marks or task storage are not
 * countable here, so "exists" means the agent registered and a rule is loaded).
 */
#define PERF_SAMPLE_USER_COPY (4096 | 8192) /* REGS_USER | STACK_USER */

SEC("lsm/perf_event_alloc")
int BPF_PROG(kg_perf_event_alloc, struct perf_event *event)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct task_struct *target;
	struct kg_mark prot = {};
	__u64 sample = BPF_CORE_READ(event, attr.sample_type);
	__u32 aux = BPF_CORE_READ(event, attr.aux_watermark);
	__u32 zero = 0;
	struct kg_agent *a;

	if (!(sample & PERF_SAMPLE_USER_COPY) && !aux)
		return 0;
	target = event->hw.target;
	if (target) {
		if (!protection(target, &prot))
			return 0;
	} else {
		/* CPU-wide: refuse while keyguard is active (an agent registered). */
		a = bpf_map_lookup_elem(&agent, &zero);
		if (!a || !a->tgid)
			return 0;
	}
	return side_door(cur, KG_SIDE_PERF_USER, 0, KG_CNT_PERF_DENIED, (__u32)sample, 0, target, target ? &prot : 0);
}

/*
 * Kernel module and kexec image loads: a module reads any process's memory and can unhook keyguard; a
 * kexec'd kernel runs without it. settings.modules: deny (default), audit or allow. finit_module and
 * kexec_file_load come through kernel_read_file, init_module and kexec_load through kernel_load_data.
 */
static __always_inline int kernel_load(__u32 what, struct file *file)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct kg_settings *st = get_settings();
	__u32 mode = st ? st->modules : KG_MODULES_DENY, decision;
	struct kg_mark none = {};
	struct kg_event *e;
	int ret = 0;

	if (mode == KG_MODULES_ALLOW)
		return 0;
	if (mode == KG_MODULES_AUDIT) {
		decision = KG_DECISION_ALLOWED_AUDIT;
		count(KG_CNT_SIDE_DOOR_AUDIT);
	} else {
		decision = KG_DECISION_DENIED;
		count(KG_CNT_MODULE_DENIED);
		ret = -EPERM;
	}
	e = new_event(KG_EVENT_SIDE_DOOR, &none);
	if (e) {
		e->op = KG_SIDE_MODULE;
		e->decision = decision;
		e->access_mode = what;
		if (file)
			bpf_probe_read_kernel_str(e->detail, sizeof(e->detail), BPF_CORE_READ(file, f_path.dentry, d_name.name));
		fill_proc(&e->actor, cur);
		bpf_ringbuf_submit(e, 0);
	}
	return ret;
}

SEC("lsm/kernel_read_file")
int BPF_PROG(kg_kernel_read_file, struct file *file, enum kernel_read_file_id id, bool contents, int ret)
{
	if (ret)
		return ret;
	if (id == bpf_core_enum_value(enum kernel_read_file_id, READING_MODULE))
		return kernel_load(1, file);
	if (id == bpf_core_enum_value(enum kernel_read_file_id, READING_KEXEC_IMAGE))
		return kernel_load(2, file);
	return 0;
}

SEC("lsm/kernel_load_data")
int BPF_PROG(kg_kernel_load_data, enum kernel_load_data_id id, bool contents, int ret)
{
	if (ret)
		return ret;
	if (id == bpf_core_enum_value(enum kernel_load_data_id, LOADING_MODULE))
		return kernel_load(1, 0);
	if (id == bpf_core_enum_value(enum kernel_load_data_id, LOADING_KEXEC_IMAGE))
		return kernel_load(2, 0);
	return 0;
}

/*
 * Hooks that only some kernels have. The loader probes the kernel's BTF for each and leaves the program
 * out where the hook is missing (loader.Variants); on those kernels the operation reaches the hook named
 * beside each program instead, which already guards it.
 */

/* ftruncate(2) of an fd that was opened for writing before its file became a key file or a listed
 * executable (6.2+; on 6.1 do_sys_ftruncate calls security_path_truncate: kg_path_truncate). */
SEC("lsm/file_truncate")
int BPF_PROG(kg_file_truncate, struct file *file)
{
	struct dentry *d = file->f_path.dentry;
	struct inode *inode = file->f_inode;

	if (inode && is_trusted_exe(inode))
		return tamper(KG_TAMPER_EXE_WRITE, inode->i_ino, d->d_name.name);
	return guard_inode(inode, KG_KEY_TRUNCATE, d->d_name.name);
}

/* POSIX ACLs (6.2+ set and remove them through these hooks; before, through inode_setxattr and
 * inode_removexattr of system.posix_acl_*). The first argument is a user_namespace or an mnt_idmap. */
SEC("lsm/inode_set_acl")
int BPF_PROG(kg_inode_set_acl, void *idmap, struct dentry *dentry, const char *acl_name)
{
	return guard_inode(dentry->d_inode, KG_KEY_XATTR, dentry->d_name.name);
}

SEC("lsm/inode_remove_acl")
int BPF_PROG(kg_inode_remove_acl, void *idmap, struct dentry *dentry, const char *acl_name)
{
	return guard_inode(dentry->d_inode, KG_KEY_XATTR, dentry->d_name.name);
}

/*
 * process_vm_rw() is where every process_vm_readv/writev goes, native or compat, and it has one BTF
 * entry on every kernel keyguard supports (the syscall functions have two on 6.1). Entered: the thread
 * is recorded, so ptrace_access_check publishes its read; left: the read is over.
 */
SEC("fentry/process_vm_rw")
int BPF_PROG(kg_vm_rw_enter)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 one = 1;

	if (bpf_map_update_elem(&vm_rw_calls, &tid, &one, BPF_ANY))
		bpf_send_signal(SIGKILL); /* fail closed: an untracked read must not copy */
	return 0;
}

SEC("fexit/process_vm_rw")
int BPF_PROG(kg_vm_rw_exit)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&vm_rw_calls, &tid);
	end_read();
	return 0;
}
