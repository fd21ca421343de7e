/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SNAT (full NAT): a client's packet to a VIP:port of a `snat` service leaves
 * with the backend's address:port as destination and one of the appliance's
 * SNAT sources and a port of its range as source; the backend's reply comes
 * back to that source:port and leaves with the VIP:port as source and the
 * client as destination.
 *
 * State: every flow has two entries, one per direction, in the flow tables
 * nat4 and nat6 (flowtable.h, the tables the pins use: struct nat4, nat6).
 * An entry's key is a packet's tuple as it arrives, its tag the protocol
 * (plus NAT_TAG_REPLY for the reply direction), its value what the packet
 * becomes. Nothing is ever evicted: when a key's buckets are full, its flow
 * fails (drop/snat_table_full) and established ones carry on. User space
 * expires idle entries (xdp/nat.go) through the tables' mmap.
 *
 * All access to the entries goes through the nat_ft_* functions below. They
 * are global BPF functions: the verifier checks each once, where an inlined
 * table walk would be checked again at every call site (the port tries of a
 * new flow alone would exceed its budget). They take keys and values in the
 * per-CPU scratch entry (struct nat_fkey, nat_val) and copy values out: no
 * pointer into a table leaves them.
 *
 * Port allocation takes no lock in the hot path: a new flow tries up to
 * NAT_PORT_TRIES (source, port) pairs derived from its flow hash, and claims
 * one by inserting the reply entry, which fails if the key is there. The
 * reply key holds the backend's address and port, the source and the port,
 * so the insert is the claim (the table serialises inserts of a key in its
 * home bucket): two flows to the same backend:port never get the same
 * source:port, whichever CPUs they arrive on.
 *
 * The client's next hop: the reply goes back to the neighbour the flow's
 * first packet came from, through the interface it came in on (the MACs and
 * interface are kept in the reply entry). Routing is assumed symmetric, as
 * for any stateful middlebox; there is no FIB lookup (it would need the
 * kernel's forwarding on).
 *
 * This header is included by lb.h after the helpers it uses (count,
 * backend_lookup, table_lookup, xmit, ...). */
#ifndef XDPLB_NAT_H
#define XDPLB_NAT_H

/* Buckets of nat4 and nat6 minus one (their sizes are powers of two). */
volatile const __u32 cfg_nat4_mask = DEFAULT_NAT_BUCKETS - 1;
volatile const __u32 cfg_nat6_mask = DEFAULT_NAT_BUCKETS - 1;

/* Both directions of every NAT flow: flow tables (flowtable.h) of
 * nat4_bucket and nat6_bucket, sized by the loader (twice the entries of
 * Options.MaxNATFlows flows, a power of two of buckets). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_NAT_BUCKETS);
	__type(key, __u32);
	__type(value, struct nat4_bucket);
} nat4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_NAT_BUCKETS);
	__type(key, __u32);
	__type(value, struct nat6_bucket);
} nat6 SEC(".maps");

#define NAT4_GEOM ((struct ft_geom){ .kw = 3, .vw = 10, .stride = 14, .ways = 2 })
#define NAT6_GEOM ((struct ft_geom){ .kw = 9, .vw = 16, .stride = 30, .ways = 2 })
_Static_assert(sizeof(struct nat4) == 4 * 14, "nat4 entry");
_Static_assert(sizeof(struct nat4_bucket) == 128, "a nat4 bucket is two cache lines");
_Static_assert(__builtin_offsetof(struct nat4_bucket, e1) == 4 * (FT_HEAD_WORDS + 14), "nat4 stride");
_Static_assert(sizeof(struct nat6) == 4 * 26, "nat6 entry");
_Static_assert(sizeof(struct nat6_bucket) == 256, "a nat6 bucket is four cache lines");
_Static_assert(__builtin_offsetof(struct nat6_bucket, e1) == 4 * (FT_HEAD_WORDS + 30), "nat6 stride");
_Static_assert(sizeof(struct nat_val) == 4 * 16, "struct nat_val is nat6's value");
#define NAT_TOUCH_TICKS (NAT_TOUCH_NS >> FT_TICK_SHIFT)

/* SNAT sources and port range (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_config);
} nat_config_map SEC(".maps");

/* A filter in front of nat4/nat6 for new flows at a full table: the bit of
 * each forward entry's table hash is set, so a packet that would make a
 * flow while its CPU backs off from the full table (ft_backing_off), whose
 * bit is clear, is refused without reading the table (a cache miss in a
 * table of many MiB). Two halves, as the pin filter's, but interleaved
 * (word i of half h at 2i + h: a new flow's two words are in one cache
 * line): the program sets a new flow's bit in both and reads the one
 * nat_config names; MaintainNAT rebuilds the other from the flows that
 * remain and switches. User space writes it through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2 * NAT_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} nat_filter SEC(".maps");

/* Per-source counters, indexed as struct nat_src_stats says. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * NAT_MAX_SOURCES);
	__type(key, __u32);
	__type(value, struct nat_src_stats);
} nat_source_stats SEC(".maps");

/* Scratch space for keys and values: the program's stack has no room for
 * them (XDP runs a CPU's packets one at a time). k and v serve lookups; a
 * new flow builds its two entries in fk, fv, rk and rv. */
struct nat_scratch {
	struct ft_backoff full; /* this CPU's backoff from nat4 and nat6 */
	struct nat_fkey k;
	struct nat_val v;
	struct nat_fkey fk;
	struct nat_fkey rk;
	struct nat_val fv;
	struct nat_val rv;
	__u32 packed[10];   /* nat_ft_add: an IPv4 value as nat4 holds it */
	/* nat_peek_reply left in rk the reply key of a new flow's first try
	 * toward backend peek_id: 1, else 0 (nat_forward clears it). */
	__u32 peeked;
	__u32 peek_id;
	__u32 peek_idx; /* and the source's index of that try (nat_pick) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_scratch);
} nat_scratch_map SEC(".maps");

static __always_inline struct nat_scratch *nat_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&nat_scratch_map, &zero);
}

/* nat_hash is k's hash in its table: the flow hash of its tuple with
 * NAT_HASH_SEED plus its direction (xdp/nat.go computes the same). It is
 * computed once per key and kept in k->hash (nat_fill_key clears it): a new
 * flow's keys go through two or three nat_ft_* calls. */
static __always_inline __u32 nat_hash(struct nat_fkey *k)
{
	__u32 ports = k->w[k->v6 ? 8 : 2], seed = NAT_HASH_SEED + (k->tag >> 7), h;
	__u8 proto = k->tag & ~NAT_TAG_REPLY;

	if (k->hash)
		return k->hash;
	if (!k->v6)
		h = flow_hash(k->w[0], k->w[1], ports, ports >> 16, proto, seed);
	else
		h = flow_hash(fold_addr6(&k->w[0]), fold_addr6(&k->w[4]), ports, ports >> 16, proto, seed);
	k->hash = h;
	return h;
}

/* A nat4 value holds words 0, 4 and 8-15 of a struct nat_val (nat6's value
 * is the struct nat_val itself). */
static __always_inline __u32 nat4_word(int i)
{
	return i == 0 ? 0 : i == 1 ? 4 : 6 + i;
}

/* nat_ft_get finds k's entry: 1 with its value in out, 0 if there is none.
 * It sets k->bits in the entry, and, when k->tick is not 0, refreshes its
 * seen stamp if that is NAT_TOUCH_TICKS old. */
__attribute__((noinline)) int nat_ft_get(struct nat_fkey *k, struct nat_val *out)
{
	struct ft_ref r = {};
	__u32 *w = (__u32 *)out, *val;
	int v6;

	if (!k || !out)
		return 0;
	v6 = k->v6;
	if (!v6) {
		if (!ft_find(&nat4, cfg_nat4_mask, nat_hash(k), k->w, k->tag, NAT4_GEOM, &r))
			return 0;
		val = r.e + 1 + NAT4_GEOM.kw;
#pragma unroll
		for (int i = 0; i < NAT4_GEOM.vw; i++)
			w[nat4_word(i)] = val[i];
	} else {
		if (!ft_find(&nat6, cfg_nat6_mask, nat_hash(k), k->w, k->tag, NAT6_GEOM, &r))
			return 0;
		val = r.e + 1 + NAT6_GEOM.kw;
#pragma unroll
		for (int i = 0; i < NAT6_GEOM.vw; i++)
			w[i] = val[i];
	}
	if (!ft_stable(&r))
		return 0;
	if (cfg_dry_run)
		return 1;
	/* The value's bits and seen words. The program builds for BPF v1,
	 * whose atomic or is 64-bit only: bits is 8-byte aligned, and seen,
	 * the high half, is ored with 0. */
	{
		__u32 *bits = val + (v6 ? 10 : 4);

		if ((out->bits & k->bits) != k->bits)
			__sync_fetch_and_or((__u64 *)bits, (__u64)k->bits);
		if (k->tick && k->tick - out->seen >= NAT_TOUCH_TICKS) {
			bits[1] = k->tick;
			ft_touch(&r);
		}
	}
	return 1;
}

/* nat_ft_add inserts an entry of a new flow, unless its key is there: the
 * reply entry (sc->rk, sc->rv) or the forward one (sc->fk, sc->fv). It
 * returns 0, or -FT_EEXIST, -FT_ENOSPC (the key's buckets are full),
 * -FT_EBUSY (its home bucket stayed locked). An IPv4 value is packed in
 * sc->packed: the program's stack has no room for it. Inlined into
 * nat_ft_add_pair's loop, which the verifier checks once. */
static __always_inline int nat_ft_add(struct nat_scratch *sc, int reply)
{
	struct nat_fkey *k;
	__u32 *w;

	k = reply ? &sc->rk : &sc->fk;
	w = reply ? (__u32 *)&sc->rv : (__u32 *)&sc->fv;
	if (k->v6)
		return ft_insert(&nat6, cfg_nat6_mask, nat_hash(k), k->w, k->tag, w, NAT6_GEOM, 0);
#pragma unroll
	for (int i = 0; i < NAT4_GEOM.vw; i++)
		sc->packed[i] = w[nat4_word(i)];
	return ft_insert(&nat4, cfg_nat4_mask, nat_hash(k), k->w, k->tag, sc->packed, NAT4_GEOM, 0);
}

/* nat_ft_del removes k's entry: 1 if it did. */
__attribute__((noinline)) int nat_ft_del(struct nat_fkey *k)
{
	struct ft_ref r = {};
	int found;

	if (!k)
		return 0;
	if (k->v6)
		found = ft_find(&nat6, cfg_nat6_mask, nat_hash(k), k->w, k->tag, NAT6_GEOM, &r);
	else
		found = ft_find(&nat4, cfg_nat4_mask, nat_hash(k), k->w, k->tag, NAT4_GEOM, &r);
	return found && ft_delete(&r);
}

/* nat_peek reads the first word of each cache line of the home buckets of
 * keys a and b, of one family (v6), whose hashes are computed (nat_hash),
 * and nothing else: loads issued together, whose cache misses overlap with
 * each other and with what comes next (BPF has no prefetch). Inlined: a
 * call's return can cost as much as the reads save (on a kernel with the
 * Safe RET mitigation every return is a mispredicted branch). The two
 * families are written out apart: with the reads shared after the branches
 * (a loop over the bucket's lines), snat_new_flow was +34 and +62 ns
 * slower beside this version. */
static __always_inline void nat_peek(const struct nat_fkey *a, const struct nat_fkey *b, int v6)
{
	__u32 ia, ib, *ba, *bb;

	if (v6) {
		ia = a->hash & cfg_nat6_mask;
		ib = b->hash & cfg_nat6_mask;
		ba = bpf_map_lookup_elem(&nat6, &ia);
		bb = bpf_map_lookup_elem(&nat6, &ib);
		if (!ba || !bb)
			return;
#pragma unroll
		for (int i = 0; i < 64; i += 16) {
			(void)*(volatile __u32 *)(ba + i);
			(void)*(volatile __u32 *)(bb + i);
		}
		return;
	}
	ia = a->hash & cfg_nat4_mask;
	ib = b->hash & cfg_nat4_mask;
	ba = bpf_map_lookup_elem(&nat4, &ia);
	bb = bpf_map_lookup_elem(&nat4, &ib);
	if (!ba || !bb)
		return;
	(void)*(volatile __u32 *)ba;
	(void)*(volatile __u32 *)bb;
	(void)*(volatile __u32 *)(ba + 16);
	(void)*(volatile __u32 *)(bb + 16);
}

static __always_inline struct nat_config *nat_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&nat_config_map, &zero);
}

/* nat_mark sets the filter bit of a forward key's table hash in both
 * halves, once its entry is in the table: MaintainNAT relies on that order
 * when it rebuilds a half (xdp/pinfilter.go). */
static __always_inline void nat_mark(__u32 hash)
{
	hf_mark(&nat_filter, 2, 1, hash >> (32 - NAT_FILTER_SHIFT));
}

/* nat_filter_peek reads the cache line of the filter words nat_mark will
 * set for a forward key of this hash, early, as nat_peek reads buckets: the
 * line's miss overlaps the buckets', and the locked ors then find it in
 * cache (they measured +137 ns per new flow without it). */
static __always_inline void nat_filter_peek(__u32 hash)
{
	__u32 word = (hash >> (32 - NAT_FILTER_SHIFT) >> 6) * 2;
	__u64 *w = bpf_map_lookup_elem(&nat_filter, &word);

	if (w)
		(void)*(volatile __u64 *)w;
}

/* nat_maybe says whether forward key k may have an entry: the bit of its
 * table hash in the half the config names. */
static __always_inline int nat_maybe(struct nat_fkey *k)
{
	struct nat_config *cfg = nat_cfg();

	return !cfg || hf_has(&nat_filter, 2, 1, cfg->filter_half, nat_hash(k) >> (32 - NAT_FILTER_SHIFT));
}

/* nat_is_source says whether the packet's destination is a SNAT source: a
 * bit of the config's filter (one inlined array read for every other
 * packet), then the sources themselves. */
static __always_inline int nat_is_source(struct nat_config *cfg, struct pkt *p)
{
	__u32 folded = p->family == 4 ? p->daddr[0] : fold_addr6(p->daddr);

	if (!cfg || !(cfg->filter & (1ULL << (vip_filter_bit(folded) & 63))))
		return 0;
	if (p->family == 4) {
#pragma unroll
		for (int i = 0; i < NAT_MAX_SOURCES; i++)
			if (i < cfg->n4 && cfg->src4[i] == p->daddr[0])
				return 1;
		return 0;
	}
#pragma unroll
	for (int i = 0; i < NAT_MAX_SOURCES; i++)
		if (i < cfg->n6 && cfg->src6[i][0] == p->daddr[0] && cfg->src6[i][1] == p->daddr[1] &&
		    cfg->src6[i][2] == p->daddr[2] && cfg->src6[i][3] == p->daddr[3])
			return 1;
	return 0;
}

/* nat_fill_key fills in k for a packet from saddr:sport to daddr:dport (of
 * family fam) in direction dir: the key words and the tag. */
static __always_inline void nat_fill_key(struct nat_fkey *k, const __u32 *saddr, const __u32 *daddr, __be16 sport,
				    __be16 dport, __u8 proto, __u8 fam, __u32 dir)
{
	__u32 ports = (__u32)sport | ((__u32)dport << 16);

	k->tag = proto | (dir ? NAT_TAG_REPLY : 0);
	k->bits = 0;
	k->tick = 0;
	k->hash = 0;
	if (fam == 4) {
		k->v6 = 0;
		k->w[0] = saddr[0];
		k->w[1] = daddr[0];
		k->w[2] = ports;
		return;
	}
	k->v6 = 1;
	__builtin_memcpy(&k->w[0], saddr, 16);
	__builtin_memcpy(&k->w[4], daddr, 16);
	k->w[8] = ports;
}

/* nat_key_of fills in k for packet p in direction dir. */
static __always_inline void nat_key_of(struct nat_fkey *k, struct pkt *p, __u32 dir)
{
	nat_fill_key(k, p->saddr, p->daddr, p->sport, p->dport, p->proto, p->family, dir);
}

/* nat_reply_key is the key of the reply entry of the flow whose forward
 * translation is v. */
static __always_inline void nat_reply_key(struct nat_fkey *k, struct nat_val *v, __u8 proto, __u8 family)
{
	nat_fill_key(k, v->daddr, v->saddr, v->dport, v->sport, proto, family, NAT_DIR_REPLY);
}

/* nat_delete_pair removes both entries of the flow of client packet p, whose
 * forward translation is v (k: scratch space for the keys). */
static __always_inline void nat_delete_pair(struct pkt *p, struct nat_val *v, struct nat_fkey *k)
{
	if (cfg_dry_run)
		return;
	nat_key_of(k, p, NAT_DIR_FWD);
	nat_ft_del(k);
	nat_reply_key(k, v, p->proto, p->family);
	nat_ft_del(k);
}

/* nat_ft_add_pair inserts the reply entry, then the forward one: 0, the
 * reply insert's error (negative), or the forward insert's negated
 * (positive). One call for both (a return costs a mispredicted branch with
 * the Safe RET mitigation), a loop so that the insert's code is there
 * once. */
__attribute__((noinline)) int nat_ft_add_pair(struct nat_scratch *sc)
{
	int err = 0, reply = 1;

	if (!sc)
		return -FT_ENOSPC;
#pragma clang loop unroll(disable)
	for (; reply >= 0; reply--) {
		err = nat_ft_add(sc, reply);
		if (err)
			return reply ? err : -err;
	}
	return 0;
}

/* nat_insert_pair claims the reply key (the port), then adds the forward
 * entry. It returns 0; -FT_EEXIST when the source:port is taken toward that
 * backend; -FT_ENOSPC when the reply key's buckets are full (another port
 * may find room); NAT_FWD_FULL when the forward key's are (no port can
 * help); 1 when another CPU created the flow's forward entry first (the
 * claim is given back). */
#define NAT_FWD_FULL 2

static __always_inline int nat_insert_pair(struct nat_scratch *sc)
{
	int err = nat_ft_add_pair(sc);

	if (err <= 0)
		return err == -FT_EBUSY ? -FT_EEXIST : err; /* a busy bucket: try another port */
	nat_ft_del(&sc->rk);
	return err == FT_EEXIST ? 1 : NAT_FWD_FULL;
}

/* nat_tcp_bits are the state bits a TCP packet shows (at l4 of the frame). */
static __always_inline __u32 nat_tcp_bits(struct tcphdr *t)
{
	__u32 bits = NAT_S_SEEN;

	if (t->syn)
		bits |= NAT_S_SYN;
	if (t->fin)
		bits |= NAT_S_FIN;
	if (t->rst)
		bits |= NAT_S_RST;
	return bits;
}

/* nat_csum_add adds the one's complement difference of n 32-bit words
 * changing from old to new to sum (RFC 1624: ~m + m'). */
static __always_inline __u64 nat_csum_diff(__u64 sum, const __u32 *old, const __u32 *new, const int n)
{
#pragma unroll
	for (int i = 0; i < n; i++)
		sum += (__u32)~old[i] + (__u64)new[i];
	return sum;
}

/* nat_rewrite writes the new addresses and ports into the packet (its IP
 * header after l2 bytes) and updates the IPv4 header checksum and the
 * transport checksum (pseudo-header and ports) incrementally. It returns 0,
 * or a drop reason. */
static __always_inline __u32 nat_rewrite(struct xdp_md *ctx, struct pkt *p, const __u32 *saddr, __be16 sport,
					 const __u32 *daddr, __be16 dport, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 *ports, newports;
	__u64 d = 0, dl4;
	__u16 *check;
	void *l4;

	if (p->family == 4) {
		struct iphdr *ip = data + l2;

		if ((void *)(ip + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		d = nat_csum_diff(d, &ip->saddr, saddr, 1);
		d = nat_csum_diff(d, &ip->daddr, daddr, 1);
		ip->check = csum_fold((__u16)~ip->check + d);
		ip->saddr = saddr[0];
		ip->daddr = daddr[0];
		l4 = ip + 1;
	} else {
		struct ipv6hdr *ip6 = data + l2;

		if ((void *)(ip6 + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		/* An extension header (an atomic fragment's) would move the
		 * transport header: not translated. */
		if (ip6->nexthdr != p->proto)
			return CNT_DROP_NAT_UNSUPPORTED;
		d = nat_csum_diff(d, (__u32 *)&ip6->saddr, saddr, 4);
		d = nat_csum_diff(d, (__u32 *)&ip6->daddr, daddr, 4);
		__builtin_memcpy(&ip6->saddr, saddr, 16);
		__builtin_memcpy(&ip6->daddr, daddr, 16);
		l4 = ip6 + 1;
	}
	ports = l4;
	if (p->proto == IPPROTO_TCP_) {
		struct tcphdr *t = l4;

		if ((void *)(t + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		check = &t->check;
	} else {
		struct udphdr *u = l4;

		if ((void *)(u + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		check = &u->check;
	}
	newports = (__u32)sport | ((__u32)dport << 16);
	dl4 = nat_csum_diff(d, ports, &newports, 1);
	*ports = newports;
	/* An IPv4 UDP datagram without a checksum keeps none; a computed 0 is
	 * sent as 0xffff (RFC 768). */
	if (p->proto == IPPROTO_UDP_) {
		if (p->family == 4 && *check == 0)
			return 0;
		*check = csum_fold((__u16)~*check + dl4);
		if (*check == 0)
			*check = 0xffff;
		return 0;
	}
	*check = csum_fold((__u16)~*check + dl4);
	return 0;
}

static __always_inline void nat_count_src(__u32 idx, int failed)
{
	struct nat_src_stats *s;

	if (cfg_dry_run)
		return;
	s = bpf_map_lookup_elem(&nat_source_stats, &idx);
	if (!s)
		return;
	if (failed)
		s->alloc_fail++;
	else
		s->flows++;
}

/* nat_pick sets the source and port of attempt i for a flow of hash h; it
 * returns the source's index in nat_src_stats. The flow hash's high bits
 * chose the flow's Maglev slot, so the flows of one backend share them:
 * they are mixed first (MurmurHash3's finaliser), else those flows would
 * only ever try a backend's share of the ports. xdp/nat.go (NATPick)
 * computes the same. */
static __always_inline __u32 nat_pick(struct nat_config *cfg, struct pkt *p, __u32 h, __u32 i, __u32 *src,
				      __be16 *port)
{
	__u32 n = p->family == 4 ? cfg->n4 : cfg->n6;
	__u32 range = (__u32)cfg->port_hi - cfg->port_lo + 1;
	__u32 x = h, s;

	x ^= x >> 16;
	x *= 0x85EBCA6Bu;
	x ^= x >> 13;
	x *= 0xC2B2AE35u;
	x ^= x >> 16;
	s = (x + i) % n;
	*port = bpf_htons(cfg->port_lo + (__u32)(((__u64)(x + i * 0x9E3779B1u) * range) >> 32));
	if (p->family == 4) {
		s &= NAT_MAX_SOURCES - 1;
		src[0] = cfg->src4[s];
		return s;
	}
	s &= NAT_MAX_SOURCES - 1;
	__builtin_memcpy(src, cfg->src6[s], 16);
	return NAT_MAX_SOURCES + s;
}

/* nat_peek_reply reads the home buckets of both entries that a new flow of
 * packet p toward backend b would make first: the reply entry of its first
 * try, and its forward entry (sc->k, filled in). A SYN most likely starts
 * a flow, whose two entries are two cache misses in random buckets; the
 * forward lookup, then the reply entry's insert (a locked compare-and-swap)
 * would take them one after the other. Both keys' hashes come first, then
 * the two reads, one right after the other, so that the misses overlap
 * (snat_new_flow: -312 ns without these reads; reading the reply bucket
 * alone before the forward lookup saved 123). */
static __always_inline void nat_peek_reply(struct pkt *p, struct backend *b, __u32 id, __u32 hash,
					   struct nat_scratch *sc)
{
	struct nat_config *cfg = nat_cfg();
	struct nat_val *fv = &sc->fv;

	if (!cfg || (p->family == 4 ? cfg->n4 : cfg->n6) == 0 || b->family != p->family)
		return;
	sc->peek_idx = nat_pick(cfg, p, hash, 0, fv->saddr, &fv->sport);
	nat_fill_key(&sc->rk, (const __u32 *)b->addr, fv->saddr, b->port ? b->port : p->dport, fv->sport, p->proto, p->family,
		     NAT_DIR_REPLY);
	nat_hash(&sc->k);
	nat_hash(&sc->rk);
	nat_peek(&sc->rk, &sc->k, p->family == 6);
	nat_filter_peek(sc->k.hash);
	sc->peeked = 1;
	sc->peek_id = id;
}

/* nat_create makes the flow of a client's first packet toward backend b
 * (id) at now (CLOCK_MONOTONIC_COARSE ns): it allocates a source and port and inserts both entries. It returns
 * 0 with the forward translation in fv, or a drop reason. */
static __always_inline __u32 nat_create(struct xdp_md *ctx, struct pkt *p, struct vip_meta *m, struct backend *b,
					__u32 id, __u32 hash, struct nat_scratch *sc, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct nat_config *cfg = nat_cfg();
	struct ethhdr *eth = data;
	struct nat_val *fv = &sc->fv, *rv = &sc->rv;
	__u32 first = 0, idx, full = 0;
	__be16 sport;
	int err = 0;

	if (!cfg || (p->family == 4 ? cfg->n4 : cfg->n6) == 0 || cfg->port_hi < cfg->port_lo)
		return CNT_DROP_NAT_NO_SOURCE;
	if (b->family != p->family)
		return CNT_DROP_NAT_NO_SOURCE; /* no translation between families */
	if ((void *)(eth + 1) > data_end)
		return CNT_DROP_TRUNCATED;

	/* A full table (ft_backing_off): new flows fail at once, counted the
	 * same. */
	if (ft_backing_off(&sc->full, now))
		return CNT_DROP_NAT_FULL;
	/* The forward key is nat_forward's lookup key, whose hash is known
	 * (nat_hash). The first try's source and port: nat_peek_reply's, kept
	 * in fv with the reply key in rk. */
	sc->fk = sc->k;
	sc->fk.bits = 0;
	sc->fk.tick = 0;
	sport = fv->sport;
	__builtin_memset(fv->daddr, 0, sizeof(*fv) - __builtin_offsetof(struct nat_val, daddr));
	fv->sport = sport;
	__builtin_memset(rv, 0, sizeof(*rv));
	__builtin_memcpy(fv->daddr, b->addr, 16);
	fv->dport = b->port ? b->port : p->dport;
	fv->backend_id = id;
	fv->bits = p->syn ? NAT_S_SYN : 0;
	fv->seen = now >> FT_TICK_SHIFT;
	fv->aux = now >> NAT_CREATED_SHIFT;

	__builtin_memcpy(rv->saddr, p->daddr, 16);
	__builtin_memcpy(rv->daddr, p->saddr, 16);
	rv->sport = p->dport;
	rv->dport = p->sport;
	rv->backend_id = id;
	rv->seen = fv->seen;
	rv->aux = ctx->ingress_ifindex;
	__builtin_memcpy(rv->dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(rv->smac, eth->h_dest, ETH_ALEN);

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < NAT_PORT_TRIES; i++) {
		if (i == 0 && sc->peeked && sc->peek_id == id) {
			idx = sc->peek_idx;
		} else {
			idx = nat_pick(cfg, p, hash, i, fv->saddr, &fv->sport);
			nat_reply_key(&sc->rk, fv, p->proto, p->family);
		}
		if (i == 0)
			first = idx;
		if (cfg_dry_run)
			return 0;
		err = ablated(ABLATE_NAT_INSERT) ? 0 : nat_insert_pair(sc);
		if (err == 0) {
			nat_mark(nat_hash(&sc->fk));
			ft_room(&sc->full);
			nat_count_src(idx, 0);
			count(CNT_EV_NAT_CREATED);
			return 0;
		}
		if (err == 1) {
			/* Another CPU made this flow a moment ago: follow it. */
			if (!nat_ft_get(&sc->fk, fv))
				return CNT_DROP_NAT_FULL;
			return 0;
		}
		if (err == NAT_FWD_FULL)
			break;
		if (err == -FT_ENOSPC) {
			full = 1;
			continue;
		}
		count(CNT_EV_NAT_PORT_RETRY);
	}
	if (full || err == NAT_FWD_FULL) {
		ft_no_room(&sc->full, now);
		return CNT_DROP_NAT_FULL;
	}
	nat_count_src(first, 1);
	return CNT_DROP_NAT_NO_PORT;
}

/* nat_rst answers the client's TCP packet (the frame, l2 bytes of
 * Ethernet and tag) with a RST from the VIP, sent back where it came from:
 * its backend is gone. */
static __always_inline __u32 nat_rst(struct xdp_md *ctx, struct pkt *p, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = p->family == 4 ? IPV4_HLEN : IPV6_HLEN;
	struct ethhdr *eth = data;
	struct tcphdr *t;
	__u32 seq, ack, len, doff;
	__u16 flags;
	__u64 sum = 0;

	if ((void *)(eth + 1) > data_end)
		return CNT_DROP_TRUNCATED;
	t = data + l2 + l3;
	if ((void *)(t + 1) > data_end)
		return CNT_DROP_TRUNCATED;
	doff = t->doff * 4;
	len = p->l3_len - l3 - doff + t->syn + t->fin;
	/* RFC 9293 3.10.7.1: answer an ACK with its acknowledgment as the
	 * sequence number; anything else with sequence 0 and an ACK of what it
	 * carried. */
	if (t->ack) {
		seq = t->ack_seq;
		ack = 0;
		flags = bpf_htons(0x5004); /* data offset 5, RST */
	} else {
		seq = 0;
		ack = bpf_htonl(bpf_ntohl(t->seq) + len);
		flags = bpf_htons(0x5014); /* data offset 5, RST, ACK */
	}
	if (bpf_xdp_adjust_tail(ctx, (int)(l2 + l3 + TCP_HLEN) - (int)frame_bytes(data, data_end)))
		return CNT_DROP_ADJUST;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return CNT_DROP_ADJUST;
	{
		__u8 mac[ETH_ALEN];

		__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	}
	t = data + l2 + l3;
	if ((void *)(t + 1) > data_end)
		return CNT_DROP_ADJUST;
	t->source = p->dport;
	t->dest = p->sport;
	t->seq = seq;
	t->ack_seq = ack;
	*((__u16 *)t + 6) = flags;
	t->window = 0;
	t->check = 0;
	t->urg_ptr = 0;
	if (p->family == 4) {
		struct iphdr *ip = data + l2;

		if ((void *)(ip + 1) > data_end)
			return CNT_DROP_ADJUST;
		ip->saddr = p->daddr[0];
		ip->daddr = p->saddr[0];
		ip->tot_len = bpf_htons(IPV4_HLEN + TCP_HLEN);
		ip->ttl = cfg_ttl;
		ip->id = 0;
		ip->frag_off = bpf_htons(IP_DF);
		ip->check = 0;
		ip->check = ipv4_csum(ip);
		sum = (__u64)p->saddr[0] + p->daddr[0];
	} else {
		struct ipv6hdr *ip6 = data + l2;

		if ((void *)(ip6 + 1) > data_end)
			return CNT_DROP_ADJUST;
		__builtin_memcpy(&ip6->saddr, p->daddr, 16);
		__builtin_memcpy(&ip6->daddr, p->saddr, 16);
		ip6->payload_len = bpf_htons(TCP_HLEN);
		ip6->hop_limit = cfg_ttl;
#pragma unroll
		for (int i = 0; i < 4; i++)
			sum += (__u64)p->saddr[i] + p->daddr[i];
	}
	sum += bpf_htons(IPPROTO_TCP_) + bpf_htons(TCP_HLEN);
	{
		__u16 *w = (__u16 *)t;

#pragma unroll
		for (int i = 0; i < TCP_HLEN / 2; i++)
			sum += w[i];
	}
	t->check = csum_fold(sum);
	return CNT_TX_NAT_RST;
}

/* nat_dry_backend notes, in a dry run, the backend chosen for the packet
 * (the flow's, or the table's for a new flow), whatever comes after. */
static __always_inline void nat_dry_backend(__u32 id)
{
	if (cfg_dry_run) {
		struct dry_outcome *o = dry();

		if (o)
			o->backend_id = id;
	}
}

/* nat_flow_hash is the flow hash of p, as lb_forward computes it for DSR:
 * only new flows need it. */
static __always_inline __u32 nat_flow_hash(struct pkt *p, struct vip_meta *m)
{
	if (p->family == 4)
		return flow_hash(p->saddr[0], p->daddr[0], p->sport, p->dport, p->proto, m->hash_seed);
	return flow_hash(fold_addr6(p->saddr), fold_addr6(p->daddr), p->sport, p->dport, p->proto, m->hash_seed);
}

/* nat_forward sends a client's packet of a `snat` service: it follows the
 * flow's NAT entry, or creates one on a TCP SYN or any UDP datagram. A flow
 * whose backend is down or gone is answered with a RST (TCP) or moved to
 * the table's backend (UDP). */
static __always_inline __u32 nat_forward(struct xdp_md *ctx, struct pkt *p, struct vip_meta *m)
{
	const int l2 = p->vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
	struct nat_scratch *sc;
	struct nat_val *v;
	struct backend *b = NULL;
	__u32 id = 0, new_id = 0, r, hash = 0, bits = NAT_S_SEEN;
	int full;
	struct tcphdr *t = NULL;
	__u64 now;

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	/* Not handled on purpose: fragments carry no ports to translate (the
	 * first, its datagram's), an IPv6 extension header (an atomic
	 * fragment's) moves the transport header, and ICMP errors about a
	 * SNAT flow arriving at the VIP (the client's side) are not translated
	 * toward the backend. All before the flow is looked up: such a packet
	 * makes, removes and answers no flow. */
	if (p->frag_first)
		return CNT_DROP_NAT_UNSUPPORTED;
	if (p->icmp_err)
		return CNT_DROP_ICMP;
	if (p->family == 6) {
		struct ipv6hdr *ip6 = data + l2;

		if ((void *)(ip6 + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		if (ip6->nexthdr != p->proto)
			return CNT_DROP_NAT_UNSUPPORTED;
	}
	if (p->proto == IPPROTO_TCP_) {
		t = data + l2 + (p->family == 4 ? IPV4_HLEN : IPV6_HLEN);
		if ((void *)(t + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		bits = nat_tcp_bits(t);
	}
	sc = nat_scratch();
	if (!sc)
		return CNT_DROP_NAT_FULL;
	now = bpf_ktime_get_coarse_ns();
	sc->peeked = 0;

	v = &sc->v;
	nat_key_of(&sc->k, p, NAT_DIR_FWD);
	sc->k.bits = bits;
	sc->k.tick = now >> FT_TICK_SHIFT;
	full = ft_backing_off(&sc->full, now);
	if (p->syn) {
		/* Most likely a new flow: its backend, and an early read of
		 * both its entries' buckets (nat_peek_reply). */
		struct backend *nb;

		hash = nat_flow_hash(p, m);
		new_id = table_lookup(m->table_idx, m->table_half, m->table_size, hash);
		nb = backend_lookup(new_id);
		/* Not while this CPU backs off from a full table: no flow will
		 * be made. */
		if (backend_up(nb) && !full && !ablated(ABLATE_NAT_PEEK))
			nat_peek_reply(p, nb, new_id, hash, sc);
	}
	/* While this CPU backs off from a full table, a packet that would
	 * make a flow (a SYN, a datagram) whose filter bit is clear has no
	 * flow: it is refused below (nat_create) without a table read. */
	if (full && (!t || p->syn) && !nat_maybe(&sc->k)) {
		v = NULL;
	} else if (!ablated(ABLATE_NAT_LOOKUP) && nat_ft_get(&sc->k, v)) {
		b = backend_lookup(v->backend_id);
		if (!backend_up(b)) {
			count(CNT_EV_NAT_BACKEND_LOST);
			nat_delete_pair(p, v, &sc->fk);
			if (t && !p->syn) {
				if (t->rst)
					return CNT_DROP_NO_BACKEND;
				return nat_rst(ctx, p, l2);
			}
			v = NULL; /* a SYN or a datagram: a new flow */
		} else {
			id = v->backend_id;
			nat_dry_backend(id);
		}
	} else {
		v = NULL;
	}
	if (!v) {
		if (t && !p->syn)
			return CNT_DROP_NAT_NO_FLOW;
		if (!p->syn) {
			hash = nat_flow_hash(p, m);
			new_id = table_lookup(m->table_idx, m->table_half, m->table_size, hash);
		}
		id = new_id;
		b = backend_lookup(id);
		if (!backend_up(b))
			return CNT_DROP_NO_BACKEND;
		nat_dry_backend(id);
		r = nat_create(ctx, p, m, b, id, hash, sc, now);
		if (r)
			return r;
		v = &sc->fv;
	}
	count_lb(&backend_stats, id, p);
	if (p->syn)
		count(CNT_EV_NEW_FLOW);
	p->backend_id = id;
	r = nat_rewrite(ctx, p, v->saddr, v->sport, v->daddr, v->dport, l2);
	if (r)
		return r;
	if (set_macs(ctx, b->dmac, b->smac))
		return CNT_DROP_ADJUST;
	return xmit(ctx, b, CNT_TX_SNAT, CNT_REDIRECT_SNAT);
}

/* nat_forward4 is nat_forward for a packet lb_forward found to be IPv4. The
 * store tells the compiler what the family is: the copy of nat_forward
 * inlined here has its tests of p->family folded away. */
static __always_inline __u32 nat_forward4(struct xdp_md *ctx, struct pkt *p, struct vip_meta *m)
{
	p->family = 4;
	return nat_forward(ctx, p, m);
}

/* nat_to_client sends the frame to the client side of NAT flow entry v
 * (a reply entry's value): to the neighbour and through the interface the
 * flow's first packet came from. */
static __always_inline __u32 nat_to_client(struct xdp_md *ctx, struct nat_val *v, __u32 tx, __u32 redirect)
{
	if (set_macs(ctx, v->dmac, v->smac))
		return CNT_DROP_ADJUST;
	return xmit_to(ctx, v->aux, tx, redirect);
}

/* nat_reply translates a backend's reply to a SNAT source:port back to the
 * client. It returns 0 when the packet belongs to no NAT flow (the caller
 * goes on: the host's own traffic, or a VIP at the same address). */
static __always_inline __u32 nat_reply(struct xdp_md *ctx, struct pkt *p)
{
	const int l2 = p->vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct nat_scratch *sc = nat_scratch();
	__u32 bits = NAT_S_SEEN, r;
	struct nat_val *v;

	if (!sc)
		return 0;
	if (p->proto == IPPROTO_TCP_) {
		struct tcphdr *t = data + l2 + (p->family == 4 ? IPV4_HLEN : IPV6_HLEN);

		if ((void *)(t + 1) <= data_end)
			bits = nat_tcp_bits(t);
	}
	v = &sc->v;
	nat_key_of(&sc->k, p, NAT_DIR_REPLY);
	/* A fragment's entry is not touched: it is dropped. */
	if (!p->frag_first) {
		sc->k.bits = bits;
		sc->k.tick = bpf_ktime_get_coarse_ns() >> FT_TICK_SHIFT;
	}
	if (!nat_ft_get(&sc->k, v))
		return 0;
	if (p->frag_first)
		return CNT_DROP_NAT_UNSUPPORTED;
	p->backend_id = v->backend_id;
	r = nat_rewrite(ctx, p, v->saddr, v->sport, v->daddr, v->dport, l2);
	if (r)
		return r;
	return nat_to_client(ctx, v, CNT_TX_SNAT_REPLY, CNT_REDIRECT_SNAT_REPLY);
}

/* nat_icmp translates an ICMP error sent to a SNAT source about a packet of
 * a NAT flow (its quote: the source:port to the backend:port) for the
 * flow's client: the quote becomes the client's packet to the VIP, the
 * error goes to the client, from the VIP when the backend sent it (from the
 * router that did otherwise). SNAT does not change a packet's size, so a
 * "fragmentation needed" or "packet too big" keeps its MTU. The quoted
 * transport checksum is updated when the quote holds it. It returns 0 when
 * the error is about no NAT flow (the host's business). */
static __always_inline __u32 nat_icmp(struct xdp_md *ctx, struct pkt *p, __u32 l4_len)
{
	const int l2 = p->vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 *ports, newports, hlen;
	__u64 dmsg = 0, din = 0, dp;
	struct icmp_common *ic;
	struct nat_scratch *sc = nat_scratch();
	struct nat_val *v;
	__u16 *ck, old;
	__u8 proto;

	if (!sc)
		return 0;
	v = &sc->v;
	if (p->family == 4) {
		struct iphdr *ip = data + l2;
		struct iphdr *in;
		__u32 src;

		if ((void *)(ip + 1) > data_end)
			return 0;
		ic = (void *)(ip + 1);
		if ((void *)(ic + 1) > data_end || l4_len < ICMP_HLEN)
			return 0;
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED && ic->type != ICMP_PARAMETERPROB)
			return 0;
		in = (void *)(ic + 1);
		if ((void *)(in + 1) > data_end || l4_len < ICMP_HLEN + IPV4_HLEN + 4)
			return 0;
		proto = in->protocol;
		if (in->version != 4 || in->ihl != 5 || in->saddr != p->daddr[0] ||
		    (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_))
			return 0;
		ports = (void *)(in + 1);
		if ((void *)(ports + 1) > data_end)
			return 0;
		{
			__u32 s4 = in->daddr, d4 = in->saddr;

			nat_fill_key(&sc->k, &s4, &d4, ((__be16 *)ports)[1], ((__be16 *)ports)[0], proto, 4,
				     NAT_DIR_REPLY);
		}
		if (!nat_ft_get(&sc->k, v))
			return 0;
		/* The outer header: to the client, from the VIP if the backend
		 * sent it. */
		src = ip->saddr == in->daddr ? v->saddr[0] : ip->saddr;
		dmsg = nat_csum_diff(0, &ip->saddr, &src, 1);
		dmsg = nat_csum_diff(dmsg, &ip->daddr, v->daddr, 1);
		ip->check = csum_fold((__u16)~ip->check + dmsg);
		ip->saddr = src;
		ip->daddr = v->daddr[0];
		dmsg = 0; /* ICMPv4 has no pseudo-header */
		/* The quote: from the client to the VIP. */
		din = nat_csum_diff(0, &in->saddr, v->daddr, 1);
		din = nat_csum_diff(din, &in->daddr, v->saddr, 1);
		old = in->check;
		in->check = csum_fold((__u16)~in->check + din);
		dmsg += din + (__u16)~old + in->check;
		in->saddr = v->daddr[0];
		in->daddr = v->saddr[0];
		hlen = IPV4_HLEN;
	} else {
		struct ipv6hdr *ip6 = data + l2;
		struct ipv6hdr *in;
		__u32 src[4];

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		ic = (void *)(ip6 + 1);
		if ((void *)(ic + 1) > data_end || l4_len < ICMP_HLEN)
			return 0;
		if (ic->type < ICMPV6_DEST_UNREACH || ic->type > ICMPV6_PARAMPROB)
			return 0;
		in = (void *)(ic + 1);
		if ((void *)(in + 1) > data_end || l4_len < ICMP_HLEN + IPV6_HLEN + 4)
			return 0;
		proto = in->nexthdr;
		if (in->version != 6 || __builtin_memcmp(&in->saddr, p->daddr, 16) != 0 ||
		    (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_))
			return 0;
		ports = (void *)(in + 1);
		if ((void *)(ports + 1) > data_end)
			return 0;
		{
			__u32 s6[4], d6[4];

			__builtin_memcpy(s6, &in->daddr, 16);
			__builtin_memcpy(d6, &in->saddr, 16);
			nat_fill_key(&sc->k, s6, d6, ((__be16 *)ports)[1], ((__be16 *)ports)[0], proto, 6,
				     NAT_DIR_REPLY);
		}
		if (!nat_ft_get(&sc->k, v))
			return 0;
		if (__builtin_memcmp(&ip6->saddr, &in->daddr, 16) == 0)
			__builtin_memcpy(src, v->saddr, 16);
		else
			__builtin_memcpy(src, &ip6->saddr, 16);
		/* ICMPv6's checksum covers the pseudo-header. */
		dmsg = nat_csum_diff(0, (__u32 *)&ip6->saddr, src, 4);
		dmsg = nat_csum_diff(dmsg, (__u32 *)&ip6->daddr, v->daddr, 4);
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, v->daddr, 16);
		din = nat_csum_diff(0, (__u32 *)&in->saddr, v->daddr, 4);
		din = nat_csum_diff(din, (__u32 *)&in->daddr, v->saddr, 4);
		dmsg += din;
		__builtin_memcpy(&in->saddr, v->daddr, 16);
		__builtin_memcpy(&in->daddr, v->saddr, 16);
		hlen = IPV6_HLEN;
	}
	/* The quoted ports, and the quoted transport checksum when the quote
	 * holds it. */
	newports = (__u32)v->dport | ((__u32)v->sport << 16);
	dp = nat_csum_diff(0, ports, &newports, 1);
	ck = (void *)ports + (proto == IPPROTO_UDP_ ? 6 : 16);
	if ((void *)(ck + 1) <= data_end && l4_len >= ICMP_HLEN + hlen + (proto == IPPROTO_UDP_ ? 8 : 18) &&
	    (*ck || proto != IPPROTO_UDP_ || p->family == 6)) {
		old = *ck;
		*ck = csum_fold((__u16)~*ck + din + dp);
		if (proto == IPPROTO_UDP_ && *ck == 0)
			*ck = 0xffff;
		dmsg += (__u16)~old + (__u64)*ck;
	}
	*ports = newports;
	dmsg += dp;
	ic->checksum = csum_fold((__u16)~ic->checksum + dmsg);
	p->backend_id = v->backend_id;
	return nat_to_client(ctx, v, CNT_TX_SNAT_ICMP, CNT_REDIRECT_SNAT_ICMP);
}

#endif
