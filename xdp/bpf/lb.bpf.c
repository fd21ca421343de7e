// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdplb: the load-balancer XDP program.
 *
 * Per packet: parse Ethernet (+ one VLAN tag) and IPv4/IPv6; a bitmap says
 * whether the destination may be a VIP (if not: XDP_PASS, untouched); parse
 * TCP/UDP and find the service; pick the backend (a pin from a table
 * transition, else the VIP's Maglev table at slot (hash(5-tuple) * M) >> 32); forward by
 * MAC rewrite (L2 DSR) or IPIP/IP6IP6 encapsulation; count. Every packet is
 * counted under exactly one reason (consts.h), and its verdict follows from
 * that reason.
 *
 * Flow state is lazy: a VIP keeps its previous table for a grace period after
 * a change; a non-SYN packet whose backend differs between the previous and
 * current table is pinned to the previous backend (if still up), a SYN to the
 * current one (or, when that pin cannot be made, sent to the previous one,
 * where its next packets will go). Steady-state traffic creates no state;
 * see docs/architecture.md.
 *
 * The code is in lb.h, shared with the benchmark wrappers (bench.bpf.c, an
 * object of their own that the daemon never loads). */
#include "lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Put the flag enums into BTF, so that bpf2go generates their Go mirrors. */
const enum xdplb_mode *btf_mode __attribute__((unused));
const enum xdplb_vip_flags *btf_vip_flags __attribute__((unused));
const enum xdplb_addr_flags *btf_addr_flags __attribute__((unused));
const enum xdplb_backend_flags *btf_backend_flags __attribute__((unused));
const enum xdplb_dry_pin *btf_dry_pin __attribute__((unused));
const enum xdplb_monitor_type *btf_monitor_type __attribute__((unused));
const struct monitor_event *btf_monitor_event __attribute__((unused));
/* The pin tables of earlier releases, for copying their pins (xdp/upgrade.go). */
const struct flow4 *btf_flow4 __attribute__((unused));
const struct flow6 *btf_flow6 __attribute__((unused));
const struct ct_value *btf_ct_value __attribute__((unused));
const enum xdplb_nat_state *btf_nat_state __attribute__((unused));
/* The NAT map of earlier releases, for copying its flows (xdp/upgrade.go). */
const struct nat_key *btf_nat_key __attribute__((unused));
const struct nat_value *btf_nat_value __attribute__((unused));
const enum xdplb_nat_dir *btf_nat_dir __attribute__((unused));

SEC("xdp")
int xdplb(struct xdp_md *ctx)
{
	return lb_main(ctx);
}
