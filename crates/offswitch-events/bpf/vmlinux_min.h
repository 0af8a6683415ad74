/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * vmlinux_min.h - hand-written subset of the kernel types used by offswitch.bpf.c.
 *
 * Only the fields the programs actually touch are declared.  Every struct is
 * marked preserve_access_index, so clang emits a CO-RE relocation for each
 * field access; the loader (aya) rewrites the offsets against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux).  Field ORDER and struct SIZE here do
 * not matter, only field NAMES and TYPES (kinds) must match the kernel.
 *
 * Fields that live inside anonymous structs/unions in the kernel (e.g. all of
 * mm_struct, dentry.d_name, file.f_path, sock_common.skc_num) are declared
 * flat: CO-RE field matching descends into anonymous members by name.
 *
 * Replaces `bpftool btf dump file /sys/kernel/btf/vmlinux format c` (a 130k
 * line header) and any dependency on libbpf-dev.
 */
#ifndef OFFSWITCH_VMLINUX_MIN_H
#define OFFSWITCH_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

typedef int pid_t;
typedef unsigned short umode_t;
typedef unsigned int fmode_t;
typedef __u32 dev_t;
typedef struct { __u32 val; } kuid_t;
typedef struct { __u32 val; } kgid_t;

/* BPF map types / flags we use (uapi, stable numbers). */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
#define BPF_ANY 0

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct qstr {
	__u32 len;               /* kernel: inside union { struct { hash; len; }; hash_len; } */
	const unsigned char *name;
};

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
};

struct inode {
	umode_t i_mode;
	unsigned long i_ino;
	struct super_block *i_sb;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;       /* kernel: inside an anonymous union */
	struct inode *d_inode;
	struct super_block *d_sb;
};

struct vfsmount {
	struct dentry *mnt_root;
	struct super_block *mnt_sb;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	fmode_t f_mode;
	unsigned int f_flags;
	struct inode *f_inode;
	struct path f_path;       /* kernel: inside an anonymous union */
};

struct mm_struct {
	/* kernel: all inside two nested anonymous structs */
	unsigned long arg_start;
	unsigned long arg_end;
};

struct ns_common {
	unsigned int inum;
};

struct pid_namespace {
	struct ns_common ns;
};

struct upid {
	int nr;
	void *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];   /* flexible array in the kernel */
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
	int level;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct cred {
	kuid_t uid;
	kuid_t euid;
};

struct fs_struct {
	struct path root;
	struct path pwd;
};
struct task_struct {
	struct fs_struct *fs;
	pid_t pid;
	pid_t tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct pid *thread_pid;
	struct mm_struct *mm;
	struct css_set *cgroups;
	const struct cred *real_cred;
	char comm[16];
};

struct linux_binprm {
	struct file *executable;  /* the file execve() named (the script for #!) */
	struct file *file;        /* the file finally mapped (the interpreter for #!) */
	int argc;
	int envc;
	const char *filename;
	const char *interp;
};

struct kernel_siginfo {
	int si_signo;
	int si_errno;
	int si_code;
};

struct in6_addr {
	__u8 s6_addr[16];
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	__u16 sk_type;
};

struct socket {
	short type;
	struct sock *sk;
};

struct sockaddr {
	unsigned short sa_family;
	char sa_data[14];
};

/* The saved user registers of a syscall, in two flavours: CO-RE keeps the one whose
 * fields the running kernel has (x86-64: di, si, dx, r10, r8; arm64: orig_x0 and regs[]). */
struct pt_regs___x86 {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
	unsigned long r8;
};

struct pt_regs___arm64 {
	__u64 regs[31];
	__u64 orig_x0;
};

#pragma clang attribute pop

/*
 * Context of BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs (uapi <linux/bpf.h>).
 * NOT CO-RE relocated: the verifier rewrites ctx accesses by these uapi
 * offsets, which are ABI.
 */
struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;     /* network byte order */
	__u32 user_ip6[4];  /* network byte order */
	__u32 user_port;    /* network byte order, in the low 16 bits */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__u64 sk;           /* union { struct bpf_sock *sk; } */
};

#endif
