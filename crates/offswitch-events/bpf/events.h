/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * events.h - wire format of the records offswitch.bpf.c writes into the
 * "events" ring buffer.  Mirrored by #[repr(C)] structs in src/records.rs;
 * keep both in sync (the loader checks sizeof via static asserts).
 *
 * Every record starts with struct ev_hdr.  Variable-length strings follow the
 * fixed part in `data[]`, in the order documented per record, each string's
 * length given by a *_len field.
 *
 * Paths: produced by walking dentry->d_parent up to the root of the dentry's
 * filesystem (NOT the process's root, NOT across mounts).  They are written
 * LEAF FIRST as NUL-terminated components: "c.txt\0b\0a\0" means
 * "<fs root>/a/b/c.txt".  `dev` + `fs_magic` identify the filesystem (the
 * sandbox's ext4 home, its tmpfs /tmp, ...).  User space reverses the order.
 */
#ifndef OFFSWITCH_EVENTS_H
#define OFFSWITCH_EVENTS_H

enum ev_kind {
	EV_EXEC = 1,
	EV_FILE = 2,       /* unused: file mutations come from fanotify */
	EV_SIGNAL = 3,
	EV_NET = 4,
	EV_EXIT = 5,
	EV_FORK = 6,
	EV_REFUSED = 7,    /* a file-changing syscall the kernel refused */
	EV_KIND_MAX = 8,
};

/* stats map indices (BPF_MAP_TYPE_ARRAY of u64) */
enum stat_idx {
	STAT_SEQ = 0,          /* next sequence number (global, atomically incremented) */
	STAT_LOST_TOTAL = 1,   /* all records that could not be written */
	/* STAT_LOST_BASE + ev_kind: lost per kind */
	STAT_LOST_BASE = 8,
	STAT_DENIED = 16,      /* operations denied because they could not be recorded (fail-closed) */
	STAT_PATH_TRUNC = 17,  /* paths cut at MAX_DEPTH/PATH_MAX_BYTES */
	STAT_LOST_UNATTRIBUTED = 18, /* losses lost_by_sandbox could not take (map full) */
	STAT_MAX = 24,
};


enum net_op {
	NOP_CONNECT = 1,   /* cgroup/connect4|6 (TCP and UDP) */
	NOP_BIND = 2,      /* cgroup/bind4|6 */
	NOP_LISTEN = 3,    /* tp_btf/inet_sock_set_state -> TCP_LISTEN */
	NOP_SENDMSG = 4,   /* cgroup/sendmsg4|6: UDP datagram to an explicit address */
};

#define PATH_FLAG_TRUNCATED 1
#define ARGS_FLAG_TRUNCATED 1
#define ARGS_FLAG_READ_FAILED 2

struct ev_hdr {
	__u32 kind;        /* enum ev_kind */
	__u32 len;         /* total length of this record in bytes */
	__u64 seq;         /* global sequence number: a gap == lost records */
	__u64 ts_ns;       /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 cgroup_id;   /* v2 cgroup id of the acting task */
	__u64 sandbox_cg;  /* id of the watched ancestor cgroup (the sandbox) */
	__u32 pid;         /* host thread id */
	__u32 tgid;        /* host process id */
	__u32 ppid;        /* host process id of the real parent */
	__u32 ns_pid;      /* process id inside the task's own pid namespace */
	__u32 ns_ppid;     /* parent's process id in that namespace, 0 if outside it */
	__u32 uid;         /* real uid as seen from the host */
	char comm[16];
};

struct file_id {
	__u64 ino;
	__u64 fs_magic;    /* super_block->s_magic (EXT4 0xef53, TMPFS 0x01021994, ...) */
	__u32 dev;         /* super_block->s_dev, kernel encoding (major << 20 | minor) */
	__u32 mode;        /* inode->i_mode, 0 for a not-yet-created (negative) dentry */
	__u32 path_flags;  /* PATH_FLAG_* */
	__u32 depth;       /* number of components written */
};

struct ev_exec {
	struct ev_hdr h;
	__u32 old_pid;      /* host tid that called execve (!= pid if a thread exec'd;
	                     * 0 then when the reader has a pid namespace of its own:
	                     * that thread's pid is gone, it cannot be translated) */
	__s32 argc;
	__u32 args_total;   /* mm->arg_end - mm->arg_start */
	__u32 args_len;     /* bytes of argv copied into data */
	__u32 args_flags;   /* ARGS_FLAG_* */
	__u16 filename_len; /* bprm->filename: the name passed to execve (incl. NUL) */
	__u16 interp_len;   /* bprm->interp: last name opened (interpreter for #!) */
	__u16 exe_path_len; /* path of bprm->executable (the file execve named) */
	__u16 file_path_len;/* path of bprm->file (the ELF actually mapped) */
	__u16 cwd_path_len; /* path of the working directory (to resolve a relative filename) */
	__u16 _pad[3];
	struct file_id exe;
	struct file_id file;
	struct file_id cwd;
	/* data: filename | interp | exe path | file path | cwd path | argv (NUL separated) */
	char data[];
};


struct ev_signal {
	struct ev_hdr h;    /* the SENDER (current task) */
	__u32 target_pid;   /* host tid of the target */
	__u32 target_tgid;  /* host pid of the target */
	__u32 target_ns_pid;/* target pid inside its own pid namespace */
	__s32 sig;
	__s32 si_code;      /* 0 for kill(2) (SI_USER), <0 for sigqueue/tkill, ... */
	__u32 target_watched; /* 1 if the target is a watched sandbox PID 1 */
	__u64 target_cgroup;
	__s32 result;       /* tp signal_generate: 0 delivered, 1 ignored, 2 already pending,
			       3 overflow, 4 lost info; -1 from lsm/task_kill (before delivery) */
	__u32 group;        /* 1: sent to the whole thread group */
};

struct ev_net {
	struct ev_hdr h;
	__u32 op;           /* enum net_op */
	__u16 family;       /* AF_INET 2, AF_INET6 10, AF_UNIX 1 */
	__u16 port;         /* host byte order */
	__u16 sock_type;    /* SOCK_STREAM 1, SOCK_DGRAM 2 */
	__u16 protocol;
	__s32 backlog;      /* listen only */
	__u8 addr[16];      /* IPv4 in the first 4 bytes, or IPv6 */
	char unix_path[108];/* AF_UNIX sun_path (abstract names start with NUL) */
	__u32 addrlen;
};

struct ev_exit {
	struct ev_hdr h;
	__s32 exit_code;    /* task->exit_code: (status << 8) | termsig */
	__u32 group_dead;
};

struct ev_fork {
	struct ev_hdr h;    /* the parent */
	__u32 child_pid;
	__u32 child_ns_pid;
};

/* How to read a refusable syscall's arguments (the `refusable` map, by syscall number,
 * filled by the loader with the running architecture's numbers). 0xff: none. */
struct refusable {
	__u8 path_arg;      /* argument holding the path the call changes */
	__u8 path2_arg;     /* a second path (rename, link), or 0xff */
	__u8 flags_arg;     /* open flags: recorded only with a write intent, or 0xff */
	__u8 flags_kind;    /* 0 none, 1 flags in the register, 2 a pointer to struct open_how */
};

struct ev_refused {
	struct ev_hdr h;
	__s64 nr;           /* syscall number (of the running architecture) */
	__s64 ret;          /* the negative errno */
	__u64 flags;        /* open flags, when the call has them */
	__u16 path_len;     /* the path argument as the process passed it (incl. NUL) */
	__u16 path2_len;
	__u16 cwd_path_len; /* the working directory (a relative path is relative to it,
			       unless the call named a directory fd) */
	__u16 _pad;
	struct file_id cwd;
	/* data: path | path2 | cwd path */
	char data[];
};

/* ABI lock: src/records.rs asserts the same sizes. */
_Static_assert(sizeof(struct ev_hdr) == 80, "ev_hdr");
_Static_assert(sizeof(struct file_id) == 32, "file_id");
_Static_assert(sizeof(struct ev_exec) == 216, "ev_exec");
_Static_assert(sizeof(struct ev_signal) == 120, "ev_signal");
_Static_assert(sizeof(struct ev_net) == 224, "ev_net");
_Static_assert(sizeof(struct ev_exit) == 88, "ev_exit");
_Static_assert(sizeof(struct ev_fork) == 88, "ev_fork");
_Static_assert(sizeof(struct ev_refused) == 144, "ev_refused");

#endif
