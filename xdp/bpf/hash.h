/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow hash and checksum arithmetic. The flow hash is mirrored in Go
 * (xdp/hash.go, tested against this code through BPF_PROG_TEST_RUN): every
 * appliance of a fleet must pick the same Maglev slot for a flow. */
#ifndef XDPLB_HASH_H
#define XDPLB_HASH_H

#include <linux/types.h>

static __always_inline __u32 rol32(__u32 w, int s)
{
	return (w << s) | (w >> (32 - s));
}

/* jhash_3words is Bob Jenkins' lookup3 final mix over three words, seeded as
 * the Linux kernel's jhash_3words. */
static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	initval += 0xdeadbeef + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

/* Words are the addresses' and ports' network-order bytes loaded as
 * little-endian integers (the program only builds for bpfel). An IPv6 address
 * is folded to one word by XOR of its four words. */
static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
				       __u8 proto, __u32 seed)
{
	return jhash_3words(saddr, daddr ^ proto, ((__u32)sport << 16) | dport, seed);
}

static __always_inline __u32 fold_addr6(const __u32 *w)
{
	return w[0] ^ w[1] ^ w[2] ^ w[3];
}

/* Index of an address in the vip_filter bitmap (Fibonacci hashing of the
 * folded address); Go computes the same in xdp/hash.go. */
static __always_inline __u32 vip_filter_bit(__u32 folded)
{
	return (folded * 0x9E3779B1u) >> (32 - VIP_FILTER_SHIFT);
}

/* Entry of a service in vip_index: the folded address, the port (as loaded
 * from the packet) and the protocol, Fibonacci-hashed. */
static __always_inline __u32 vip_index_of(__u32 folded, __u16 port, __u8 proto)
{
	return ((folded ^ ((__u32)port << 16) ^ proto) * 0x9E3779B1u) >> (32 - VIP_INDEX_SHIFT);
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* RFC 1624 incremental update of a checksum for one 16-bit word changing
 * from old to new (all in the same byte order as the packet's words). */
static __always_inline __u16 csum_replace2(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#endif
