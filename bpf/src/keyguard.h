/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by the BPF programs and (through bpf2go -type) the Go agent. Defined once, here. */
#ifndef KEYGUARD_H
#define KEYGUARD_H

#define KG_COMM_LEN 16
#define KG_NAME_LEN 32
#define KG_DETAIL_LEN 64
#define KG_PATH_LEN 256 /* exe path: NUL-separated components, leaf first; see events.exePath */

/* Policy mode of a rule (rules map). */
enum kg_mode {
	KG_MODE_ENFORCE = 0,
	KG_MODE_AUDIT = 1,
};

/* What happened to an attempt. */
enum kg_decision {
	KG_DECISION_NONE = 0,
	KG_DECISION_DENIED = 1,
	KG_DECISION_ALLOWED_AUDIT = 2,       /* would be denied, rule in audit mode */
	KG_DECISION_ALLOWED_POLICY = 3,      /* accessor allowed by the rule */
	KG_DECISION_ALLOWED_BREAK_GLASS = 4, /* accessor has an unexpired break-glass grant */
};

enum kg_event_kind {
	KG_EVENT_ACCESS = 1,  /* another process tried to reach a protected process's memory */
	KG_EVENT_PROTECT = 2, /* a process became protected in the kernel (exec or key-file open) */
	KG_EVENT_DUMP = 3,    /* a protected process started to dump core; op is an enum kg_dump_action */
	KG_EVENT_TAMPER = 4,  /* someone other than the agent reached for keyguard's own BPF objects; op is an enum kg_tamper */
	KG_EVENT_SIDE_DOOR = 5, /* a way around the ptrace checks; op is an enum kg_side_door */
	KG_EVENT_KEY_FILE = 6,  /* an open or metadata change of a key file (or listed executable); op: enum kg_key_op */
};

/* What was attempted on a key file (or a listed executable, or keyguard's trusted executable). */
enum kg_key_op {
	KG_KEY_OPEN = 1,     /* open by a process that does not hold the rule's keys */
	KG_KEY_LINK = 2,     /* a new hard link */
	KG_KEY_RENAME = 3,   /* rename of the file, or of another file over it */
	KG_KEY_UNLINK = 4,
	KG_KEY_TRUNCATE = 5,
	KG_KEY_CHMOD = 6,
	KG_KEY_CHOWN = 7,
	KG_KEY_XATTR = 8,    /* setxattr/removexattr (ACLs on 6.1) */
	KG_KEY_WRITE = 9,    /* write open of a listed executable or of keyguard's trusted executable */
	KG_KEY_OPEN_BUSY = 10, /* key-file open refused with EAGAIN: memory reads of the opener were in flight */
	KG_KEY_OPEN_DIGEST = 11, /* key-file open of a strict rule by a process whose executable matched no approved digest */
};

/* Which file a kg_key_op event concerns (event access_mode). */
enum kg_guarded {
	KG_GUARD_KEY_FILE = 1,
	KG_GUARD_SIGNER_EXE = 2, /* an executable a rule lists */
	KG_GUARD_AGENT_EXE = 3,  /* keyguard's trusted executable */
};

enum kg_side_door {
	KG_SIDE_BPF_LOAD = 1,   /* a BPF program that can read user memory; access_mode is the program type */
	KG_SIDE_PERF_USER = 2,  /* a perf event copying a protected process's user stack/registers; access_mode: sample_type */
	KG_SIDE_SYSCTL = 3,     /* a write open of a sysctl that decides where dumps go or who may trace; detail: its name */
	KG_SIDE_KMEM = 4,       /* an open of /proc/kcore, /dev/mem, /dev/kmem or /dev/port; detail: which */
	KG_SIDE_MODULE = 5,     /* a kernel module or kexec image load; access_mode: 1 module, 2 kexec image; detail: file */
	KG_SIDE_RAW_DISK = 6,   /* an open of a block device (or loop image) holding a key file's filesystem; access_mode: rdev */
};

/* Pseudo rule ids for the allow map: who may pass a side door (policy bpf_loaders, sysctl_writers,
 * kernel_memory_readers). bpf_loaders use rule id 0 for BPF loads and perf. */
#define KG_ALLOW_SYSCTL 0xfffffff0u
#define KG_ALLOW_KMEM 0xfffffff1u
/* key_managers: may open, link, rename, unlink, truncate, chmod/chown and set xattrs on every key file. */
#define KG_ALLOW_KEYMGR 0xfffffff2u
/* raw_disk_readers: may open block devices and loop images that hold a key file's filesystem. In the
 * key_rules map this value marks a loop image file (a raw copy of such a filesystem), not a key file. */
#define KG_ALLOW_RAWDISK 0xfffffff3u
/* package_managers: may write, truncate, rename or unlink the executables rules list. */
#define KG_ALLOW_PKGMGR 0xfffffff4u
/* An openers entry with dev and ino KG_OPENERS_ANY (and uid KG_ANY_UID) lets any process open the rule's
 * key files (and become protected by that open): the behaviour of a rule that says `openers: any`. */
#define KG_OPENERS_ANY 0

/* What to do with kernel module and kexec image loads (settings.modules). */
enum kg_module_mode {
	KG_MODULES_DENY = 0,
	KG_MODULES_AUDIT = 1,
	KG_MODULES_ALLOW = 2,
};

/* Host-wide settings from the policy (settings map, one entry). The zero value is the strictest. */
struct kg_settings {
	__u32 side_doors; /* enum kg_mode: enforce (deny + report) or audit (report only) */
	__u32 modules;    /* enum kg_module_mode */
};

/* An operator token already used: SHA-256 of its nonce. */
struct kg_token_id {
	__u8 nonce_sha256[32];
};

/* What was approved at install time (install map, one entry): the operator's Ed25519 public key, which
 * signs uninstall, break-glass and policy tokens, and the digest of the approved policy and settings.
 * Only the trusted agent can write it (keyguard's maps are read-only to everyone else). */
struct kg_install {
	__u8 operator_key[32];
	__u8 config_sha256[32];
	__u64 installed_unix;
};

/* What was attempted against keyguard's own programs, maps, links and pins. */
enum kg_tamper {
	KG_TAMPER_MAP_WRITE = 1,   /* a writable fd of one of keyguard's maps (OBJ_GET, MAP_GET_FD_BY_ID) */
	KG_TAMPER_PROG_FD = 2,     /* an fd of one of keyguard's programs */
	KG_TAMPER_LINK_FD = 3,     /* LINK_GET_FD_BY_ID of one of keyguard's links */
	KG_TAMPER_LINK_DETACH = 4, /* LINK_DETACH or LINK_UPDATE of one of keyguard's links */
	KG_TAMPER_PIN_UNLINK = 5,  /* unlink/rmdir in keyguard's bpffs folder */
	KG_TAMPER_PIN_RENAME = 6,  /* rename of or in keyguard's bpffs folder */
	KG_TAMPER_UMOUNT = 7,      /* unmount of the bpffs holding keyguard's pins */
	KG_TAMPER_EXE_WRITE = 8,   /* write open or truncate of keyguard's trusted executable */
	KG_TAMPER_EXE_DIGEST = 9,  /* exec of a trusted executable whose content matches no recorded agent digest */
};

/* keyguard's own objects (own map): kind and id, or a bpffs folder's inode. */
enum kg_own_kind {
	KG_OWN_MAP = 1,
	KG_OWN_PROG = 2,
	KG_OWN_LINK = 3,
	KG_OWN_DIR = 4, /* id: inode number of a folder on the bpffs instance in kg_agent.bpffs_dev */
	KG_OWN_EXE = 5, /* dev, id: a trusted keyguard-agent executable (the running one, or its upgrade) */
};
/* A trusted executable's entry is removed in inode_free_security once its last link is gone, so a new
 * file that gets the same inode number later is not trusted. */
struct kg_own_key {
	__u32 kind;
	__u32 dev; /* KG_OWN_EXE: sb->s_dev (MKDEV fits in 32 bits) */
	__u64 id;
};

/*
 * Approved executable digests (digests map): the SHA-256 of the whole file, as the kernel computes it at
 * exec (bpf_ima_file_hash). rule_id is a strict rule's id (its executables' approved digests) or
 * KG_DIGEST_AGENT (keyguard's trusted executables, recorded by the agent). An entry with an all-zero
 * digest switches the check on for that id: the rule is strict, or keyguard's trust needs its digest.
 */
#define KG_DIGEST_AGENT 0xfffffff5u
struct kg_digest_key {
	__u32 rule_id;
	__u32 pad;
	__u8 sha256[32];
};

/* What exec found the process's executable to be (exe_checks task storage, on the thread-group leader;
 * reset at every exec, copied to fork children of marked processes). */
struct kg_exe_check {
	__u32 rule_id;  /* the strict rule one of whose approved digests the executable matched, or 0 */
	__u32 agent;    /* 1: a trusted keyguard executable that matched a recorded agent digest */
	__s32 hash_ret; /* what bpf_ima_file_hash returned: the hash algorithm (4: SHA-256) or -errno */
	__u32 pad;
};
#define KG_HASH_ALGO_SHA256 4 /* enum hash_algo (include/uapi/linux/hash_info.h) */

/* What a rule does with its processes' core dumps (rules map, kg_rule.dumps). */
enum kg_dump_mode {
	KG_DUMP_MODE_BLOCK = 0,
	KG_DUMP_MODE_REDACT = 1,
	KG_DUMP_MODE_ALLOW = 2,
};

/* What the kernel did with a protected process's core dump. */
enum kg_dump_action {
	KG_DUMP_BLOCKED = 1,      /* no core file, no helper: denied before anything was created */
	KG_DUMP_ALLOWED = 2,      /* rule allows dumps: it went wherever core_pattern says */
	KG_DUMP_TO_HANDLER = 3,   /* redact: streaming to keyguard's handler */
	KG_DUMP_BAD_DESTINATION = 4, /* redact, but not to keyguard's handler: the dumper was killed, 0 bytes left */
};

/* The operation behind an access decision, derived from the accessor's syscall. */
enum kg_op {
	KG_OP_OTHER = 0,
	KG_OP_PTRACE_ATTACH = 1,
	KG_OP_PTRACE_SEIZE = 2,
	KG_OP_PROCESS_VM_READV = 3,
	KG_OP_PROCESS_VM_WRITEV = 4,
	KG_OP_PIDFD_GETFD = 5,
	KG_OP_PROC_OPEN = 6,       /* open of a /proc/PID/... file that checks ptrace access */
	KG_OP_KCMP = 7,
	KG_OP_PERF_EVENT_OPEN = 8,
	KG_OP_TRACEME = 9,         /* protected process asked its parent to trace it */
	KG_OP_PROC_READ = 10,      /* read through a /proc/PID/{mem,environ} fd opened before protection */
	KG_OP_EXEC_TRACED = 11,    /* a traced process tried to exec a protected executable */
	KG_OP_KEYFILE_TRACED = 12, /* a traced process tried to open a protected key file */
	KG_OP_PTRACE_OTHER = 13,
	KG_OP_PROC_LINK = 14,      /* readlink/stat of /proc/PID/{exe,cwd,root,fd/N} */
};

/* Why a process is protected. */
enum kg_reason {
	KG_REASON_NONE = 0,
	KG_REASON_EXEC = 1,     /* executed a protected executable */
	KG_REASON_KEY_FILE = 2, /* opened a protected key file */
	KG_REASON_CGROUP = 3,   /* runs in a protected cgroup */
	KG_REASON_SCAN = 4,     /* found running by the agent's procfs scan */
	KG_REASON_INHERIT = 5,  /* forked from a protected process */
};

/* Indexes into the per-CPU counters map. */
enum kg_counter {
	KG_CNT_DENIED = 0,
	KG_CNT_AUDIT = 1,
	KG_CNT_ALLOWED_POLICY = 2,
	KG_CNT_BREAK_GLASS = 3,
	KG_CNT_NOAUDIT_CHECKS = 4, /* PTRACE_MODE_NOAUDIT checks decided without an event */
	KG_CNT_MARK_EXEC = 5,
	KG_CNT_MARK_KEY_FILE = 6,
	KG_CNT_INHERIT = 7,
	KG_CNT_AGENT = 8,          /* accesses by the agent itself */
	KG_CNT_DUMP_BLOCKED = 9,
	KG_CNT_DUMP_KILLED = 10,
	KG_CNT_DUMP_TO_HANDLER = 11,
	KG_CNT_DUMP_ALLOWED = 12,
	KG_CNT_TAMPER = 13,
	KG_CNT_BPF_LOAD_DENIED = 14,
	KG_CNT_PERF_DENIED = 15,
	KG_CNT_SYSCTL_DENIED = 16,
	KG_CNT_KMEM_DENIED = 17,
	KG_CNT_MODULE_DENIED = 18,
	KG_CNT_SIDE_DOOR_AUDIT = 19, /* side doors passed and reported because side_doors (or modules) is audit */
	KG_CNT_MAX = 20,
};

/* A file, as the kernel names it: sb->s_dev (MKDEV encoding) and inode number. */
struct kg_file_id {
	__u64 dev;
	__u64 ino;
};

/* Protection mark kept in task storage on the thread-group leader. */
struct kg_mark {
	__u32 rule_id;
	__u32 reason;      /* enum kg_reason */
	__u32 dump_signal; /* the fatal signal being delivered (for core-dump events) */
	__u32 dump_flags;  /* KG_DUMPF_* */
};
#define KG_DUMPF_REPORTED 1 /* the bad-destination kill was reported */

/* keyguard's core-dump handler executable (handler map). */
struct kg_handler {
	__u64 dev;
	__u64 ino;
};

/* Per-rule settings, keyed by rule id. */
struct kg_rule {
	__u32 mode;  /* enum kg_mode */
	__u32 dumps; /* enum kg_dump_mode (core-dump issue) */
};

/* Allow-list and break-glass key: an accessor executable + uid, for one rule. uid KG_ANY_UID matches all. */
#define KG_ANY_UID 0xffffffffu
struct kg_accessor_key {
	__u64 dev;
	__u64 ino;
	__u32 rule_id;
	__u32 uid;
};

struct kg_grant {
	__u64 expires_boot_ns; /* CLOCK_BOOTTIME */
	__u64 grant_id;
};

/* The running agent: accesses from it are allowed (it reads /proc of protected processes). */
struct kg_agent {
	__u32 tgid;
	__u32 pad;
	__u64 exe_dev;
	__u64 exe_ino;
	__u64 bpffs_dev; /* sb->s_dev of the bpffs instance holding keyguard's pins */
};

/* Late marks: processes marked after they started (key-file open, procfs scan). Keyed by tgid and checked
 * against the leader's start time in clock ticks since boot (USER_HZ, as field 22 of /proc/PID/stat), for
 * reads through /proc files opened before the process was protected. */
#define KG_NSEC_PER_TICK 10000000ULL
struct kg_late_mark {
	__u64 start_ticks;
	__u32 rule_id;
	__u32 reason;
};

struct kg_proc {
	__u32 pid; /* tgid */
	__u32 tid;
	__u32 uid;
	__u32 euid;
	__u64 cgroup_id;
	__u64 exe_dev;
	__u64 exe_ino;
	char comm[KG_COMM_LEN];
	char exe_name[KG_NAME_LEN]; /* basename of the executable, for when the process is gone */
	char exe_path[KG_PATH_LEN]; /* path components, leaf first, each NUL-terminated */
};

struct kg_event {
	__u64 boot_ns; /* CLOCK_BOOTTIME */
	__u32 kind;    /* enum kg_event_kind */
	__u32 op;      /* enum kg_op */
	__u32 decision;
	__u32 rule_id;
	__u32 rule_mode;
	__u32 access_mode; /* PTRACE_MODE_* bits */
	__u32 reason;      /* enum kg_reason (protect events) */
	__s32 syscall_nr;
	struct kg_proc actor;
	struct kg_proc target;
	char detail[KG_DETAIL_LEN];
	__u32 access_class; /* enum kg_access_class (access events) */
	__u32 pad2;
};

/* ---- Fast paths for what is none of keyguard's business (fastpath map) ----
 *
 * One ARRAY map of byte slots, read with an inlined array lookup before any hash lookup:
 * - slot KG_FAST_CGROUPS: the agent set it before it first put an entry in cgroup_rules (0: skip the
 *   cgroup walk);
 * - slot 1: unused (it was the flag of a map since removed);
 * - slots KG_FAST_FIRST + kg_fast_slot(dev, id): a filter over every (dev, inode) in exe_rules, key_rules
 *   and own (KG_OWN_EXE), and every cgroup id in cgroup_rules (dev KG_FAST_CGROUP_DEV). The agent sets a
 *   slot before it adds the entry and never clears one, so 0 proves "not listed"; 1 means "look it up".
 * Slots only go from 0 to 1, each written alone, so two writers never undo each other.
 */
#define KG_FAST_CGROUPS 0
#define KG_FAST_FIRST 2
#define KG_FAST_BITS 13
#define KG_FAST_SLOTS (KG_FAST_FIRST + (1 << KG_FAST_BITS))
#define KG_FAST_CGROUP_DEV 0xffffffffu
#define KG_FAST_MUL 0x9E3779B97F4A7C15ULL /* Fibonacci hashing; loader.fastSlot computes the same */

/* ---- Precision and aggregation of access events (issue 13) ---- */

/* What an access to a protected process exposes. Memory is the default: a check is metadata only when
 * the kernel object behind it is known to be one (see access_class in keyguard.bpf.c). */
enum kg_access_class {
	KG_CLASS_MEMORY = 1,   /* memory and secrets: mem, environ, auxv, maps, fd/N, ptrace, process_vm_*, ... */
	KG_CLASS_METADATA = 2, /* metadata: readlink/stat of /proc/PID links, exe/cwd/root/ns links, attr, fdinfo, ... */
};

/* Which /proc object a thread touched last (proc_obj map, by thread id): written by file_open,
 * inode_follow_link and inode_readlink of procfs objects, read by the ptrace check that follows. */
struct kg_proc_obj {
	__u64 pid;   /* struct pid * of the /proc/PID (or task/TID) directory the object is in */
	__u32 class; /* enum kg_access_class */
	__u32 start; /* low 32 bits of the process's start_boottime: a struct pid reused later is not this one */
};

/* Repeated access attempts of one window, aggregated in the kernel (agg map). The epoch is the window:
 * the agent bumps agg_epoch, waits until no program can still use the old one, and drains it.
 * The actor is its executable and uid, not its process: a loop of one-shot attacker processes (fork or
 * fork+exec per attempt) is one entry, like a loop in one process. */
struct kg_agg_key {
	__u64 actor_dev;
	__u64 actor_ino;
	__u64 target_start; /* start_boottime of the target's leader (tells apart a reused pid) */
	__u32 actor_uid;
	__u32 target_tgid;
	__u32 target_tid;   /* the thread checked (ptrace of a thread, /proc/PID/task/TID) */
	__u32 access_mode;  /* PTRACE_MODE_* bits: tells apart /proc/PID/mem (attach) from environ (read) */
	__u32 op;
	__u32 decision;
	__u32 access_class;
	__u32 rule_id;
	__u32 kind;
	__u32 epoch;
};

struct kg_agg {
	__u64 count;    /* attempts after the one reported through the ring buffer (or all, see below) */
	__u64 first_ns; /* CLOCK_BOOTTIME of the first and last of those */
	__u64 last_ns;
	__u64 newest_start; /* start_boottime of the latest-started actor process seen in this entry */
	__u32 processes;    /* actor processes of all the entry's attempts: each attempt by a process that
			     * started after every earlier actor counts one (exact for one-shot attackers and
			     * for loops; a lower bound when an older process starts attacking after a younger) */
	__u32 last_tgid;    /* the process of the last attempt */
	struct kg_event ev; /* the first attempt; when the ring buffer was full it is counted in count too */
};

/* Indexes into the per-CPU agg_stats map. */
enum kg_agg_stat {
	KG_AGG_FIRST = 0,    /* first attempts of a window: reported at once through the ring buffer */
	KG_AGG_COUNTED = 1,  /* repeated attempts counted in the agg map */
	KG_AGG_FULL = 2,     /* the agg map was full: reported one by one through the ring buffer */
	KG_AGG_METADATA = 3, /* metadata accesses allowed */
	KG_AGG_MAX = 4,
};

#endif
