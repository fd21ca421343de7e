// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdplb_decap: the backend side of IPIP DSR. Strips an outer IPv4 or IPv6
 * header (IPIP, IP6IP6, 4-in-6, 6-in-4) addressed to one of this host's
 * addresses listed in decap_addrs and sent from a source inside a prefix of
 * decap_allow, combines the outer ECN field into the inner header (RFC 6040,
 * normal mode) and passes the inner packet to the stack, which then answers
 * the client directly. Encapsulated packets to a listed address from any other
 * source are dropped; everything else passes untouched. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Each packet is counted under exactly one of these. The Go side names them
 * (xdp/decap.go); the order is part of the pinned map's layout: append only. */
enum xdplb_decap_counter {
	DECAP_PASS_NOT_IP = 0,   /* not IPv4/IPv6 */
	DECAP_PASS_NOT_ENCAP,    /* IP, but not IPIP/IPv6-in-IP */
	DECAP_PASS_NOT_LOCAL,    /* encapsulated, but not to a listed address */
	DECAP_PASS_MALFORMED,    /* truncated, options, fragments, inner family wrong */
	DECAP_PASS_VLAN_STACKED, /* more than one VLAN tag */
	DECAP_DONE_4IN4,
	DECAP_DONE_6IN4,
	DECAP_DONE_4IN6,
	DECAP_DONE_6IN6,
	DECAP_FAILED,            /* shrinking the frame failed: dropped */
	DECAP_DROP_SOURCE_NOT_ALLOWED, /* encapsulated to a listed address from a
					* source in no decap_allow prefix: dropped */
	DECAP_DROP_ECN_CE_NOT_ECT, /* outer CE over a Not-ECT inner packet: dropped
				    * (RFC 6040 section 4.2) */
	DECAP_COUNTER_MAX,
};

/* ECN codepoints (RFC 3168), the low two bits of the TOS / traffic class. */
enum {
	ECN_NOT_ECT = 0,
	ECN_ECT1 = 1,
	ECN_ECT0 = 2,
	ECN_CE = 3,
};

/* Key of decap_allow: a prefix of outer sources, tagged with its family so
 * that one trie holds both. prefixlen counts the family byte: 8 + the length
 * of the address prefix. An IPv4 address takes the first 4 bytes of addr. */
struct decap_allow_key {
	__u32 prefixlen;
	__u8 family; /* 4 or 6 */
	__u8 addr[16];
	__u8 pad[3];
};

/* Outer destinations decapsulated here (this host's addresses). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct vip_addr);
	__type(value, __u32);
} decap_addrs SEC(".maps");

/* Outer sources trusted to encapsulate to this host (the load balancers'
 * encap source prefixes); filled from Go, never written here. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct decap_allow_key);
	__type(value, __u32);
} decap_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_COUNTER_MAX);
	__type(key, enum xdplb_decap_counter);
	__type(value, __u64);
} decap_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&decap_stats, &idx);

	if (v)
		*v += 1;
}

/* strip removes outer bytes after an l2-byte Ethernet header and sets the
 * ethertype to the inner packet's. */
static __always_inline int strip(struct xdp_md *ctx, int outer, __u16 inner_proto, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 hdr[ETH_HLEN + VLAN_HLEN];

	if (data + l2 + outer > data_end)
		return -1;
	__builtin_memcpy(hdr, data, l2);
	if (bpf_xdp_adjust_head(ctx, outer))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + l2 > data_end)
		return -1;
	*(__be16 *)(hdr + l2 - 2) = bpf_htons(inner_proto);
	__builtin_memcpy(data, hdr, l2);
	return 0;
}

static __always_inline __u8 ipv4_ecn(const struct iphdr *h)
{
	return h->tos & 3;
}

/* The ECN bits of IPv6 are the low two of the traffic class, which straddles
 * the first two bytes: bits 4-5 of the second byte. */
static __always_inline __u8 ipv6_ecn(const struct ipv6hdr *h)
{
	return (h->flow_lbl[0] >> 4) & 3;
}

/* ipv4_set_ecn writes the ECN field and updates the header checksum
 * incrementally (RFC 1624, eqn. 3) over the 16-bit word that holds the TOS. */
static __always_inline void ipv4_set_ecn(struct iphdr *h, __u8 ecn)
{
	__u16 old = *(__u16 *)h, new;
	__u32 sum;

	h->tos = (h->tos & ~3) | ecn;
	new = *(__u16 *)h;
	sum = (__u16)~h->check + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	h->check = ~sum;
}

static __always_inline void ipv6_set_ecn(struct ipv6hdr *h, __u8 ecn)
{
	h->flow_lbl[0] = (h->flow_lbl[0] & ~0x30) | (ecn << 4);
}

/* ecn_decap is RFC 6040 section 4.2 (normal mode): the inner ECN field to
 * forward given the outer and inner ones, or -1 to drop (outer CE over a
 * Not-ECT inner packet: the congestion mark cannot be passed on). */
static __always_inline int ecn_decap(__u8 outer, __u8 inner)
{
	if (outer == ECN_CE)
		return inner == ECN_NOT_ECT ? -1 : ECN_CE;
	if (outer == ECN_ECT1 && inner == ECN_ECT0)
		return ECN_ECT1;
	return inner;
}

static __always_inline __u32 decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	struct decap_allow_key src = {};
	struct vip_addr dst = {};
	struct ethhdr *eth;
	struct iphdr *iph;
	struct ipv6hdr *ip6h;
	int proto, vlan, outer, inner_v4, malformed, ecn, r;
	__u8 outer_ecn;
	__u32 done;

	proto = parse_eth(&c, &eth, &vlan);
	if (proto == -2)
		return DECAP_PASS_VLAN_STACKED;
	if (proto < 0)
		return DECAP_PASS_MALFORMED;
	if (proto == ETH_P_IP) {
		r = parse_ipv4(&c, &iph);
		if (r < 0)
			return DECAP_PASS_MALFORMED;
		if (r != IPPROTO_IPIP_ && r != IPPROTO_IPV6_)
			return DECAP_PASS_NOT_ENCAP;
		/* Options and fragments are not handled: such packets go to the
		 * stack as they are (counted as malformed), but only from an
		 * allowed source, checked first. */
		malformed = iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFMASK));
		__builtin_memcpy(dst.addr, &iph->daddr, 4);
		dst.family = 4;
		__builtin_memcpy(src.addr, &iph->saddr, 4);
		src.family = 4;
		src.prefixlen = 8 + 32;
		outer_ecn = ipv4_ecn(iph);
		outer = IPV4_HLEN;
		inner_v4 = r == IPPROTO_IPIP_;
		done = inner_v4 ? DECAP_DONE_4IN4 : DECAP_DONE_6IN4;
	} else if (proto == ETH_P_IPV6) {
		r = parse_ipv6(&c, &ip6h);
		if (r < 0)
			return DECAP_PASS_MALFORMED;
		/* Extension headers before the inner packet are not handled:
		 * such packets pass as not encapsulated. */
		if (r != IPPROTO_IPIP_ && r != IPPROTO_IPV6_)
			return DECAP_PASS_NOT_ENCAP;
		malformed = 0;
		__builtin_memcpy(dst.addr, &ip6h->daddr, 16);
		dst.family = 6;
		__builtin_memcpy(src.addr, &ip6h->saddr, 16);
		src.family = 6;
		src.prefixlen = 8 + 128;
		outer_ecn = ipv6_ecn(ip6h);
		outer = IPV6_HLEN;
		inner_v4 = r == IPPROTO_IPIP_;
		done = inner_v4 ? DECAP_DONE_4IN6 : DECAP_DONE_6IN6;
	} else {
		return DECAP_PASS_NOT_IP;
	}
	if (!bpf_map_lookup_elem(&decap_addrs, &dst))
		return DECAP_PASS_NOT_LOCAL;
	/* Only trusted encapsulators: anyone else could inject packets with
	 * any inner source. */
	if (!bpf_map_lookup_elem(&decap_allow, &src))
		return DECAP_DROP_SOURCE_NOT_ALLOWED;
	if (malformed)
		return DECAP_PASS_MALFORMED;

	/* The inner header must be there and of the family the outer names;
	 * then the outer ECN field is combined into it. */
	if (inner_v4) {
		struct iphdr *in = c.pos;

		if ((void *)(in + 1) > c.end || in->version != 4)
			return DECAP_PASS_MALFORMED;
		ecn = ecn_decap(outer_ecn, ipv4_ecn(in));
		if (ecn < 0)
			return DECAP_DROP_ECN_CE_NOT_ECT;
		if (ecn != ipv4_ecn(in))
			ipv4_set_ecn(in, ecn);
	} else {
		struct ipv6hdr *in = c.pos;

		if ((void *)(in + 1) > c.end || in->version != 6)
			return DECAP_PASS_MALFORMED;
		ecn = ecn_decap(outer_ecn, ipv6_ecn(in));
		if (ecn < 0)
			return DECAP_DROP_ECN_CE_NOT_ECT;
		if (ecn != ipv6_ecn(in))
			ipv6_set_ecn(in, ecn);
	}
	if (vlan)
		r = strip(ctx, outer, inner_v4 ? ETH_P_IP : ETH_P_IPV6, ETH_HLEN + VLAN_HLEN);
	else
		r = strip(ctx, outer, inner_v4 ? ETH_P_IP : ETH_P_IPV6, ETH_HLEN);
	return r ? DECAP_FAILED : done;
}

SEC("xdp")
int xdplb_decap(struct xdp_md *ctx)
{
	__u32 reason = decap(ctx);
	int verdict = XDP_PASS;

	if (reason == DECAP_FAILED || reason == DECAP_DROP_SOURCE_NOT_ALLOWED ||
	    reason == DECAP_DROP_ECN_CE_NOT_ECT)
		verdict = XDP_DROP;
	count(reason);
	return verdict;
}
