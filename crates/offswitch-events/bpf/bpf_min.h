/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * bpf_min.h - the handful of libbpf conventions offswitch.bpf.c needs, written
 * by hand so that building the BPF object only needs clang (no libbpf-dev):
 *   - SEC() / __uint / __type map-definition macros (BTF-defined maps, the
 *     ".maps" section format understood by libbpf AND aya),
 *   - helper prototypes: a helper is a call to a fixed number from
 *     include/uapi/linux/bpf.h (`enum bpf_func_id`); these numbers are ABI.
 */
#ifndef OFFSWITCH_BPF_MIN_H
#define OFFSWITCH_BPF_MIN_H

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* Keeps the compiler from folding a value the verifier must see bounded. */
#define barrier_var(var) asm volatile("" : "+r"(var))

/* CO-RE read of a field through a pointer (same as libbpf's BPF_CORE_READ for
 * one level): the address is computed with a relocatable offset. */
#define CORE_ADDR(ptr, field) ((const void *)__builtin_preserve_access_index(&(ptr)->field))

/*
 * A field read through a kernel pointer with bpf_probe_read_kernel at its CO-RE
 * address (0 when the read fails, a NULL pointer included). The programs follow
 * every pointer this way rather than by a load through a typed pointer: loading
 * a pointer field through a trusted pointer (a task, a tracepoint argument)
 * makes the verifier search the kernel's whole BTF by name up to four times
 * (btf_nested_type_is_trusted, a linear scan on this kernel), and those
 * searches were most of the time the programs took to load. To the verifier the
 * value is a number, so whatever it points to is read with KREAD too.
 */
#define KREAD(ptr, field) ({                                                        \
	typeof((ptr)->field) __kread;                                              \
	__builtin_memset(&__kread, 0, sizeof(__kread));                            \
	bpf_probe_read_kernel(&__kread, sizeof(__kread), CORE_ADDR(ptr, field));    \
	__kread;                                                                    \
})

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_get_current_comm)(void *buf, __u32 size_of_buf) = (void *)16;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_send_signal)(__u32 sig) = (void *)109;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)114;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)115;
static __u64 (*bpf_get_current_ancestor_cgroup_id)(int ancestor_level) = (void *)123;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) = (void *)130;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;

#endif
