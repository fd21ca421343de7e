// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdplb benchmark wrappers: an object of their own, never loaded by the
 * daemon and never attached to an interface. The loader (xdp/bench.go) hands
 * this object the maps of a loaded datapath, so the wrappers run lb_main of
 * lb.h, the forwarding code itself, on the datapath's state.
 *
 * bpf_xdp_store_bytes makes this object need Linux 5.18; the load-balancer
 * program does not use it. */
#include "lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* For bpf2go: the enum of the ablations, into BTF. */
const enum xdplb_ablation *btf_ablation __attribute__((unused));

/* BPF_PROG_TEST_RUN with repeat runs a program again on the frame its
 * previous run rewrote; xdplb_bench first restores the original frame
 * (optionally varying one 32-bit field per run, for many flows), then runs
 * the same code as xdplb (lb_main). xdplb_bench_floor does only the restore:
 * the difference is the program's cost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_frames SEC(".maps");

static __always_inline int bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0, len, off;
	struct bench_frame *f = bpf_map_lookup_elem(&bench_frames, &zero);
	long cur;
	__u32 v;

	if (!f)
		return -1;
	len = f->len;
	if (len == 0 || len > BENCH_MAX_FRAME)
		return -1;
	cur = (long)ctx->data_end - (long)ctx->data;
	if (cur != len && bpf_xdp_adjust_head(ctx, (int)(cur - (long)len)))
		return -1;
	if (bpf_xdp_store_bytes(ctx, 0, f->data, len))
		return -1;
	if (!f->vary_count)
		return 0;
	off = f->vary_offset;
	if (off > BENCH_MAX_FRAME - 4)
		return -1;
	__builtin_memcpy(&v, f->data + off, 4);
	v = bpf_htonl(bpf_ntohl(v) + f->seq % f->vary_count);
	f->seq++;
	return bpf_xdp_store_bytes(ctx, off, &v, 4) ? -1 : 0;
}

SEC("xdp")
int xdplb_bench(struct xdp_md *ctx)
{
	if (bench_restore(ctx))
		return XDP_ABORTED;
	return lb_main(ctx);
}

SEC("xdp")
int xdplb_bench_floor(struct xdp_md *ctx)
{
	if (bench_restore(ctx))
		return XDP_ABORTED;
	return XDP_PASS;
}

/* How much a case's program changes the frame's length (IPIP: 20 bytes,
 * IPv6 in IPv6: 40), set before xdplb_bench_floor_grow runs. */
__s32 bench_floor_grow;

/* xdplb_bench_floor_grow is the floor of a case whose program changes the
 * frame's length. The restore of the run after such a program's moves the
 * frame's head back, a bpf_xdp_adjust_head that is the benchmark's and not
 * the program's; xdplb_bench_floor makes no such call. This floor makes it
 * once a run too: it changes the length on every other run (those whose
 * restore had nothing to move back), and the next restore moves it back. */
SEC("xdp")
int xdplb_bench_floor_grow(struct xdp_md *ctx)
{
	long before = frame_bytes((void *)(long)ctx->data, (void *)(long)ctx->data_end);

	if (bench_restore(ctx))
		return XDP_ABORTED;
	if (before == frame_bytes((void *)(long)ctx->data, (void *)(long)ctx->data_end) &&
	    bpf_xdp_adjust_head(ctx, -bench_floor_grow))
		return XDP_ABORTED;
	return XDP_PASS;
}
