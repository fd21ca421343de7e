/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing with a cursor: one helper per header, a bounds check before
 * every access, the next protocol (or -1) as the result. */
#ifndef XDPLB_PARSING_H
#define XDPLB_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* frame_bytes is data_end - data as a 64-bit scalar. Left to itself, clang
 * with 32-bit subregisters (-mcpu=v3) may subtract the two pointers' low
 * halves, which the verifier refuses as 32-bit pointer arithmetic. */
static __always_inline long frame_bytes(void *data, void *data_end)
{
	long n = data_end - data;

	barrier_var(n);
	return n;
}

/* parse_eth returns the ethertype (host order) after at most one 802.1Q/802.1ad
 * tag, -1 if the frame is too short, -2 for a second (stacked) tag, which the
 * program does not handle. *vlan is set when a tag was present. */
static __always_inline int parse_eth(struct cursor *c, struct ethhdr **eth, int *vlan)
{
	struct ethhdr *e = c->pos;
	struct vlan_hdr *v;
	__u16 proto;

	if (unlikely((void *)(e + 1) > c->end))
		return -1;
	c->pos = e + 1;
	*eth = e;
	*vlan = 0;
	proto = bpf_ntohs(e->h_proto);
	if (unlikely(proto == ETH_P_8021Q || proto == ETH_P_8021AD)) {
		v = c->pos;
		if ((void *)(v + 1) > c->end)
			return -1;
		c->pos = v + 1;
		*vlan = 1;
		proto = bpf_ntohs(v->proto);
		if (proto == ETH_P_8021Q || proto == ETH_P_8021AD)
			return -2;
	}
	return proto;
}

/* parse_ipv4 reads the fixed header only; the caller checks ihl, length and
 * fragments, because what to do with them depends on whether the packet is
 * for a VIP. Returns the protocol or -1 when the fixed header is cut short. */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **iph)
{
	struct iphdr *h = c->pos;

	if (unlikely((void *)(h + 1) > c->end))
		return -1;
	*iph = h;
	c->pos = h + 1;
	return h->protocol;
}

static __always_inline int parse_ipv6(struct cursor *c, struct ipv6hdr **ip6h)
{
	struct ipv6hdr *h = c->pos;

	if (unlikely((void *)(h + 1) > c->end))
		return -1;
	*ip6h = h;
	c->pos = h + 1;
	return h->nexthdr;
}

/* The IPv6 fragment header (RFC 8200 4.5). */
struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;   /* offset in 8-byte units << 3 | 2 reserved bits | M */
	__be32 identification;
};

#define IP6_OFFMASK 0xfff8
#define IP6_MF 0x0001

static __always_inline int parse_frag6(struct cursor *c, struct frag_hdr **fh)
{
	struct frag_hdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	*fh = h;
	c->pos = h + 1;
	return 0;
}

/* parse_tcp checks the data offset: it must be at least 5 words and the header
 * must fit in l4_len (the transport bytes the IP header declares). Returns 0,
 * -1 when truncated, -2 for a bad data offset. */
static __always_inline int parse_tcp(struct cursor *c, struct tcphdr **tcph, __u32 l4_len)
{
	struct tcphdr *h = c->pos;
	__u32 len;

	if (unlikely((void *)(h + 1) > c->end || l4_len < sizeof(*h)))
		return -1;
	len = h->doff * 4;
	if (unlikely(len < sizeof(*h) || len > l4_len))
		return -2;
	*tcph = h;
	c->pos = h + 1;
	return 0;
}

static __always_inline int parse_udp(struct cursor *c, struct udphdr **udph, __u32 l4_len)
{
	struct udphdr *h = c->pos;

	if (unlikely((void *)(h + 1) > c->end || l4_len < sizeof(*h)))
		return -1;
	*udph = h;
	c->pos = h + 1;
	return 0;
}

/* ICMPv4 and ICMPv6 share the first 8 bytes' layout (type, code, checksum,
 * 4 bytes of rest); one helper serves both. */
struct icmp_common {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

static __always_inline int parse_icmp(struct cursor *c, struct icmp_common **icmph, __u32 l4_len)
{
	struct icmp_common *h = c->pos;

	if ((void *)(h + 1) > c->end || l4_len < sizeof(*h))
		return -1;
	*icmph = h;
	c->pos = h + 1;
	return h->type;
}

#endif
