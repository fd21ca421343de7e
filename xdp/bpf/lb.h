/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The forwarding code of the load balancer: everything from a frame to its
 * verdict (lb_main), as static inline functions. The program of lb.bpf.c is
 * lb_main; the benchmark wrappers of bench.bpf.c run the same lb_main on the
 * same maps (the loader hands them the datapath's), so a benchmark measures
 * the code that forwards. See lb.bpf.c for what the program does. */
#ifndef XDPLB_LB_H
#define XDPLB_LB_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"
#include "hash.h"
#include "flowtable.h"
#include "monitor.h"

/* Knobs, set by the loader before the program is loaded. */
volatile const __u8 cfg_ttl = 64;       /* TTL/hop limit of headers the program writes */
volatile const __u8 cfg_icmp_echo = 1;  /* answer echo requests to VIP addresses */
/* The dry-run build (lb.bpf.c compiled with XDPLB_DRY_RUN, object "dryrun"), for
 * explaining a packet: it counts nothing (global, per-VIP and per-backend
 * counters), creates no pin, leaves the last_seen stamp of the pin it follows
 * as it is and transmits nothing (no bpf_redirect_map: it returns the verdict
 * it would have); it notes the outcome in dry_result instead. A constant, not
 * a knob the loader sets: the verifier cannot prune a test of a read-only
 * value whose skipped code other paths reach, so each test cost the
 * forwarding program a load and a branch (docs/bench.md). */
#ifdef XDPLB_DRY_RUN
#define cfg_dry_run 1
#else
#define cfg_dry_run 0
#endif
/* Buckets of pins4 and pins6 minus one (their sizes are powers of two). */
volatile const __u32 cfg_pins4_mask = DEFAULT_MAX_FLOWS - 1;
volatile const __u32 cfg_pins6_mask = DEFAULT_MAX_FLOWS - 1;

/* Ablations, for the benchmark only: in the ablation build (bench.bpf.c
 * compiled with XDPLB_ABLATE, object "benchablate") each bit of bench_ablate
 * leaves one stage out, so that `bench datapath -ablate` can measure what the
 * stage costs: the build with the bits set beside the same build without.
 * Elsewhere ablated() is the constant 0: the forwarding program and the
 * bench build of it carry no test. */
enum xdplb_ablation {
	ABLATE_MONITOR = 1,  /* the monitor's test of a verdict (is_monitored) */
	ABLATE_STATS = 2,    /* the global verdict and event counters (count) */
	ABLATE_LB_STATS = 4, /* the per-VIP and per-backend counters (count_lb) */
	ABLATE_INDEX = 8,    /* the vip_index cache: every service from the vips hash */
	ABLATE_HASH = 16,    /* the flow hash: a constant instead (changes the backend) */
	ABLATE_TABLE = 32,   /* the Maglev slot read: the table's first slot instead (changes the backend) */
	ABLATE_SNAT = 64,    /* the SNAT-source check of packets of no service or of a flagged one (no reply is translated) */
	ABLATE_NAT_PEEK = 128,   /* a SYN's early read of both its entries' buckets (nat_peek_reply) */
	ABLATE_NAT_LOOKUP = 256, /* a SNAT packet's forward entry lookup: always a miss (every SYN a new flow) */
	ABLATE_NAT_INSERT = 512, /* a new NAT flow's two inserts: taken as done, nothing written */
};
#ifdef XDPLB_ABLATE
volatile const __u32 bench_ablate = 0;
#define ablated(stage) (bench_ablate & (stage))
#else
#define ablated(stage) 0
#endif

#define EEXIST_ 17

static __always_inline struct dry_outcome *dry(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&dry_result, &zero);
}

/* What the program knows of the flow it forwards. For an ICMP error about a
 * VIP flow, the tuple is the quoted flow's, seen from the client. */
struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 l3_len;   /* IP total length of the packet forwarded */
	__u32 frame_len;
	__u8 family;
	__u8 proto;
	__u8 tos;       /* IPv4 TOS or IPv6 traffic class */
	__u8 syn;       /* TCP SYN without ACK */
	__u8 df;        /* may not be fragmented (IPv4 DF; always for IPv6) */
	__u8 vlan;
	__u8 icmp_err;  /* forwarding an ICMP error about the flow */
	__u8 ttl;       /* IPv4 TTL or IPv6 hop limit as received */
	__u8 frag_first; /* the first fragment of a datagram (more follow) */
	__u8 pad[3];
	__u32 frag_id;  /* IPv4 ID or IPv6 fragment identification, for fragments */
	__u32 backend_id; /* the backend it is sent to, for the monitor */
};

/* monitor_tuple copies the flow of p into a monitor event. */
static __always_inline void monitor_tuple(struct monitor_event *e, struct pkt *p)
{
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->family = p->family;
	e->proto = p->proto;
	e->syn = p->syn;
}

/* monitor_verdict sends an event about a packet whose verdict is an event
 * (a drop, an ICMP error forwarded, an echo reply, an ICMP error sent). */
static __always_inline void monitor_verdict(struct xdp_md *ctx, struct pkt *p, __u32 reason)
{
	__u32 type = MON_DROP;
	struct monitor_event *e;
	__u64 len;

	if (reason == CNT_TX_ICMP_ECHO)
		type = MON_ECHO_REPLY;
	else if (reason == CNT_TX_ICMP_ERROR || reason == CNT_REDIRECT_ICMP_ERROR)
		type = MON_ICMP_ERROR;
	else if (reason == CNT_TX_ICMP_TOO_BIG || reason == CNT_TX_ICMP_TIME_EXCEEDED)
		type = MON_ICMP_SENT;
	e = monitor_start(type, reason);
	if (!e)
		return;
	monitor_tuple(e, p);
	e->ifindex = ctx->ingress_ifindex;
	e->backend_id = p->backend_id;
	len = ctx->data_end - ctx->data;
	e->frame_len = len;
	/* A scalar from here on: clang would otherwise test data == data_end,
	 * which leaves the verifier without a lower bound on len. */
	asm volatile("" : "+r"(len));
	if (len > MONITOR_CAP)
		len = MONITOR_CAP;
	if (len >= 1 && bpf_xdp_load_bytes(ctx, 0, e->data, len) == 0)
		e->cap_len = len;
	bpf_ringbuf_submit(e, 0);
}

/* is_monitored says whether a verdict's reason is an event of the monitor
 * (a drop, an ICMP message sent or forwarded, an echo reply): one bit of a
 * constant mask, a shift and a test for the verdicts of most packets. */
#define MON_REASONS(lo, hi) (((1ULL << (hi)) - 1) & ~((1ULL << (lo)) - 1))
_Static_assert(COUNTER_EVENTS <= 64, "the monitor's reason mask holds 64 reasons");

static __always_inline int is_monitored(__u32 reason)
{
	const __u64 mask = MON_REASONS(CNT_DROP_FRAGMENT, CNT_TX_L2) | MON_REASONS(CNT_TX_ICMP_ECHO, COUNTER_EVENTS);

	return (mask >> (reason & 63)) & 1;
}

static __always_inline void count(__u32 idx)
{
	if (cfg_dry_run || ablated(ABLATE_STATS))
		return;
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void count_lb(void *map, __u32 idx, struct pkt *p)
{
	if (cfg_dry_run || ablated(ABLATE_LB_STATS))
		return;
	struct lb_stats *s = bpf_map_lookup_elem(map, &idx);

	if (!s)
		return;
	s->packets++;
	s->bytes += p->frame_len;
	s->new_flows += p->syn;
}

static __always_inline int verdict_of(__u32 reason)
{
	/* The redirect reasons as a mask: one shift and test, not six
	 * compares, on every packet transmitted. */
	const __u64 redirect = (1ULL << CNT_REDIRECT_L2) | (1ULL << CNT_REDIRECT_IPIP) |
			       (1ULL << CNT_REDIRECT_ICMP_ERROR) | (1ULL << CNT_REDIRECT_SNAT) |
			       (1ULL << CNT_REDIRECT_SNAT_REPLY) | (1ULL << CNT_REDIRECT_SNAT_ICMP);

	if (reason < CNT_DROP_FRAGMENT)
		return XDP_PASS;
	if (reason < CNT_TX_L2)
		return XDP_DROP;
	_Static_assert(XDP_REDIRECT == XDP_TX + 1, "XDP_REDIRECT follows XDP_TX");
	return XDP_TX + ((redirect >> (reason & 63)) & 1);
}

static __always_inline int filter_hit(__u32 folded)
{
	__u32 bit = vip_filter_bit(folded);
	__u32 word = bit >> 6;
	__u64 *w = bpf_map_lookup_elem(&vip_filter, &word);

	return w && (*w & (1ULL << (bit & 63)));
}

static __always_inline struct vip_addr_info *vip_addr_lookup(struct pkt *p)
{
	struct vip_addr a = {};

	__builtin_memcpy(a.addr, p->daddr, 16);
	a.family = p->family;
	return bpf_map_lookup_elem(&vip_addrs, &a);
}

/* addr_verdict picks the drop reason for a packet the program does not handle
 * when it is for a VIP address, and the pass reason when it is not. */
static __always_inline __u32 addr_verdict(struct pkt *p, __u32 drop, __u32 pass)
{
	return vip_addr_lookup(p) ? drop : pass;
}

/* service_indexed returns the service of the packet's destination if the
 * VIP index serves it (two inlined array reads), else NULL. */
static __always_inline struct vip_meta *service_indexed(struct pkt *p)
{
	__u32 folded = p->family == 4 ? p->daddr[0] : fold_addr6(p->daddr);
	__u32 idx = vip_index_of(folded, p->dport, p->proto);
	struct vip_slot *s;
	__u32 *slot;

	slot = ablated(ABLATE_INDEX) ? NULL : bpf_map_lookup_elem(&vip_index, &idx);
	if (slot && *slot) {
		s = bpf_map_lookup_elem(&vip_slots, slot);
		if (s && s->key.port == p->dport && s->key.proto == p->proto && s->key.family == p->family) {
			__u32 *a = (__u32 *)s->key.addr;

			/* An IPv4 key's other words are zero, as are the packet's. */
			if (a[0] == p->daddr[0] &&
			    (p->family == 4 || (a[1] == p->daddr[1] && a[2] == p->daddr[2] && a[3] == p->daddr[3])))
				return &s->meta;
		}
	}
	return NULL;
}

/* service_hashed returns the service of the packet's destination from the
 * vips hash (the reference, which the index caches): the exact key, else
 * the address's port-0 service, which serves every port. */
static __always_inline struct vip_meta *service_hashed(struct pkt *p)
{
	struct vip_key k = {};
	struct vip_meta *m;

	__builtin_memcpy(k.addr, p->daddr, 16);
	k.port = p->dport;
	k.proto = p->proto;
	k.family = p->family;
	m = bpf_map_lookup_elem(&vips, &k);
	if (m)
		return m;
	k.port = 0;
	return bpf_map_lookup_elem(&vips, &k);
}

static __always_inline struct vip_meta *service_lookup(struct pkt *p)
{
	struct vip_meta *m = service_indexed(p);

	return m ? m : service_hashed(p);
}

static __always_inline __u32 table_lookup(__u32 idx, __u32 half, __u32 size, __u32 hash)
{
	void *table = bpf_map_lookup_elem(&maglev_tables, &idx);
	struct maglev_slot *s;
	__u32 slot;

	if (!table || !size)
		return 0;
	slot = ((__u64)hash * size) >> 32; /* hash % size, without a division */
	if (ablated(ABLATE_TABLE))
		slot = 0;
	s = bpf_map_lookup_elem(table, &slot);
	return s ? s->id[half & 1] : 0;
}

/* A filter of two halves of u64 words (pin_filter, nat_filter): word i of
 * half h is at i * stride + h * hoff (pin_filter: the halves one after the
 * other; nat_filter: interleaved, so a new flow's two words share a cache
 * line). hf_has says whether bit is set in half (or the word cannot be
 * read); hf_mark sets it in both halves, after the entry it stands for is
 * in its table. Always a locked or, also when the bit reads set: a plain
 * load may be satisfied before the entry's publishing store is visible, and
 * user space may then clear the word and walk the table without seeing the
 * entry (xdp/pinfilter.go, clear); the locked or is ordered after that
 * store. */
static __always_inline int hf_has(void *map, __u32 stride, __u32 hoff, __u32 half, __u32 bit)
{
	__u32 word = (bit >> 6) * stride + (half & 1) * hoff;
	__u64 *w = bpf_map_lookup_elem(map, &word);

	return !w || (*w & (1ULL << (bit & 63)));
}

static __always_inline void hf_mark(void *map, __u32 stride, __u32 hoff, __u32 bit)
{
	__u64 mask = 1ULL << (bit & 63), *w;
	__u32 word = (bit >> 6) * stride;

	w = bpf_map_lookup_elem(map, &word);
	if (w)
		__sync_fetch_and_or(w, mask);
	word += hoff;
	w = bpf_map_lookup_elem(map, &word);
	if (w)
		__sync_fetch_and_or(w, mask);
}

/* pin_maybe says whether a flow of this hash may have a pin. */
static __always_inline int pin_maybe(__u32 hash)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings_map, &zero);

	return !s || hf_has(&pin_filter, 1, PIN_FILTER_WORDS, s->pin_filter, hash >> (32 - PIN_FILTER_SHIFT));
}

/* pin_mark sets a new pin's bit in both halves of the filter, once the pin
 * is in the flow table: Maintain relies on that order when it rebuilds a
 * half (xdp/pinfilter.go). */
static __always_inline void pin_mark(__u32 hash)
{
	hf_mark(&pin_filter, 1, PIN_FILTER_WORDS, hash >> (32 - PIN_FILTER_SHIFT));
}

/* Entry geometry of pins4 and pins6 in 32-bit words (flowtable.h). */
#define PIN4_GEOM ((struct ft_geom){ .kw = 3, .vw = 2, .stride = sizeof(struct pin4) / 4, .ways = PIN4_WAYS })
#define PIN6_GEOM ((struct ft_geom){ .kw = 9, .vw = 2, .stride = 14, .ways = 2 })
_Static_assert(sizeof(struct pin4_bucket) == 64, "a pins4 bucket is a cache line");
_Static_assert(__builtin_offsetof(struct pin4_bucket, e[1]) == 4 * (FT_HEAD_WORDS + sizeof(struct pin4) / 4),
	       "pins4 stride");
_Static_assert(sizeof(struct pin6_bucket) == 128, "a pins6 bucket is two cache lines");
_Static_assert(__builtin_offsetof(struct pin6_bucket, e1) == 4 * (FT_HEAD_WORDS + 14), "pins6 stride");
#define PIN_KW_MAX 9
#define PIN_TOUCH_TICKS (PIN_TOUCH_NS >> FT_TICK_SHIFT)

/* A flow's pin key and, once pin_find found it, its entry. */
struct pin_ref {
	struct ft_ref r;
	__u32 *val;     /* the entry's value: backend_id, seen */
	__u32 hash;     /* the key's hash in the flow table (not the flow hash) */
	__u32 key[PIN_KW_MAX];
};

/* pin_key fills in the flow's key as struct pin4 or pin6 holds it (the
 * ports as their word reads little-endian; the protocol is the tag) and its
 * table hash: the flow hash with PIN_HASH_SEED, whatever the VIP's seed. */
static __always_inline void pin_key(struct pkt *p, struct pin_ref *pr)
{
	__u32 ports = (__u32)p->sport | ((__u32)p->dport << 16);

	if (p->family == 4) {
		pr->key[0] = p->saddr[0];
		pr->key[1] = p->daddr[0];
		pr->key[2] = ports;
		pr->hash = flow_hash(p->saddr[0], p->daddr[0], p->sport, p->dport, p->proto, PIN_HASH_SEED);
		return;
	}
	__builtin_memcpy(&pr->key[0], p->saddr, 16);
	__builtin_memcpy(&pr->key[4], p->daddr, 16);
	pr->key[8] = ports;
	pr->hash = flow_hash(fold_addr6(p->saddr), fold_addr6(p->daddr), p->sport, p->dport, p->proto,
			     PIN_HASH_SEED);
}

/* pin_find looks the flow of pr's key up: 1 if it has a pin. */
static __always_inline int pin_find(struct pkt *p, struct pin_ref *pr)
{
	if (p->family == 4) {
		if (!ft_find(&pins4, cfg_pins4_mask, pr->hash, pr->key, p->proto, PIN4_GEOM, &pr->r))
			return 0;
		pr->val = pr->r.e + 1 + PIN4_GEOM.kw;
		return 1;
	}
	if (!ft_find(&pins6, cfg_pins6_mask, pr->hash, pr->key, p->proto, PIN6_GEOM, &pr->r))
		return 0;
	pr->val = pr->r.e + 1 + PIN6_GEOM.kw;
	return 1;
}

/* Each CPU's backoff from pins4 and pins6 (ft_backing_off: pins then fail
 * at once, counted the same). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_backoff);
} pin_backoff SEC(".maps");

/* ct_pin pins the flow to backend_id; it returns 0 if the flow is pinned
 * (by this packet or, moments before, by another CPU), -1 if it is not. A
 * dry run pins nothing and reports the pin as made. */
static __always_inline int ct_pin(struct pkt *p, __u32 backend_id, __u64 now, int replace, __u32 hash)
{
	__u32 val[2] = { backend_id, (__u32)(now >> FT_TICK_SHIFT) };
	__u32 zero = 0;
	struct ft_backoff *bo = bpf_map_lookup_elem(&pin_backoff, &zero);
	struct pin_ref pr;
	int err;

	if (cfg_dry_run) {
		struct dry_outcome *r = dry();

		if (r)
			r->pin = replace ? DRY_PIN_REPLACE : DRY_PIN_CREATE;
		return 0;
	}
	if (ft_backing_off(bo, now)) {
		count(CNT_EV_PIN_FULL);
		return -1;
	}

	pin_key(p, &pr);
	if (p->family == 4)
		err = ft_insert(&pins4, cfg_pins4_mask, pr.hash, pr.key, p->proto, val, PIN4_GEOM, replace);
	else
		err = ft_insert(&pins6, cfg_pins6_mask, pr.hash, pr.key, p->proto, val, PIN6_GEOM, replace);
	if (!err) {
		struct monitor_event *e = monitor_start(MON_PIN, CNT_EV_PIN_CREATED);

		if (e) {
			monitor_tuple(e, p);
			e->backend_id = backend_id;
			bpf_ringbuf_submit(e, 0);
		}
		pin_mark(hash);
		count(CNT_EV_PIN_CREATED);
		ft_room(bo);
	} else if (err == -FT_EBUSY) {
		/* Another CPU held the bucket that long (its vCPU may have
		 * been descheduled): no sign of a full table, counted apart
		 * and no backoff. If it was pinning this flow, the flow is
		 * pinned. */
		if (!pin_find(p, &pr)) {
			count(CNT_EV_PIN_BUSY);
			return -1;
		}
	} else if (err != -FT_EEXIST) { /* EEXIST: another CPU pinned it first */
		count(CNT_EV_PIN_FULL); /* the flow's buckets are full */
		ft_no_room(bo, now);
		return -1;
	}
	return 0;
}

/* backend_lookup returns the entry of backend id in use, or NULL. */
static __always_inline struct backend *backend_lookup(__u32 id)
{
	struct backend_slot *s = bpf_map_lookup_elem(&backends, &id);
	struct backend *b;

	if (!s)
		return NULL;
	b = &s->b[s->gen & 1];
	return (b->flags & BACKEND_F_VALID) ? b : NULL;
}

static __always_inline int backend_up(struct backend *b)
{
	return b && (b->flags & BACKEND_F_UP);
}

/* choose_backend returns the backend for the flow, or NULL. */
static __always_inline struct backend *choose_backend(struct pkt *p, struct vip_meta *m, __u32 hash,
						       __u32 *id)
{
	struct backend *b, *pb;
	struct pin_ref pr;
	__u32 cur, prev;
	int stale = 0;
	__u64 now;

	if (unlikely((m->flags & VIP_F_HAS_PINS) && pin_maybe(hash))) {
		pin_key(p, &pr);
		/* An entry that changed while it was read (deleted, reused) is
		 * no pin. */
		if (pin_find(p, &pr) && (*id = pr.val[0], ft_stable(&pr.r))) {
			b = backend_lookup(*id);
			if (backend_up(b)) {
				count(CNT_EV_PIN_HIT);
				if (!cfg_dry_run) {
					__u32 tick = bpf_ktime_get_coarse_ns() >> FT_TICK_SHIFT;

					if (tick - pr.val[1] >= PIN_TOUCH_TICKS) {
						pr.val[1] = tick;
						ft_touch(&pr.r);
					}
				}
				return b;
			}
			/* A pin to a removed or down backend is not used. A SYN
			 * starts a new connection: the stale pin is an earlier one's
			 * of the same addresses and ports, whose backend, back up,
			 * would take this one over. It goes (a dry run keeps it);
			 * if it changed meanwhile, the new pin replaces it. */
			count(CNT_EV_PIN_STALE);
			if (p->syn) {
				if (!cfg_dry_run && !ft_delete(&pr.r))
					stale = 1;
			} else {
				stale = 1;
			}
		}
	}

	cur = table_lookup(m->table_idx, m->table_half, m->table_size, hash);
	*id = cur;
	if (unlikely(m->transition_end) && (now = bpf_ktime_get_coarse_ns()) < m->transition_end) {
		prev = table_lookup(m->prev_idx, m->prev_half, m->prev_size, hash);
		if (prev && prev != cur) {
			/* The slot moved moments ago. A SYN starts a flow on the current
			 * table; anything else belongs to a flow that may have started on
			 * the previous backend: keep it there while it is up. Either way
			 * pin the flow so it stays put after the grace period. */
			if (!p->syn) {
				pb = backend_lookup(prev);
				if (backend_up(pb)) {
					*id = prev;
					if (!p->icmp_err)
						ct_pin(p, prev, now, stale, hash);
					return pb;
				}
			}
			if (!p->icmp_err && ct_pin(p, cur, now, stale, hash) && p->syn) {
				/* A SYN whose pin cannot be made goes where the next
				 * packets of its flow, finding no pin, will go: the
				 * previous backend while it is up. The handshake is
				 * never split. */
				pb = backend_lookup(prev);
				if (backend_up(pb)) {
					*id = prev;
					return pb;
				}
			}
		}
	}
	return backend_lookup(*id);
}

/* xmit_to sends the frame out of interface ifindex: XDP_TX (reason tx) when
 * it is the one the frame came in on, else a redirect (reason redirect). */
static __always_inline __u32 xmit_to(struct xdp_md *ctx, __u32 ifindex, __u32 tx, __u32 redirect)
{
	if (ifindex == ctx->ingress_ifindex)
		return tx;
	if (cfg_dry_run) /* what bpf_redirect_map would do, without doing it */
		return bpf_map_lookup_elem(&tx_ports, &ifindex) ? redirect : CNT_DROP_REDIRECT;
	if (bpf_redirect_map(&tx_ports, ifindex, XDP_DROP) != XDP_REDIRECT)
		return CNT_DROP_REDIRECT;
	return redirect;
}

static __always_inline __u32 xmit(struct xdp_md *ctx, struct backend *b, __u32 tx, __u32 redirect)
{
	return xmit_to(ctx, b->ifindex, tx, redirect);
}

/* copy_mac copies a MAC address in two loads and two stores. clang copies
 * a 6-byte __builtin_memcpy byte by byte for BPF, not knowing the alignment:
 * 12 loads and 12 stores per header rewritten, on the path of every packet
 * forwarded. The access may be misaligned (a source MAC at an even offset),
 * which the verifier allows where the CPU has efficient unaligned access
 * (x86-64, arm64) unless a program is loaded with BPF_F_STRICT_ALIGNMENT. */
static __always_inline void copy_mac(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

/* set_macs rewrites the frame's Ethernet addresses: -1 if it has no
 * Ethernet header. */
static __always_inline int set_macs(struct xdp_md *ctx, const __u8 *dmac, const __u8 *smac)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	copy_mac(eth->h_dest, dmac);
	copy_mac(eth->h_source, smac);
	return 0;
}

static __always_inline __u32 fwd_l2(struct xdp_md *ctx, struct pkt *p, struct backend *b)
{
	if (unlikely(set_macs(ctx, b->dmac, b->smac)))
		return CNT_DROP_ADJUST;
	if (unlikely(p->icmp_err))
		return xmit(ctx, b, CNT_TX_ICMP_ERROR, CNT_REDIRECT_ICMP_ERROR);
	return xmit(ctx, b, CNT_TX_L2, CNT_REDIRECT_L2);
}

static __always_inline __u16 ipv4_csum(const void *hdr)
{
	const __u32 *w = hdr;
	__u64 sum = 0;

	/* 32-bit words: their sum folds to the 16-bit words' (2^16 is 1 modulo
	 * 0xffff), in half the additions. */
#pragma unroll
	for (int i = 0; i < IPV4_HLEN / 4; i++)
		sum += w[i];
	return csum_fold(sum);
}

/* copy_words copies n bytes (a multiple of 4) in 32-bit loads and stores,
 * for the same reason as copy_mac: a __builtin_memcpy into the packet is
 * done byte by byte. */
static __always_inline void copy_words(void *dst, const void *src, const int n)
{
#pragma unroll
	for (int i = 0; i < n / 4; i++)
		((__u32 *)dst)[i] = ((const __u32 *)src)[i];
}

/* set_l2 writes the Ethernet header (and the VLAN tag the packet came with,
 * saved in tag) at data, the start of a frame known to hold l2 bytes. */
static __always_inline void set_l2(void *data, const __u8 *dmac, const __u8 *smac, struct vlan_hdr *tag,
				   __u16 proto, const int l2)
{
	struct ethhdr *eth = data;
	struct vlan_hdr *v = (void *)(eth + 1);

	copy_mac(eth->h_dest, dmac);
	copy_mac(eth->h_source, smac);
	if (l2 == ETH_HLEN) {
		eth->h_proto = bpf_htons(proto);
		return;
	}
	eth->h_proto = tag->tci;
	v->tci = tag->proto;
	v->proto = bpf_htons(proto);
}

/* write_l2 is set_l2 at the start of the frame, checking its length. (Its
 * own copy of set_l2's stores, not a call: that change alone made clang lay
 * the program out so that established_ipip cost 8 ns more, beside this
 * build: bench.md, "Round four".) */
static __always_inline int write_l2(struct xdp_md *ctx, const __u8 *dmac, const __u8 *smac,
				    struct vlan_hdr *tag, __u16 proto, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vlan_hdr *v;

	if (data + l2 > data_end)
		return -1;
	copy_mac(eth->h_dest, dmac);
	copy_mac(eth->h_source, smac);
	if (l2 == ETH_HLEN) {
		eth->h_proto = bpf_htons(proto);
		return 0;
	}
	v = (void *)(eth + 1);
	eth->h_proto = tag->tci; /* the TPID the frame came with, saved there */
	v->tci = tag->proto;
	v->proto = bpf_htons(proto);
	return 0;
}

/* save_tag copies the frame's TPID and TCI for set_l2 (TPID into tci, TCI
 * into proto). */
static __always_inline int save_tag(struct xdp_md *ctx, struct vlan_hdr *tag, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vlan_hdr *v = (void *)(eth + 1);

	if (l2 == ETH_HLEN)
		return 0;
	if ((void *)(v + 1) > data_end)
		return -1;
	tag->tci = eth->h_proto;
	tag->proto = v->tci;
	return 0;
}

/* TTL_SPAN is how much of an IP header lower_ttl reads and writes: up to
 * the IPv4 checksum (the IPv6 hop limit is within). */
#define TTL_SPAN 12

/* lower_ttl lowers the TTL or hop limit of the IP header at ip, known to be
 * in the frame, as a router does, so that a loop of appliances forwarding
 * to each other ends. The IPv4 checksum is updated incrementally (RFC 1624). */
static __always_inline void lower_ttl(void *ip, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip4 = ip;
		__u32 check = ip4->check;

		check += bpf_htons(0x0100);
		ip4->check = (__u16)(check + (check >= 0xffff));
		ip4->ttl--;
		return;
	}
	((struct ipv6hdr *)ip)->hop_limit--;
}

/* encap puts the packet in an outer IPv4 or IPv6 header to b, after the
 * L2 header (l2 bytes, with the VLAN tag it came with), and lowers its own
 * TTL (fwd_ipip has checked it is above 1), once the frame has grown: one
 * check of its length covers both headers. An outer IPv4 header is written
 * in 32-bit words computed in registers, its checksum summed from the same
 * words. */
static __always_inline __u32 encap(struct xdp_md *ctx, struct pkt *p, struct backend *b, __u32 hash,
				   const int l2)
{
	__u32 zero = 0, bits;
	struct settings *s = bpf_map_lookup_elem(&settings_map, &zero);
	struct vlan_hdr tag = {};
	void *data, *data_end;
	__u8 inner = p->family == 4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;

	if (unlikely(!s))
		return CNT_DROP_ADJUST;
	if (unlikely(save_tag(ctx, &tag, l2)))
		return CNT_DROP_ADJUST;

	if (b->family == 4) {
		__u32 saddr = s->encap_src4, w0, w1, w2, daddr;
		__u64 sum;

		if (unlikely(!saddr))
			return CNT_DROP_NO_ENCAP_SOURCE;
		bits = s->encap_src4_spread;
		if (bits && bits <= 16)
			saddr = bpf_htonl((bpf_ntohl(saddr) & ~((1U << bits) - 1)) | (hash & ((1U << bits) - 1)));
		__builtin_memcpy(&daddr, b->addr, 4);
		/* The header's words as they lie in memory (little-endian
		 * loads of the network-order bytes): version and IHL, TOS,
		 * total length; ID 0 and DF; TTL, protocol and checksum. */
		w0 = 0x45 | (__u32)p->tos << 8 | (__u32)bpf_htons(p->l3_len + IPV4_HLEN) << 16;
		w1 = (__u32)bpf_htons(IP_DF) << 16;
		w2 = cfg_ttl | (__u32)inner << 8;
		sum = (__u64)w0 + w1 + w2 + saddr + daddr;
		w2 |= (__u32)csum_fold(sum) << 16;

		if (unlikely(bpf_xdp_adjust_head(ctx, -(int)IPV4_HLEN)))
			return CNT_DROP_ADJUST;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (unlikely(data + l2 + IPV4_HLEN + TTL_SPAN > data_end))
			return CNT_DROP_ADJUST;
		set_l2(data, b->dmac, b->smac, &tag, ETH_P_IP, l2);
		__u32 *o = data + l2;
		o[0] = w0;
		o[1] = w1;
		o[2] = w2;
		o[3] = saddr;
		o[4] = daddr;
		lower_ttl(data + l2 + IPV4_HLEN, p->family);
	} else {
		struct ipv6hdr o = {
			.version = 6, .priority = p->tos >> 4,
			.payload_len = bpf_htons(p->l3_len), .nexthdr = inner, .hop_limit = cfg_ttl,
		};
		__u32 w3;
		__u64 *src6 = (__u64 *)s->encap_src6;

		if (unlikely(!src6[0] && !src6[1]))
			return CNT_DROP_NO_ENCAP_SOURCE;
		o.flow_lbl[0] = ((p->tos & 0xf) << 4) | ((hash >> 16) & 0xf);
		o.flow_lbl[1] = hash >> 8;
		o.flow_lbl[2] = hash;
		__builtin_memcpy(&o.saddr, s->encap_src6, 16);
		bits = s->encap_src6_spread;
		if (bits && bits <= 32) {
			__u32 mask = bits == 32 ? 0xffffffff : (1U << bits) - 1;

			w3 = bpf_ntohl(o.saddr.in6_u.u6_addr32[3]);
			o.saddr.in6_u.u6_addr32[3] = bpf_htonl((w3 & ~mask) | (hash & mask));
		}
		__builtin_memcpy(&o.daddr, b->addr, 16);

		if (unlikely(bpf_xdp_adjust_head(ctx, -(int)IPV6_HLEN)))
			return CNT_DROP_ADJUST;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (unlikely(data + l2 + IPV6_HLEN + TTL_SPAN > data_end))
			return CNT_DROP_ADJUST;
		set_l2(data, b->dmac, b->smac, &tag, ETH_P_IPV6, l2);
		copy_words(data + l2, &o, IPV6_HLEN);
		lower_ttl(data + l2 + IPV6_HLEN, p->family);
	}
	if (unlikely(p->icmp_err))
		return xmit(ctx, b, CNT_TX_ICMP_ERROR, CNT_REDIRECT_ICMP_ERROR);
	return xmit(ctx, b, CNT_TX_IPIP, CNT_REDIRECT_IPIP);
}

/* icmp_sum adds the len bytes at offset off of the frame (an ICMP message,
 * at most ICMP_HLEN + ICMP6_QUOTE long) to sum, as 16-bit words in memory
 * order; an odd last byte counts as a word padded with zero. A global BPF
 * function: its unrolled loop is verified and stored once, where inlined it
 * took about 5,900 of the program's instructions (a copy per call site and
 * header length), and the program's branches reach at most 32,767
 * instructions. */
__attribute__((noinline)) __u64 icmp_sum(struct xdp_md *ctx, __u32 off, __u32 len, __u64 sum)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 *w;

	if (off > ETH_HLEN + VLAN_HLEN + IPV6_HLEN)
		return sum;
	w = data + off;
#pragma unroll
	for (int i = 0; i < (ICMP_HLEN + ICMP6_QUOTE) / 2; i++) {
		if ((__u32)(2 * i + 2) > len || (void *)(w + i + 1) > data_end)
			break;
		sum += w[i];
	}
	if (len & 1 && len <= ICMP_HLEN + ICMP6_QUOTE) {
		__u32 n = len - 1;
		__u8 *last;

		/* The last byte's offset, not the end's minus one: the verifier
		 * refuses a read before a variable packet pointer. */
		asm volatile("" : "+r"(n));
		last = (__u8 *)w + (n & 63); /* n < ICMP_HLEN + ICMP6_QUOTE = 56 */
		if ((void *)(last + 1) <= data_end)
			sum += *last;
	}
	return sum;
}

/* icmp_back answers the client with an ICMP error quoting the start of its
 * packet, sent back out of the interface it came in on: "fragmentation
 * needed" / "packet too big" (too_big, rest is the MTU) or "time exceeded"
 * (rest 0). The VIP is its source. */
static __always_inline __u32 icmp_back(struct xdp_md *ctx, struct pkt *p, int too_big, __u32 mtu, const int l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vlan_hdr tag = {};
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u64 sum = 0;
	int hdr, quote;

	if ((void *)(eth + 1) > data_end)
		return CNT_DROP_ADJUST;
	__builtin_memcpy(dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);
	if (save_tag(ctx, &tag, l2))
		return CNT_DROP_ADJUST;

	if (p->family == 4) {
		hdr = IPV4_HLEN + ICMP_HLEN;
		quote = ICMP4_QUOTE;
	} else {
		hdr = IPV6_HLEN + ICMP_HLEN;
		quote = ICMP6_QUOTE;
	}
	/* The quote is the original IP header and 8 bytes, or the whole packet
	 * when it is shorter (the last fragment of a datagram can be). */
	if (p->l3_len < (__u32)quote)
		quote = p->l3_len;
	if (bpf_xdp_adjust_head(ctx, -hdr))
		return CNT_DROP_ADJUST;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (bpf_xdp_adjust_tail(ctx, (int)(l2 + hdr + quote) - (int)frame_bytes(data, data_end)))
		return CNT_DROP_ADJUST;
	if (write_l2(ctx, dmac, smac, &tag, p->family == 4 ? ETH_P_IP : ETH_P_IPV6, l2))
		return CNT_DROP_ADJUST;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	if (p->family == 4) {
		struct iphdr *ip = data + l2;
		struct icmp_common *ic = data + l2 + IPV4_HLEN;

		if (data + l2 + IPV4_HLEN + ICMP_HLEN > data_end)
			return CNT_DROP_ADJUST;
		struct iphdr o = {
			.version = 4, .ihl = 5, .tos = 0xc0,
			.tot_len = bpf_htons(IPV4_HLEN + ICMP_HLEN + quote),
			.ttl = cfg_ttl, .protocol = IPPROTO_ICMP_,
			.saddr = p->daddr[0], .daddr = p->saddr[0],
		};
		o.check = ipv4_csum(&o);
		__builtin_memcpy(ip, &o, IPV4_HLEN);
		ic->type = too_big ? ICMP_DEST_UNREACH : ICMP_TIME_EXCEEDED;
		ic->code = too_big ? ICMP_FRAG_NEEDED : 0;
		ic->checksum = 0;
		ic->rest = bpf_htonl(mtu & 0xffff);
		sum = icmp_sum(ctx, l2 + IPV4_HLEN, ICMP_HLEN + quote, 0);
		ic->checksum = csum_fold(sum);
	} else {
		struct ipv6hdr *ip6 = data + l2;
		struct icmp_common *ic = data + l2 + IPV6_HLEN;
		__u32 len = ICMP_HLEN + quote;

		if (data + l2 + IPV6_HLEN + ICMP_HLEN > data_end)
			return CNT_DROP_ADJUST;
		struct ipv6hdr o = {
			.version = 6, .payload_len = bpf_htons(len),
			.nexthdr = IPPROTO_ICMPV6_, .hop_limit = cfg_ttl,
		};
		__builtin_memcpy(&o.saddr, p->daddr, 16);
		__builtin_memcpy(&o.daddr, p->saddr, 16);
		__builtin_memcpy(ip6, &o, IPV6_HLEN);
		ic->type = too_big ? ICMPV6_PKT_TOOBIG : ICMPV6_TIME_EXCEED;
		ic->code = 0;
		ic->checksum = 0;
		ic->rest = bpf_htonl(mtu);
#pragma unroll
		for (int i = 0; i < 4; i++)
			sum += (__u64)p->saddr[i] + p->daddr[i];
		sum += (__u64)bpf_htonl(len) + bpf_htonl(IPPROTO_ICMPV6_);
		sum = icmp_sum(ctx, l2 + IPV6_HLEN, len, sum);
		ic->checksum = csum_fold(sum);
	}
	return too_big ? CNT_TX_ICMP_TOO_BIG : CNT_TX_ICMP_TIME_EXCEEDED;
}

static __always_inline __u32 fwd_ipip(struct xdp_md *ctx, struct pkt *p, struct backend *b, __u32 hash)
{
	__u32 outer = b->family == 4 ? IPV4_HLEN : IPV6_HLEN;

	if (unlikely(b->mtu && p->l3_len + outer > b->mtu)) {
		if (p->icmp_err)
			return CNT_DROP_ICMP;
		if (!p->df)
			return CNT_DROP_TOO_BIG_NO_DF;
		if (p->vlan)
			return icmp_back(ctx, p, 1, b->mtu - outer, ETH_HLEN + VLAN_HLEN);
		return icmp_back(ctx, p, 1, b->mtu - outer, ETH_HLEN);
	}
	/* Encapsulation routes the packet: a TTL that would reach 0 ends here
	 * (a loop of appliances, or a traceroute). No ICMP about ICMP errors. */
	if (unlikely(p->ttl <= 1)) {
		if (p->icmp_err)
			return CNT_DROP_ICMP;
		if (p->vlan)
			return icmp_back(ctx, p, 0, 0, ETH_HLEN + VLAN_HLEN);
		return icmp_back(ctx, p, 0, 0, ETH_HLEN);
	}
	if (p->vlan)
		return encap(ctx, p, b, hash, ETH_HLEN + VLAN_HLEN);
	return encap(ctx, p, b, hash, ETH_HLEN);
}

static __always_inline void frag_key_of(struct frag_key *k, struct pkt *p)
{
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
	k->id = p->frag_id;
	k->proto = p->proto;
	k->family = p->family;
}

/* frag_remember notes where a first fragment went, for the rest. */
static __always_inline void frag_remember(struct pkt *p, __u32 backend_id, __u32 hash)
{
	struct frag_key k = {};
	struct frag_value v = {
		.backend_id = backend_id, .hash = hash, .sport = p->sport, .dport = p->dport,
		.seen = bpf_ktime_get_coarse_ns(),
	};

	if (cfg_dry_run)
		return;
	frag_key_of(&k, p);
	bpf_map_update_elem(&frags, &k, &v, BPF_ANY);
	count(CNT_EV_FRAGMENT_FIRST);
}

/* SNAT: its state and translation (nat.h), on the helpers above. */
#include "nat.h"

/* lb_send sends the packet to backend b (id) by the VIP's mode. */
static __always_inline __u32 lb_send(struct xdp_md *ctx, struct pkt *p, struct vip_meta *m, struct backend *b,
				     __u32 id, __u32 hash)
{
	__u8 mode = m->mode;

	if (cfg_dry_run) {
		struct dry_outcome *r = dry();

		if (r)
			r->backend_id = id;
	}
	count_lb(&backend_stats, id, p);
	if (p->syn)
		count(CNT_EV_NEW_FLOW);
	p->backend_id = id;

	if (mode == MODE_DSR_L2)
		return fwd_l2(ctx, p, b);
	if (mode == MODE_DSR_IPIP)
		return fwd_ipip(ctx, p, b, hash);
	return CNT_DROP_UNSUPPORTED_MODE;
}

static __always_inline __u32 lb_forward(struct xdp_md *ctx, struct pkt *p, struct vip_meta *m)
{
	struct backend *b;
	__u32 hash, id = 0;

	if (m->mode == MODE_SNAT) {
		count_lb(&vip_stats, m->vip_id, p);
		/* A copy of the translation for IPv4, which knows its family:
		 * since both families share this function, the one copy
		 * tested the family at every step (snat_established +11 ns). */
		if (p->family == 4)
			return nat_forward4(ctx, p, m);
		return nat_forward(ctx, p, m);
	}
	if (ablated(ABLATE_HASH))
		hash = 0x9E3779B1u;
	else if (p->family == 4)
		hash = flow_hash(p->saddr[0], p->daddr[0], p->sport, p->dport, p->proto, m->hash_seed);
	else
		hash = flow_hash(fold_addr6(p->saddr), fold_addr6(p->daddr), p->sport, p->dport, p->proto,
				 m->hash_seed);

	count_lb(&vip_stats, m->vip_id, p);
	b = choose_backend(p, m, hash, &id);
	if (unlikely(!b))
		return CNT_DROP_NO_BACKEND;
	if (unlikely(p->frag_first))
		frag_remember(p, id, hash);
	return lb_send(ctx, p, m, b, id, hash);
}

/* frag_follow sends a later fragment (no ports) where the first fragment of
 * its datagram went. One whose first fragment was not seen (lost, reordered,
 * or more than FRAG_TIMEOUT_NS ago) is dropped when it is for a VIP
 * address: sending it anywhere else would be a guess. */
static __always_inline __u32 frag_follow(struct xdp_md *ctx, struct pkt *p)
{
	struct frag_key k = {};
	struct frag_value *f;
	struct vip_meta *m;
	struct backend *b;

	frag_key_of(&k, p);
	f = bpf_map_lookup_elem(&frags, &k);
	if (!f || f->seen + FRAG_TIMEOUT_NS < bpf_ktime_get_coarse_ns())
		return addr_verdict(p, CNT_DROP_FRAGMENT_UNKNOWN, CNT_PASS_NOT_VIP);
	p->sport = f->sport;
	p->dport = f->dport;
	m = service_lookup(p);
	if (unlikely(!m))
		return addr_verdict(p, CNT_DROP_NO_SERVICE, CNT_PASS_NOT_VIP);
	count_lb(&vip_stats, m->vip_id, p);
	b = backend_lookup(f->backend_id);
	if (!backend_up(b))
		return CNT_DROP_NO_BACKEND;
	count(CNT_EV_FRAGMENT_FOLLOWED);
	return lb_send(ctx, p, m, b, f->backend_id, f->hash);
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 t[ETH_ALEN];

	__builtin_memcpy(t, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, t, ETH_ALEN);
}

static __always_inline void echo_reply_type(struct icmp_common *ic, __u8 type)
{
	__u16 old = *(__u16 *)ic;

	ic->type = type;
	ic->checksum = csum_replace2(ic->checksum, old, *(__u16 *)ic);
}

/* ICMP to a VIP address (ic parsed, p describes the packet). Echo requests are
 * answered; errors quoting a TCP/UDP flow of a VIP go to that flow's backend;
 * everything else is dropped. */
static __always_inline __u32 icmp_to_vip(struct xdp_md *ctx, struct cursor *c, struct pkt *p,
					 struct icmp_common *ic, struct vip_addr_info *info, __u32 l4_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vip_meta *m;
	struct pkt q = {};
	__be16 *ports;
	__u32 r;

	if ((void *)(eth + 1) > data_end)
		return CNT_DROP_TRUNCATED;

	if (p->family == 4) {
		struct iphdr *ip = data + (p->vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN);

		if ((void *)(ip + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		if (ic->type == ICMP_ECHO) {
			if (!cfg_icmp_echo || !(info->flags & ADDR_F_ECHO))
				return CNT_DROP_ICMP;
			swap_macs(eth);
			ip->daddr = p->saddr[0];
			ip->saddr = p->daddr[0];
			ip->ttl = cfg_ttl;
			ip->check = 0;
			ip->check = ipv4_csum(ip);
			echo_reply_type(ic, ICMP_ECHOREPLY);
			return CNT_TX_ICMP_ECHO;
		}
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED &&
		    ic->type != ICMP_PARAMETERPROB)
			return CNT_DROP_ICMP;
		struct iphdr *in = c->pos;

		/* The quote ends with the ICMP message (l4_len), not the frame. */
		if ((void *)(in + 1) > c->end || l4_len < ICMP_HLEN + IPV4_HLEN)
			return CNT_DROP_TRUNCATED;
		if (in->version != 4 || in->ihl != 5 || in->saddr != p->daddr[0] ||
		    (in->protocol != IPPROTO_TCP_ && in->protocol != IPPROTO_UDP_))
			return CNT_DROP_ICMP;
		ports = (void *)(in + 1);
		if ((void *)(ports + 2) > c->end || l4_len < ICMP_HLEN + IPV4_HLEN + 4)
			return CNT_DROP_TRUNCATED;
		q.saddr[0] = in->daddr;
		q.daddr[0] = in->saddr;
		q.proto = in->protocol;
	} else {
		struct ipv6hdr *ip6 = data + (p->vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN);

		if ((void *)(ip6 + 1) > data_end)
			return CNT_DROP_TRUNCATED;
		if (ic->type == ICMPV6_ECHO_REQUEST) {
			if (!cfg_icmp_echo || !(info->flags & ADDR_F_ECHO))
				return CNT_DROP_ICMP;
			swap_macs(eth);
			__builtin_memcpy(&ip6->daddr, p->saddr, 16);
			__builtin_memcpy(&ip6->saddr, p->daddr, 16);
			ip6->hop_limit = cfg_ttl;
			/* Swapping source and destination leaves the pseudo-header sum as it was. */
			echo_reply_type(ic, ICMPV6_ECHO_REPLY);
			return CNT_TX_ICMP_ECHO;
		}
		if (ic->type < ICMPV6_DEST_UNREACH || ic->type > ICMPV6_PARAMPROB)
			return CNT_DROP_ICMP;
		struct ipv6hdr *in = c->pos;

		if ((void *)(in + 1) > c->end || l4_len < ICMP_HLEN + IPV6_HLEN)
			return CNT_DROP_TRUNCATED;
		if (in->version != 6 || __builtin_memcmp(&in->saddr, p->daddr, 16) != 0 ||
		    (in->nexthdr != IPPROTO_TCP_ && in->nexthdr != IPPROTO_UDP_))
			return CNT_DROP_ICMP;
		ports = (void *)(in + 1);
		if ((void *)(ports + 2) > c->end || l4_len < ICMP_HLEN + IPV6_HLEN + 4)
			return CNT_DROP_TRUNCATED;
		__builtin_memcpy(q.saddr, &in->daddr, 16);
		__builtin_memcpy(q.daddr, &in->saddr, 16);
		q.proto = in->nexthdr;
	}
	/* The quoted packet went from the VIP to the client: its ports reversed
	 * are the flow's. */
	q.sport = ports[1];
	q.dport = ports[0];
	q.family = p->family;
	q.l3_len = p->l3_len;
	q.frame_len = p->frame_len;
	q.tos = p->tos;
	q.ttl = p->ttl;
	q.df = 1;
	q.vlan = p->vlan;
	q.icmp_err = 1;
	m = service_lookup(&q);
	if (!m)
		return CNT_DROP_ICMP;
	r = lb_forward(ctx, &q, m);
	/* The monitor reports the quoted flow and the backend it went to. */
	*p = q;
	return r;
}

/* process_l4 handles a packet whose destination passed the VIP filter, after
 * its IP header was found sound. l4_len is the transport bytes the IP header
 * declares. */
static __always_inline __u32 process_l4(struct xdp_md *ctx, struct cursor *c, struct pkt *p, __u32 l4_len)
{
	struct vip_addr_info *info;
	struct icmp_common *ic;
	struct tcphdr *tcph;
	struct udphdr *udph;
	struct vip_meta *m;
	int r;

	if (p->proto == IPPROTO_TCP_) {
		r = parse_tcp(c, &tcph, l4_len);
		if (unlikely(r == -1))
			return addr_verdict(p, CNT_DROP_TRUNCATED, CNT_PASS_NOT_VIP);
		if (unlikely(r < 0))
			return addr_verdict(p, CNT_DROP_BAD_L4, CNT_PASS_NOT_VIP);
		p->sport = tcph->source;
		p->dport = tcph->dest;
		p->syn = tcph->syn && !tcph->ack;
	} else if (p->proto == IPPROTO_UDP_) {
		if (unlikely(parse_udp(c, &udph, l4_len)))
			return addr_verdict(p, CNT_DROP_TRUNCATED, CNT_PASS_NOT_VIP);
		p->sport = udph->source;
		p->dport = udph->dest;
	} else if ((p->family == 4 && p->proto == IPPROTO_ICMP_) ||
		   (p->family == 6 && p->proto == IPPROTO_ICMPV6_)) {
		/* An ICMP error about a NAT flow goes to its client, also when
		 * its SNAT source is a VIP address. */
		if (nat_is_source(nat_cfg(), p)) {
			__u32 reason = nat_icmp(ctx, p, l4_len);

			if (reason)
				return reason;
		}
		info = vip_addr_lookup(p);
		if (!info)
			return CNT_PASS_NOT_VIP;
		r = parse_icmp(c, &ic, l4_len);
		if (r < 0)
			return CNT_DROP_TRUNCATED;
		/* Neighbour discovery (router/neighbour solicitations and
		 * advertisements, redirects) is the announcer's. */
		if (p->family == 6 && r >= 133 && r <= 137)
			return CNT_PASS_NDP;
		return icmp_to_vip(ctx, c, p, ic, info, l4_len);
	} else {
		return addr_verdict(p, CNT_DROP_PROTOCOL, CNT_PASS_NOT_VIP);
	}

	/* A reply to a SNAT source:port is translated back to its client; one
	 * of no NAT flow may be the host's own traffic (or for a VIP at the
	 * same address). A service the index serves, at an address that is no
	 * SNAT source (no VIP_F_SNAT_SOURCE, which user space keeps in step
	 * with the sources), has no replies to look for: its packets skip the
	 * check. Others look first, and only then in the vips hash (a reply
	 * finds no service: it would pay two hash lookups for nothing). */
	m = service_indexed(p);
	r = 0;
	if (!m || (m->flags & VIP_F_SNAT_SOURCE)) {
		r = ablated(ABLATE_SNAT) ? 0 : nat_is_source(nat_cfg(), p);
		if (r) {
			__u32 reason = nat_reply(ctx, p);

			if (reason)
				return reason;
		}
		if (!m)
			m = service_hashed(p);
	}
	if (unlikely(!m))
		return addr_verdict(p, CNT_DROP_NO_SERVICE, r ? CNT_PASS_NAT_NO_FLOW : CNT_PASS_NOT_VIP);
	return lb_forward(ctx, p, m);
}

/* process_ipv4 and process_ipv6 return L4_NEXT, not a verdict's reason, when
 * the packet goes on to process_l4 (its transport bytes in l4_len): one copy
 * of process_l4 serves both families. Called at the end of each family's
 * path, it was inlined twice, which made the program twice as long. */
#define L4_NEXT COUNTER_MAX

static __always_inline __u32 process_ipv4(struct xdp_md *ctx, struct cursor *c, struct pkt *p, __u32 *l4_len)
{
	struct iphdr *iph;
	__u32 ihl, tot;
	int proto;

	proto = parse_ipv4(c, &iph);
	if (unlikely(proto < 0))
		return CNT_PASS_TRUNCATED;
	if (!filter_hit(iph->daddr))
		return CNT_PASS_NOT_VIP;
	p->family = 4;
	p->saddr[0] = iph->saddr;
	p->daddr[0] = iph->daddr;

	ihl = iph->ihl * 4;
	tot = bpf_ntohs(iph->tot_len);
	if (unlikely(iph->version != 4 || ihl < IPV4_HLEN || tot < ihl || (void *)iph + tot > c->end))
		return addr_verdict(p, CNT_DROP_BAD_L3, CNT_PASS_BAD_L3);
	/* Keep the compiler from dropping later bounds checks it can derive from
	 * this one: the verifier cannot. */
	barrier_var(tot);
	/* Not handled on purpose: options (rare, and they would move the
	 * transport header). */
	if (unlikely(ihl != IPV4_HLEN))
		return addr_verdict(p, CNT_DROP_IP_OPTIONS, CNT_PASS_NOT_VIP);

	p->proto = proto;
	p->l3_len = tot;
	p->tos = iph->tos;
	p->ttl = iph->ttl;
	p->df = !!(iph->frag_off & bpf_htons(IP_DF));
	if (unlikely(iph->frag_off & bpf_htons(IP_MF | IP_OFFMASK))) {
		/* TCP and UDP fragments: the first is balanced by its ports, the
		 * others follow it. Fragmented ICMP is not handled. */
		if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
			return addr_verdict(p, CNT_DROP_FRAGMENT, CNT_PASS_NOT_VIP);
		p->frag_id = iph->id;
		if (iph->frag_off & bpf_htons(IP_OFFMASK))
			return frag_follow(ctx, p);
		p->frag_first = 1;
	}
	*l4_len = tot - IPV4_HLEN;
	return L4_NEXT;
}

/* ipv6_ext says whether proto is an IPv6 extension header. */
static __always_inline int ipv6_ext(int proto)
{
	switch (proto) {
	case IPPROTO_FRAGMENT_:
	case IPPROTO_HOPOPTS_:
	case IPPROTO_ROUTING_:
	case IPPROTO_DSTOPTS_:
	case 51:  /* AH */
	case 135: /* Mobility */
	case 139: /* HIP */
	case 140: /* Shim6 */
		return 1;
	}
	return 0;
}

static __always_inline __u32 process_ipv6(struct xdp_md *ctx, struct cursor *c, struct pkt *p, __u32 *l4_len)
{
	struct ipv6hdr *ip6h;
	__u32 plen;
	int proto;

	proto = parse_ipv6(c, &ip6h);
	if (unlikely(proto < 0))
		return CNT_PASS_TRUNCATED;
	__builtin_memcpy(p->daddr, &ip6h->daddr, 16);
	if (!filter_hit(fold_addr6(p->daddr)))
		return CNT_PASS_NOT_VIP;
	p->family = 6;
	__builtin_memcpy(p->saddr, &ip6h->saddr, 16);

	plen = bpf_ntohs(ip6h->payload_len);
	if (unlikely(ip6h->version != 6 || (void *)(ip6h + 1) + plen > c->end))
		return addr_verdict(p, CNT_DROP_BAD_L3, CNT_PASS_BAD_L3);
	barrier_var(plen);
	p->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
	p->ttl = ip6h->hop_limit;
	p->l3_len = IPV6_HLEN + plen;
	p->df = 1;
	/* A fragment header right after the IPv6 header: TCP and UDP fragments
	 * are handled as IPv4's (the first balanced by its ports, the others
	 * follow); an atomic fragment (offset 0, no more) is an ordinary
	 * packet. */
	if (unlikely(proto == IPPROTO_FRAGMENT_)) {
		struct frag_hdr *fh;
		__u16 off;

		if (parse_frag6(c, &fh) || plen < sizeof(*fh))
			return addr_verdict(p, CNT_DROP_TRUNCATED, CNT_PASS_NOT_VIP);
		proto = fh->nexthdr;
		plen -= sizeof(*fh);
		if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
			return addr_verdict(p, CNT_DROP_FRAGMENT, CNT_PASS_NOT_VIP);
		p->proto = proto;
		p->frag_id = fh->identification;
		off = bpf_ntohs(fh->frag_off);
		if (off & IP6_OFFMASK)
			return frag_follow(ctx, p);
		p->frag_first = !!(off & IP6_MF);
	}
	/* Not handled on purpose: other extension headers (rare on the
	 * Internet, and a chain to walk). */
	if (unlikely(ipv6_ext(proto)))
		return addr_verdict(p, CNT_DROP_IPV6_EXT, CNT_PASS_NOT_VIP);

	p->proto = proto;
	*l4_len = plen;
	return L4_NEXT;
}

static __always_inline __u32 lb_process(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	struct ethhdr *eth;
	int proto, vlan;
	__u32 r, l4_len = 0;

	proto = parse_eth(&c, &eth, &vlan);
	if (unlikely(proto < 0))
		return proto == -2 ? CNT_PASS_VLAN_STACKED : CNT_PASS_TRUNCATED;
	if (unlikely(vlan))
		count(CNT_EV_VLAN);
	p->vlan = vlan;
	p->frame_len = frame_bytes(data, data_end);
	if (proto == ETH_P_IP)
		r = process_ipv4(ctx, &c, p, &l4_len);
	else if (proto == ETH_P_IPV6)
		r = process_ipv6(ctx, &c, p, &l4_len);
	else
		return CNT_PASS_NOT_IP;
	if (r != L4_NEXT)
		return r;
	return process_l4(ctx, &c, p, l4_len);
}

static __always_inline int lb_main(struct xdp_md *ctx)
{
	struct pkt p = {};
	__u32 reason = lb_process(ctx, &p);

	if (cfg_dry_run) {
		struct dry_outcome *r = dry();

		if (r) {
			r->reason = reason;
			r->done = 1;
		}
	}
	count(reason);
	if (!cfg_dry_run && !ablated(ABLATE_MONITOR) && unlikely(is_monitored(reason)))
		monitor_verdict(ctx, &p, reason);
	return verdict_of(reason);
}

#endif
