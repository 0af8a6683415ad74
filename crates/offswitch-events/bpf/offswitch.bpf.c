// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * offswitch.bpf.c - the kernel side of offswitch's event stream: what happens
 * inside each sandbox, recorded by the kernel where nothing inside can reach.
 *
 * Attach points, all filtered in their first instructions by the acting
 * task's cgroup:
 *   tp_btf/sched_process_exec   exec: the name execve got, the interpreter, the
 *                               path and inode of the ELF mapped, and the full
 *                               argv read from the NEW image's memory before it
 *                               runs a single instruction (so it cannot lie)
 *   tp_btf/sched_process_fork   the process tree (threads skipped)
 *   tp_btf/sched_process_exit   process exits (the last thread of a group)
 *   tp_btf/signal_generate      signals sent by sandbox tasks, and every signal
 *                               to a sandbox's PID 1 from anyone, with the result
 *   tp_btf/inet_sock_set_state  TCP listens, with the bound address
 *   cgroup/{connect,bind,sendmsg}{4,6}
 *                               attached to each sandbox's cgroup: connects,
 *                               binds and datagrams with their address
 *   tp_btf/sys_exit             file-changing syscalls the kernel refused
 *                               (EPERM, EACCES, EBUSY, EXDEV, ETXTBSY, EROFS):
 *                               attempts on read-only and protected paths,
 *                               with the path as the process passed it
 *
 * File mutations are recorded with fanotify in user space: the BPF LSM hooks
 * that would see them before they happen need BPF trampolines, which the
 * kernels offswitch was built on refuse (see ARCHITECTURE.md).
 *
 * Filtering: a task is recorded iff one of its v2 cgroup's ancestors is a key
 * of `watched_cgroups`. Host tasks pay a few helper calls and hash lookups.
 *
 * Loss: every record takes a global sequence number, and a record that cannot
 * be written is counted in stats[] (in total and per kind) and in
 * lost_by_sandbox[its sandbox], so each sandbox knows whether its stream is
 * complete. Nothing is lost silently. With fail_closed=1 a connect or bind
 * whose record cannot be written is refused, and an exec is killed before it
 * runs.
 *
 * Records are built in a per-CPU scratch buffer and copied into the ring
 * buffer with their exact length (bpf_ringbuf_output).
 */
#include "vmlinux_min.h"
#include "bpf_min.h"
#include "events.h"

/* GPL-compatible: tp_btf programs and bpf_probe_read_kernel need it. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- configuration, set by the loader before load (.rodata) ---- */
const volatile __u32 fail_closed = 0; /* deny/kill what cannot be recorded */
/* 0: default adaptive wakeup (the consumer is woken through irq_work when it
 * has caught up, i.e. for nearly every record with a fast consumer);
 * BPF_RB_NO_WAKEUP (1): never wake, the consumer polls on a timer. */
const volatile __u32 rb_flags = 0;
/* The pid namespace of the reader (the process that loaded this object), by
 * its inode number; 0 for the initial namespace. The host pids of a record
 * (h.pid, h.tgid, h.ppid, a fork's child, a signal's target, and the keys of
 * watched_pids) are pids in that namespace, as the reader sees them in its
 * /proc, in its children's pids and in fanotify's records; in a container
 * without the host's pid namespace the initial namespace's pids would name
 * other processes or none. 0 when the task has no pid there. */
const volatile __u32 reader_ns_inum = 0;
/* The reader namespace's level plus one, once a program has found it (0: not
 * yet). A namespace's level never changes, so the first find holds for all. */
__u32 reader_level_found = 0;

/* ---- sizes ---- */
#define NAME_BYTES 256       /* one path component incl. NUL (NAME_MAX + 1) */
#define MAX_DEPTH 40         /* path components walked */
#define PATH_MAX_BYTES 4096  /* per path */
#define ARGS_MAX 4096        /* argv bytes copied */
#define DATA_MASK 16383      /* data offsets are masked with this (verifier) */
#define SCRATCH_BUF (16384 + 4096 + 512)
#define NEST_SLOTS 4         /* concurrent programs per CPU (preemptible kernel) */

#define SIGKILL 9
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

/* ---- maps ---- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* overridden by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* v2 cgroup id (inode number of the cgroup dir) */
	__type(value, __u8);
} watched_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);   /* host pid of a sandbox's PID 1 */
	__type(value, __u64); /* its sandbox cgroup id */
} watched_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* sandbox cgroup id */
	__type(value, __u64); /* records of that sandbox that could not be written */
} lost_by_sandbox SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);   /* syscall number of the running architecture */
	__type(value, struct refusable); /* all 0: not refusable (the loader fills the rest) */
} refusable SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct scratch {
	__u32 busy; /* 0 = free; taken with cmpxchg (a preempted program keeps it) */
	__u32 _pad;
	char buf[SCRATCH_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NEST_SLOTS);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

_Static_assert(sizeof(struct ev_exec) + DATA_MASK + 1 + ARGS_MAX <= SCRATCH_BUF, "exec scratch");

/* ---- small helpers ---- */

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		__sync_fetch_and_add(v, n);
}

/* Count one lost record of `sandbox` (0: none known). */
static __always_inline void lost_for(__u64 sandbox)
{
	if (!sandbox)
		return;
	__u64 *v = bpf_map_lookup_elem(&lost_by_sandbox, &sandbox);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else {
		__u64 one = 1;
		/* BPF_NOEXIST: a concurrent first loss may win; it counted itself. */
		if (bpf_map_update_elem(&lost_by_sandbox, &sandbox, &one, 1))
			stat_add(STAT_LOST_UNATTRIBUTED, 1);
	}
}

static __always_inline __u64 next_seq(void)
{
	__u32 idx = STAT_SEQ;
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	return v ? __sync_fetch_and_add(v, 1) : 0;
}

/* Sandbox cgroup id of the current task, 0 if it is not watched: the first of its v2
 * cgroup's ancestors (from the top) that is watched. Looked up by level, so that the
 * sandboxes' depth need not be known (it differs when the recorder itself runs in a
 * container's cgroup namespace), and sub-cgroups of a sandbox count as the sandbox. */
#define MAX_LEVEL 16
static __always_inline __u64 current_sandbox(void)
{
	for (int level = 1; level <= MAX_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&watched_cgroups, &id))
			return id;
	}
	return 0;
}

static __always_inline struct scratch *get_scratch(void)
{
	for (__u32 i = 0; i < NEST_SLOTS; i++) {
		__u32 k = i;
		struct scratch *s = bpf_map_lookup_elem(&scratch, &k);
		if (!s)
			return NULL;
		if (__sync_val_compare_and_swap(&s->busy, 0, 1) == 0)
			return s;
	}
	return NULL;
}

static __always_inline void put_scratch(struct scratch *s)
{
	*(volatile __u32 *)&s->busy = 0;
}

/* nr of `pid` at namespace `level`, 0 if pid is not visible there; *ns gets the namespace. */
static __always_inline __u32 pid_nr_at(struct pid *pid, __u32 level, void **ns)
{
	struct upid u = {};
	if (!pid || KREAD(pid, level) < level)
		return 0;
	/* numbers[] is a flexible array: relocate its offset, index by hand
	 * (sizeof(struct upid) == 16 on every 64-bit kernel). */
	unsigned long addr = (unsigned long)CORE_ADDR(pid, numbers) + (unsigned long)level * 16;
	bpf_probe_read_kernel(&u, sizeof(u), (void *)addr);
	*ns = u.ns;
	return u.nr;
}

#define MAX_PID_NS_LEVEL 32

static __always_inline __u32 ns_inum(void *ns)
{
	return ns ? KREAD((struct pid_namespace *)ns, ns.inum) : 0;
}

/* `pid` (a struct pid's address) as the reader sees it: its nr in the reader's
 * namespace, 0 when it has none there. The reader's level is found once, by
 * looking for the namespace among the levels of the first pid that has one
 * there. A global function: the verifier checks it once, not at every call. */
__attribute__((noinline)) __u32 reader_nr_at(__u64 address)
{
	struct pid *pid = (struct pid *)address;
	void *ns = NULL;
	__u32 nr;
	if (!pid)
		return 0;
	__u32 found = reader_level_found;
	if (found) {
		nr = pid_nr_at(pid, found - 1, &ns);
		return nr && ns_inum(ns) == reader_ns_inum ? nr : 0;
	}
	__u32 level = KREAD(pid, level);
	for (__u32 i = 0; i <= MAX_PID_NS_LEVEL; i++) {
		if (i > level)
			break;
		nr = pid_nr_at(pid, i, &ns);
		if (nr && ns_inum(ns) == reader_ns_inum) {
			reader_level_found = i + 1;
			return nr;
		}
	}
	return 0;
}

static __always_inline __u32 reader_nr(struct pid *pid)
{
	return reader_nr_at((__u64)pid);
}

/* The thread id and the process id of task `t` as the reader sees them. */
static __always_inline __u32 reader_tid(struct task_struct *t)
{
	return reader_ns_inum ? reader_nr(KREAD(t, thread_pid)) : (__u32)KREAD(t, pid);
}

static __always_inline __u32 reader_tgid(struct task_struct *t)
{
	if (!reader_ns_inum)
		return KREAD(t, tgid);
	struct task_struct *leader = KREAD(t, group_leader);
	return reader_nr(KREAD(leader, thread_pid));
}

/* Common header for the task `t` (normally current). */
static __always_inline void fill_hdr(struct ev_hdr *h, __u32 kind, __u64 sandbox, struct task_struct *t)
{
	struct task_struct *leader = KREAD(t, group_leader);
	struct pid *tp = KREAD(leader, thread_pid);
	struct task_struct *parent = KREAD(t, real_parent);
	__u32 level = tp ? KREAD(tp, level) : 0;
	void *ns = NULL, *pns = NULL;

	h->kind = kind;
	h->ts_ns = bpf_ktime_get_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->sandbox_cg = sandbox;
	h->pid = reader_tid(t);
	h->tgid = reader_tgid(t);
	h->ppid = reader_tgid(parent);
	h->ns_pid = pid_nr_at(tp, level, &ns);
	h->ns_ppid = pid_nr_at(KREAD(parent, thread_pid), level, &pns);
	if (pns != ns) /* parent lives in another (ancestor) pid namespace */
		h->ns_ppid = 0;
	struct cred *cred = (void *)KREAD(t, real_cred); /* not const: KREAD writes a copy */
	h->uid = KREAD(cred, uid.val);
	bpf_probe_read_kernel(h->comm, sizeof(h->comm), t->comm);
}

/* inode/fs identity of a dentry (inode may be absent: negative dentry). */
static __always_inline void fill_file_id(struct file_id *f, struct dentry *d)
{
	struct inode *ino = KREAD(d, d_inode);
	struct super_block *sb = KREAD(d, d_sb);
	f->ino = ino ? KREAD(ino, i_ino) : 0;
	f->mode = ino ? KREAD(ino, i_mode) : 0;
	f->dev = KREAD(sb, s_dev);
	f->fs_magic = KREAD(sb, s_magic);
	f->path_flags = 0;
	f->depth = 0;
}

/*
 * The value of a field just stored, loaded again from the record: the verifier
 * then knows only its type's range, the same for every way the path walk ended,
 * so the states after a walk prune each other instead of multiplying walk by walk
 * (three walks in an exec took the verifier two seconds before).
 */
#define RELOAD(field) (*(volatile typeof(field) *)&(field))

/*
 * Walk d -> d_parent up to the root of d's filesystem, writing the component
 * names leaf first, NUL-terminated, at data[off...].  Returns bytes written.
 */
static __always_inline __u32 put_path(char *data, __u32 off, struct dentry *d, struct file_id *f)
{
	__u32 start = off;
	__u32 i;

	for (i = 0; i < MAX_DEPTH; i++) {
		struct dentry *parent = KREAD(d, d_parent);
		if (!parent || parent == d) /* root of this filesystem */
			break;
		long n = bpf_probe_read_kernel_str(data + (off & DATA_MASK), NAME_BYTES, KREAD(d, d_name.name));
		if (n <= 0)
			break;
		off += n;
		f->depth++;
		d = parent;
		if (off - start > PATH_MAX_BYTES - NAME_BYTES) {
			f->path_flags |= PATH_FLAG_TRUNCATED;
			break;
		}
	}
	if (i == MAX_DEPTH) {
		f->path_flags |= PATH_FLAG_TRUNCATED;
	}
	if (f->path_flags & PATH_FLAG_TRUNCATED)
		stat_add(STAT_PATH_TRUNC, 1);
	return off - start;
}

/* Copy `len` bytes of the scratch record into the ring buffer; account loss. */
static __always_inline long submit(struct ev_hdr *h, __u64 len, __u32 kind)
{
	long err;
	h->len = len;
	h->seq = next_seq();
	err = bpf_ringbuf_output(&events, h, len, rb_flags);
	if (err) {
		stat_add(STAT_LOST_TOTAL, 1);
		stat_add(STAT_LOST_BASE + kind, 1);
		lost_for(h->sandbox_cg);
	}
	return err;
}

/* A record that could not even be built: still burn a seq number. */
static __always_inline void lost_no_scratch(__u32 kind, __u64 sandbox)
{
	next_seq();
	stat_add(STAT_LOST_TOTAL, 1);
	stat_add(STAT_LOST_BASE + kind, 1);
	lost_for(sandbox);
}

/* ------------------------------------------------------------------ */
/* exec                                                                */
/* ------------------------------------------------------------------ */

SEC("tp_btf/sched_process_exec")
int handle_exec(__u64 *ctx)
{
	struct task_struct *p = (void *)ctx[0];
	__u32 old_pid = (__u32)ctx[1];
	struct linux_binprm *bprm = (void *)ctx[2];
	__u64 sandbox = current_sandbox();
	if (!sandbox)
		return 0;

	struct scratch *s = get_scratch();
	if (!s) {
		lost_no_scratch(EV_EXEC, sandbox);
		if (fail_closed) {
			bpf_send_signal(SIGKILL);
			stat_add(STAT_DENIED, 1);
		}
		return 0;
	}
	struct ev_exec *e = (void *)s->buf;
	char *data = e->data;
	__u32 off = 0;
	long n;

	fill_hdr(&e->h, EV_EXEC, sandbox, p);
	/* The kernel's tid: the exec'ing thread's own, or a thread's that exec'd
	 * and took over the leader's pid, whose pid is gone by now. */
	if (!reader_ns_inum)
		e->old_pid = old_pid;
	else
		e->old_pid = old_pid == (__u32)KREAD(p, pid) ? e->h.pid : 0;
	e->argc = bprm->argc;
	e->args_flags = 0;

	n = bpf_probe_read_kernel_str(data, NAME_BYTES, KREAD(bprm, filename));
	e->filename_len = n > 0 ? n : 0;
	off += e->filename_len;
	n = bpf_probe_read_kernel_str(data + (off & DATA_MASK), NAME_BYTES, KREAD(bprm, interp));
	e->interp_len = n > 0 ? n : 0;
	off += e->interp_len;

	/* bprm->executable is only set for binfmt_misc 'O' (execfd); for a
	 * #! script the script's struct file is already released here, only
	 * bprm->filename names it.  bprm->file is what is really mapped. */
	struct file *exe = KREAD(bprm, executable);
	struct file *file = KREAD(bprm, file);
	__builtin_memset(&e->exe, 0, sizeof(e->exe));
	__builtin_memset(&e->file, 0, sizeof(e->file));
	e->exe_path_len = 0;
	if (exe) {
		struct dentry *dentry = KREAD(exe, f_path.dentry);
		fill_file_id(&e->exe, dentry);
		e->exe_path_len = put_path(data, off, dentry, &e->exe);
		off += RELOAD(e->exe_path_len);
	}
	e->file_path_len = 0;
	if (file) {
		struct dentry *dentry = KREAD(file, f_path.dentry);
		fill_file_id(&e->file, dentry);
		e->file_path_len = put_path(data, off, dentry, &e->file);
		off += RELOAD(e->file_path_len);
	}

	/* The working directory, to resolve a relative name (./next_question). */
	__builtin_memset(&e->cwd, 0, sizeof(e->cwd));
	e->cwd_path_len = 0;
	struct fs_struct *fs = KREAD(p, fs);
	if (fs) {
		struct dentry *pwd = KREAD(fs, pwd.dentry);
		if (pwd) {
			fill_file_id(&e->cwd, pwd);
			e->cwd_path_len = put_path(data, off, pwd, &e->cwd);
			off += RELOAD(e->cwd_path_len);
		}
	}

	/* argv: the new image's mm is current->mm now; its arg pages were
	 * written by the kernel during execve, so they are present. */
	struct mm_struct *mm = KREAD(p, mm);
	unsigned long as = KREAD(mm, arg_start), ae = KREAD(mm, arg_end);
	__u64 total = ae > as ? ae - as : 0;
	__u32 len = total;
	e->args_total = total;
	if (total > ARGS_MAX) {
		len = ARGS_MAX;
		e->args_flags |= ARGS_FLAG_TRUNCATED;
	}
	barrier_var(len);
	if (len > ARGS_MAX) /* for the verifier */
		len = ARGS_MAX;
	if (bpf_probe_read_user(data + (off & DATA_MASK), len, (void *)as) < 0) {
		e->args_flags |= ARGS_FLAG_READ_FAILED;
		len = 0;
	}
	e->args_len = len;

	__u64 size = sizeof(*e) + (off & DATA_MASK) + len;
	if (submit(&e->h, size, EV_EXEC) && fail_closed) {
		bpf_send_signal(SIGKILL); /* never run what was not recorded */
		stat_add(STAT_DENIED, 1);
	}
	put_scratch(s);
	return 0;
}

/* ------------------------------------------------------------------ */
/* fork / exit                                                         */
/* ------------------------------------------------------------------ */

SEC("tp_btf/sched_process_fork")
int handle_fork(__u64 *ctx)
{
	struct task_struct *parent = (void *)ctx[0];
	struct task_struct *child = (void *)ctx[1];
	if (child->pid != child->tgid) /* a new thread, not a process */
		return 0;
	__u64 sandbox = current_sandbox();
	if (!sandbox)
		return 0;
	struct scratch *s = get_scratch();
	if (!s) {
		lost_no_scratch(EV_FORK, sandbox);
		return 0;
	}
	struct ev_fork *e = (void *)s->buf;
	void *ns;
	fill_hdr(&e->h, EV_FORK, sandbox, parent);
	e->child_pid = reader_tid(child);
	struct pid *cp = KREAD(child, thread_pid);
	e->child_ns_pid = pid_nr_at(cp, cp ? KREAD(cp, level) : 0, &ns);
	submit(&e->h, sizeof(*e), EV_FORK);
	put_scratch(s);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int handle_exit(__u64 *ctx)
{
	struct task_struct *p = (void *)ctx[0];
	bool group_dead = (bool)ctx[1];
	if (!group_dead) /* other threads still alive: not a process exit */
		return 0;
	__u64 sandbox = current_sandbox();
	if (!sandbox)
		return 0;
	struct scratch *s = get_scratch();
	if (!s) {
		lost_no_scratch(EV_EXIT, sandbox);
		return 0;
	}
	struct ev_exit *e = (void *)s->buf;
	fill_hdr(&e->h, EV_EXIT, sandbox, p);
	e->exit_code = p->exit_code;
	e->group_dead = 1;
	submit(&e->h, sizeof(*e), EV_EXIT);
	put_scratch(s);
	return 0;
}

/* ------------------------------------------------------------------ */
/* refused file changes                                                */
/* ------------------------------------------------------------------ */

#define EPERM 1
#define EACCES 13
#define EBUSY 16
#define EXDEV 18
#define ETXTBSY 26
#define EROFS 30
#define NO_ARG 0xff
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000

#define bpf_core_field_exists(field) __builtin_preserve_field_info(field, 2)

/* Argument `i` (0..4) of the syscall whose saved registers are `regs`. */
static __always_inline unsigned long syscall_arg(void *regs, __u32 i)
{
	unsigned long v = 0;
	struct pt_regs___x86 *x = regs;
	if (bpf_core_field_exists(x->di)) {
		switch (i) {
		case 0: bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(x, di)); break;
		case 1: bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(x, si)); break;
		case 2: bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(x, dx)); break;
		case 3: bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(x, r10)); break;
		case 4: bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(x, r8)); break;
		}
		return v;
	}
	struct pt_regs___arm64 *a = regs;
	if (i == 0) /* x0 holds the return value by now; orig_x0 the first argument */
		bpf_probe_read_kernel(&v, sizeof(v), CORE_ADDR(a, orig_x0));
	else if (i < 5)
		bpf_probe_read_kernel(&v, sizeof(v), (char *)CORE_ADDR(a, regs) + i * 8);
	return v;
}

/*
 * tp_btf/sys_exit(regs, ret): every syscall's return, system-wide; the first
 * instructions drop everything that succeeded, so host tasks pay a compare.
 * A refused call that changes files (the `refusable` map) by a sandbox task is
 * recorded with its path arguments as the process passed them: the errno is
 * the kernel's truth, the strings are what the caller asked for.
 */
SEC("tp_btf/sys_exit")
int handle_sys_exit(__u64 *ctx)
{
	long ret = (long)ctx[1];
	if (ret >= 0)
		return 0;
	if (ret != -EPERM && ret != -EACCES && ret != -EBUSY && ret != -EXDEV &&
	    ret != -ETXTBSY && ret != -EROFS)
		return 0;
	void *regs = (void *)ctx[0];
	struct task_struct *task = bpf_get_current_task_btf();
	long nr = 0;
	struct pt_regs___x86 *x = regs;
	if (bpf_core_field_exists(x->di)) {
		/* orig_ax: the syscall number (ax holds the return value). */
		struct pt_regs___x86_nr { unsigned long orig_ax; } __attribute__((preserve_access_index)) *xn = regs;
		bpf_probe_read_kernel(&nr, sizeof(nr), CORE_ADDR(xn, orig_ax));
	} else {
		struct pt_regs___arm64_nr { int syscallno; } __attribute__((preserve_access_index)) *an = regs;
		int no = 0;
		bpf_probe_read_kernel(&no, sizeof(no), CORE_ADDR(an, syscallno));
		nr = no;
	}
	if (nr < 0 || nr >= 1024)
		return 0;
	__u32 key = nr;
	struct refusable *how = bpf_map_lookup_elem(&refusable, &key);
	if (!how || (how->path_arg == 0 && how->path2_arg == 0 && how->flags_kind == 0))
		return 0;
	__u64 flags = 0;
	if (how->flags_kind == 1) {
		flags = syscall_arg(regs, how->flags_arg);
	} else if (how->flags_kind == 2) {
		unsigned long open_how = syscall_arg(regs, how->flags_arg);
		bpf_probe_read_user(&flags, sizeof(flags), (void *)open_how);
	}
	if (how->flags_kind && !(flags & (O_ACCMODE | O_CREAT | O_TRUNC)))
		return 0; /* an open for reading: not an attempt to change anything */
	__u64 sandbox = current_sandbox();
	if (!sandbox)
		return 0;

	struct scratch *s = get_scratch();
	if (!s) {
		lost_no_scratch(EV_REFUSED, sandbox);
		return 0;
	}
	struct ev_refused *e = (void *)s->buf;
	char *data = e->data;
	__u32 off = 0;
	long n;
	fill_hdr(&e->h, EV_REFUSED, sandbox, task);
	e->nr = nr;
	e->ret = ret;
	e->flags = flags;
	e->path_len = 0;
	e->path2_len = 0;
	if (how->path_arg != NO_ARG) {
		n = bpf_probe_read_user_str(data, PATH_MAX_BYTES, (void *)syscall_arg(regs, how->path_arg));
		e->path_len = n > 0 ? n : 0;
		off += e->path_len;
	}
	if (how->path2_arg != NO_ARG) {
		n = bpf_probe_read_user_str(data + (off & DATA_MASK), PATH_MAX_BYTES,
					    (void *)syscall_arg(regs, how->path2_arg));
		e->path2_len = n > 0 ? n : 0;
		off += e->path2_len;
	}
	__builtin_memset(&e->cwd, 0, sizeof(e->cwd));
	e->cwd_path_len = 0;
	struct fs_struct *fs = KREAD(task, fs);
	if (fs) {
		struct dentry *pwd = KREAD(fs, pwd.dentry);
		if (pwd) {
			fill_file_id(&e->cwd, pwd);
			e->cwd_path_len = put_path(data, off, pwd, &e->cwd);
			off += RELOAD(e->cwd_path_len);
		}
	}
	submit(&e->h, sizeof(*e) + (off & DATA_MASK), EV_REFUSED);
	put_scratch(s);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Programs that need no BPF trampoline (work where lsm/fentry do not) */
/* ------------------------------------------------------------------ */

#define SIGCHLD 17
#define TCP_LISTEN 10

/*
 * tp_btf/signal_generate(sig, info, task, group, result): every signal
 * generated, by kill(2)/tgkill/pidfd_send_signal/sigqueue AND by the kernel
 * (SIGSEGV, SIGPIPE, OOM SIGKILL, ...); current is the sender.  Fires after
 * the permission check, with the delivery result.
 */
SEC("tp_btf/signal_generate")
int handle_signal_generate(__u64 *ctx)
{
	int sig = (int)ctx[0];
	unsigned long info = ctx[1];
	struct task_struct *target = (void *)ctx[2];
	if (sig == SIGCHLD) /* a child's exit: already recorded as an exit */
		return 0;
	__u32 tgid = reader_tgid(target);
	__u64 sandbox = current_sandbox();
	__u64 *pid1_of = bpf_map_lookup_elem(&watched_pids, &tgid);
	if (!sandbox && !pid1_of)
		return 0;

	struct scratch *s = get_scratch();
	if (!s) {
		lost_no_scratch(EV_SIGNAL, sandbox ? sandbox : (pid1_of ? *pid1_of : 0));
		return 0;
	}
	struct ev_signal *e = (void *)s->buf;
	void *ns;
	fill_hdr(&e->h, EV_SIGNAL, sandbox, bpf_get_current_task_btf());
	e->target_pid = reader_tid(target);
	e->target_tgid = tgid;
	struct task_struct *leader = KREAD(target, group_leader);
	struct pid *tp = KREAD(leader, thread_pid);
	e->target_ns_pid = pid_nr_at(tp, tp ? KREAD(tp, level) : 0, &ns);
	e->sig = sig;
	e->si_code = 0;
	if (info > 1) /* SEND_SIG_NOINFO (0) / SEND_SIG_PRIV (1) are not pointers */
		bpf_probe_read_kernel(&e->si_code, sizeof(e->si_code),
				      CORE_ADDR((struct kernel_siginfo *)info, si_code));
	else
		e->si_code = info ? 0x80 /* SI_KERNEL */ : 0 /* SI_USER */;
	e->target_watched = pid1_of ? 1 : 0;
	struct css_set *cgroups = KREAD(target, cgroups);
	struct cgroup *dfl = KREAD(cgroups, dfl_cgrp);
	struct kernfs_node *kn = KREAD(dfl, kn);
	e->target_cgroup = KREAD(kn, id);
	e->group = (__u32)ctx[3];
	e->result = (int)ctx[4];
	submit(&e->h, sizeof(*e), EV_SIGNAL);
	put_scratch(s);
	return 0;
}

/* tp_btf/inet_sock_set_state: TCP socket entering LISTEN (bound address
 * known by then, unlike lsm/socket_listen before an autobind). */
SEC("tp_btf/inet_sock_set_state")
int handle_inet_sock_set_state(__u64 *ctx)
{
	struct sock *sk = (void *)ctx[0];
	int newstate = (int)ctx[2];
	if (newstate != TCP_LISTEN)
		return 0;
	__u64 sandbox = current_sandbox();
	if (!sandbox)
		return 0;
	struct ev_net *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost_no_scratch(EV_NET, sandbox);
		return 0;
	}
	__builtin_memset(&e->op, 0, sizeof(*e) - __builtin_offsetof(struct ev_net, op));
	fill_hdr(&e->h, EV_NET, sandbox, bpf_get_current_task_btf());
	e->h.len = sizeof(*e);
	e->op = NOP_LISTEN;
	e->family = sk->__sk_common.skc_family;
	e->port = sk->__sk_common.skc_num;
	e->sock_type = sk->sk_type;
	e->protocol = sk->sk_protocol;
	if (e->family == AF_INET)
		bpf_probe_read_kernel(e->addr, 4, CORE_ADDR(sk, __sk_common.skc_rcv_saddr));
	else if (e->family == AF_INET6)
		bpf_probe_read_kernel(e->addr, 16, CORE_ADDR(sk, __sk_common.skc_v6_rcv_saddr));
	e->h.seq = next_seq();
	bpf_ringbuf_submit(e, rb_flags);
	return 0;
}

/*
 * cgroup/{connect,bind,sendmsg}{4,6}: BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attached
 * to each sandbox cgroup (so they only ever run for sandbox tasks, and cover
 * UDP as well as TCP).  Return 1 = allow, 0 = deny (-EPERM to the caller).
 * No BTF task access here: the header is filled from generic helpers (the
 * current task is read through bpf_probe_read_kernel when the reader has a pid
 * namespace of its own), ppid / ns pids are joined in user space from
 * exec/fork records.
 */
static __always_inline int emit_sock_addr(struct bpf_sock_addr *ctx, __u32 op, bool v6)
{
	struct ev_net *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost_no_scratch(EV_NET, current_sandbox());
		if (fail_closed) {
			stat_add(STAT_DENIED, 1);
			return 0;
		}
		return 1;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->h.kind = EV_NET;
	e->h.len = sizeof(*e);
	e->h.ts_ns = bpf_ktime_get_ns();
	e->h.cgroup_id = bpf_get_current_cgroup_id();
	e->h.sandbox_cg = current_sandbox();
	if (!reader_ns_inum) {
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		e->h.pid = (__u32)pid_tgid;
		e->h.tgid = pid_tgid >> 32;
	} else {
		struct task_struct *t = (void *)bpf_get_current_task();
		e->h.pid = reader_tid(t);
		e->h.tgid = reader_tgid(t);
	}
	e->h.uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->h.comm, sizeof(e->h.comm));
	e->op = op;
	e->family = ctx->user_family;
	e->sock_type = ctx->type;
	e->protocol = ctx->protocol;
	e->port = __builtin_bswap16((__u16)ctx->user_port);
	/* The verifier only lets a *4 program read user_ip4 and a *6 program
	 * read user_ip6, and only with 4-byte loads: `v6` is a compile-time
	 * constant, and the volatile loads stop clang from merging two u32
	 * loads into one u64 load ("invalid bpf_context access off=8 size=8"). */
	if (!v6) {
		__u32 ip = *(volatile __u32 *)&ctx->user_ip4;
		__builtin_memcpy(e->addr, &ip, 4);
	} else {
		__u32 ip6[4];
		ip6[0] = *(volatile __u32 *)&ctx->user_ip6[0];
		ip6[1] = *(volatile __u32 *)&ctx->user_ip6[1];
		ip6[2] = *(volatile __u32 *)&ctx->user_ip6[2];
		ip6[3] = *(volatile __u32 *)&ctx->user_ip6[3];
		__builtin_memcpy(e->addr, ip6, 16);
	}
	e->h.seq = next_seq();
	bpf_ringbuf_submit(e, rb_flags);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_CONNECT, false); }
SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_CONNECT, true); }
SEC("cgroup/bind4")
int sock_bind4(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_BIND, false); }
SEC("cgroup/bind6")
int sock_bind6(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_BIND, true); }
SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_SENDMSG, false); }
SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return emit_sock_addr(ctx, NOP_SENDMSG, true); }
