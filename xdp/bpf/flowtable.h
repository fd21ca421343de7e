/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The flow table: a hash table in an mmapable BPF array of cache-line-sized
 * buckets, so that a lookup, hit or miss, reads one bucket (one cache miss)
 * where a BPF hash map reads a bucket and then an element. Written once for
 * every kind of entry (the pins of lb.h, the NAT entries of nat.h): the
 * functions below take the entry's geometry as constants and are inlined
 * into per-type wrappers. The Go side is xdp/flowtable.go; the layout and
 * the protocol are described in docs/architecture.md ("The flow table").
 *
 * Layout. Bucket i of a table of 2^k buckets (mask = 2^k - 1) is the array
 * element i: a struct ft_head, then FT ways (entries) of EW 32-bit words.
 * Word 0 of an entry is its state word; the KW words after it are the key;
 * the rest is the value. A key lives in its home bucket (hash & mask) or,
 * when that is full, in one of the FT_PROBE - 1 buckets after it; the home
 * bucket's ovf counts its keys stored further on, so a lookup that misses
 * in a home bucket with ovf 0 stops there.
 *
 * State word: bits 0-1 the state (FT_EMPTY, FT_BUSY: being written, FT_LIVE),
 * bits 2-7 a touch counter, bits 8-15 a byte of the key (the entry type's
 * "tag", e.g. the protocol), bits 16-31 a generation bumped by every claim
 * and every delete. Atomic operations act on the first 8 bytes of an entry
 * (the state word and the key's first word, which never changes while the
 * entry is live): the program builds for BPF v1, whose compare-and-swap is
 * 64-bit only, so entries are 8-byte aligned and sized. Protocol:
 * - insert: take the home bucket's lock (compare-and-swap 0 -> 1; inserts of
 *   one key are serialised there, so a key is never live twice); look the key
 *   up; claim an empty entry (CAS EMPTY -> BUSY, new generation); count it in
 *   the home's ovf if it is not in the home; write key and value; publish
 *   (BUSY -> LIVE: a plain store, ft_release64); unlock (a plain store of
 *   the lock word).
 * - lookup: an entry counts only if LIVE with the key; the caller reads the
 *   value and then checks the state word again (ft_stable): a generation or
 *   state change meanwhile makes it a miss.
 * - touch (the owner saw a packet): write the value's timestamp, then bump the
 *   touch counter by CAS, so that a delete that read the entry before fails.
 * - delete: CAS LIVE -> EMPTY (new generation) from the state word read with
 *   the entry; then, if the entry was not in its home, decrement the home's
 *   ovf. A delete whose CAS fails lost to a touch, another delete or a reuse.
 */
#ifndef XDPLB_FLOWTABLE_H
#define XDPLB_FLOWTABLE_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define FT_EMPTY 0
#define FT_BUSY 1
#define FT_LIVE 2
#define FT_STATE_MASK 0x3u
#define FT_TOUCH_MASK 0xfcu
#define FT_TOUCH_ONE 0x4u
#define FT_TAG_SHIFT 8
#define FT_TAG_MASK 0xff00u
#define FT_GEN_ONE 0x10000u
#define FT_GEN_MASK 0xffff0000u
/* Buckets a key may live in: its home and the next FT_PROBE - 1. */
#define FT_PROBE 12
/* Tries to take a bucket's insert lock before giving up: another CPU holds
 * it for the few stores of one insert, unless an interrupt or the
 * hypervisor stops that CPU meanwhile (each try is a load and a branch,
 * a compare-and-swap when the lock looks free). */
#define FT_LOCK_TRIES 2048
/* Words of struct ft_head before the first entry of a bucket. */
#define FT_HEAD_WORDS 2
#define FT_LOCKED (1ULL << 32) /* struct ft_head.lock, as part of its u64 */

#define FT_ENOSPC 28
#define FT_EBUSY 16
#define FT_EEXIST 17

/* A type of entry: its words after the state word (key, then value), the
 * words from one entry to the next and the entries of a bucket. */
struct ft_geom {
	int kw, vw, stride, ways;
};

/* Where ft_find found an entry. */
struct ft_ref {
	__u32 *e;      /* the entry's first word */
	__u32 *home;   /* the home bucket (its ovf is word 0) */
	__u64 state;   /* the entry's first 8 bytes as read */
	__u32 probe;   /* 0: in its home bucket */
	__u32 way;     /* the entry's place in its bucket */
};

static __always_inline __u64 ft_load(const __u32 *w)
{
	return *(volatile const __u64 *)w;
}

static __always_inline __u64 ft_cas(__u32 *w, __u64 old, __u64 new)
{
	return __sync_val_compare_and_swap((__u64 *)w, old, new);
}

/* ft_trylock takes the lock at hb if it is free at its first try: the
 * common case, inlined, so that an insert calls ft_lock only to wait
 * (snat_new_flow, two inserts: -4 and -12 ns in two runs beside the
 * build before). */
static __always_inline int ft_trylock(__u64 *hb)
{
	__u64 v = *(volatile __u64 *)hb;

	return !(v & FT_LOCKED) && __sync_val_compare_and_swap(hb, v, v | FT_LOCKED) == v;
}

/* ft_lock takes the insert lock of the bucket whose head is at hb: 1, or 0
 * after FT_LOCK_TRIES tries. A global BPF function: its loop is verified
 * once, where inlined it is verified again at every insert's call site, try
 * by try (the verifier's budget allowed 64 tries so). */
__attribute__((noinline)) int ft_lock(__u64 *hb)
{
	if (!hb)
		return 0;
	for (int t = 0; t < FT_LOCK_TRIES; t++)
		if (ft_trylock(hb))
			return 1;
	return 0;
}

/* ft_release64 and ft_release32 store v at w with a plain store, after
 * every store before them (a compiler barrier; x86-64 keeps stores in
 * program order, as the program's plain loads rely on x86-64's load order):
 * a locked operation would also be a full barrier, which costs the insert
 * of a new flow more than the store. Only where no other writer can race:
 * an entry this insert claimed (busy: no delete, touch or claim acts on
 * it), and its home bucket's lock word, which only its holder writes. */
static __always_inline void ft_release64(__u32 *w, __u64 v)
{
	barrier();
	*(volatile __u64 *)w = v;
}

static __always_inline void ft_release32(__u32 *w, __u32 v)
{
	barrier();
	*(volatile __u32 *)w = v;
}

/* ft_with_state is the entry's first 8 bytes v with the state word s. */
static __always_inline __u64 ft_with_state(__u64 v, __u32 s)
{
	return (v & 0xffffffff00000000ULL) | s;
}

/* ft_key_eq compares entry e (whose first 8 bytes read v) with key and
 * tag. */
static __always_inline int ft_key_eq(const __u32 *e, __u64 v, const __u32 *key, __u32 tag, const int kw)
{
	if ((__u32)(v >> 32) != key[0] || (((__u32)v & FT_TAG_MASK) >> FT_TAG_SHIFT) != tag)
		return 0;
#pragma unroll
	for (int i = 1; i < kw; i++)
		if (e[1 + i] != key[i])
			return 0;
	return 1;
}

/* ft_find looks key (and tag) up in table map (mask: its size - 1) from
 * hash: 1 if found (r filled), 0 if not. */
static __always_inline int ft_find(void *map, __u32 mask, __u32 hash, const __u32 *key, __u32 tag,
				   const struct ft_geom g, struct ft_ref *r)
{
	__u32 home = hash & mask;

#pragma clang loop unroll(disable)
	for (int i = 0; i < FT_PROBE; i++) {
		__u32 idx = (home + i) & mask;
		__u32 *b;

		if (i > (int)mask)
			break;
		b = bpf_map_lookup_elem(map, &idx);
		if (!b)
			return 0;
		if (i == 0)
			r->home = b;
#pragma unroll
		for (int w = 0; w < g.ways; w++) {
			__u32 *e = b + FT_HEAD_WORDS + w * g.stride;
			__u64 v = ft_load(e);

			if (((__u32)v & FT_STATE_MASK) == FT_LIVE && ft_key_eq(e, v, key, tag, g.kw)) {
				r->e = e;
				r->state = v;
				r->probe = i;
				r->way = w;
				return 1;
			}
		}
		if (i == 0 && *(volatile __u32 *)b == 0)
			return 0; /* no key of this home lives further on */
	}
	return 0;
}

/* ft_stable says whether the entry r found is still the one it was, apart
 * from touches: call it after reading the value. */
static __always_inline int ft_stable(const struct ft_ref *r)
{
	return ((ft_load(r->e) ^ r->state) & ~(__u64)FT_TOUCH_MASK) == 0;
}

/* ft_touch bumps the touch counter of the entry r found (after its owner
 * wrote the entry's timestamp). A failure means another CPU touched it, or
 * it is gone: either is fine. */
static __always_inline void ft_touch(const struct ft_ref *r)
{
	__u64 v = ft_load(r->e);
	__u32 s = v;

	if ((s & FT_STATE_MASK) != FT_LIVE)
		return;
	ft_cas(r->e, v, ft_with_state(v, (s & ~FT_TOUCH_MASK) | ((s + FT_TOUCH_ONE) & FT_TOUCH_MASK)));
}

/* ft_delete removes the entry r found, unless it changed since (touched,
 * deleted, reused): 1 if it removed it. */
static __always_inline int ft_delete(const struct ft_ref *r)
{
	__u64 v = r->state;
	__u32 s = v;

	if (ft_cas(r->e, v, ft_with_state(v, ((s & FT_GEN_MASK) + FT_GEN_ONE) | FT_EMPTY)) != v)
		return 0;
	if (r->probe)
		__sync_fetch_and_add(r->home, -1);
	return 1;
}

/* ft_insert adds key (and tag) with value val to the table. If the key is
 * there already: with replace, its value is overwritten (and the entry
 * touched), else -FT_EEXIST. -FT_ENOSPC: the key's buckets are full;
 * -FT_EBUSY: its home bucket stayed locked. 0: inserted or replaced. */
static __always_inline int ft_insert(void *map, __u32 mask, __u32 hash, const __u32 *key, __u32 tag,
				     const __u32 *val, const struct ft_geom g, int replace)
{
	__u32 home = hash & mask, *hb, *e = 0, busy = 0;
	struct ft_ref r = {};
	int probe = 0, err = 0;
	__u64 v;

	hb = bpf_map_lookup_elem(map, &home);
	if (!hb)
		return -FT_ENOSPC;
	if (!ft_trylock((__u64 *)hb) && !ft_lock((__u64 *)hb))
		return -FT_EBUSY;

	if (ft_find(map, mask, hash, key, tag, g, &r)) {
		if (!replace) {
			err = -FT_EEXIST;
			goto unlock;
		}
#pragma unroll
		for (int i = 0; i < g.vw; i++)
			r.e[1 + g.kw + i] = val[i];
		ft_touch(&r);
		goto unlock;
	}

#pragma clang loop unroll(disable)
	for (int i = 0; i < FT_PROBE; i++) {
		__u32 idx = (home + i) & mask;
		__u32 *b;

		if (i > (int)mask)
			break;
		b = bpf_map_lookup_elem(map, &idx);
		if (!b)
			break;
#pragma unroll
		for (int w = 0; w < g.ways; w++) {
			__u32 *c = b + FT_HEAD_WORDS + w * g.stride;
			__u32 s;

			v = ft_load(c);
			s = v;
			if ((s & FT_STATE_MASK) != FT_EMPTY)
				continue;
			busy = ((s & FT_GEN_MASK) + FT_GEN_ONE) | FT_BUSY;
			if (ft_cas(c, v, ft_with_state(v, busy)) == v) {
				e = c;
				probe = i;
				goto claimed;
			}
		}
	}
	err = -FT_ENOSPC;
	goto unlock;

claimed:
	if (probe)
		__sync_fetch_and_add(hb, 1);
	/* Key and value, then the state word with the tag and LIVE. The first
	 * key word shares the state word's 8 bytes: one CAS publishes both. */
#pragma unroll
	for (int i = 1; i < g.kw; i++)
		e[1 + i] = key[i];
#pragma unroll
	for (int i = 0; i < g.vw; i++)
		e[1 + g.kw + i] = val[i];
	ft_release64(e, ((__u64)key[0] << 32) | (busy & ~(FT_STATE_MASK | FT_TAG_MASK)) | (tag << FT_TAG_SHIFT) | FT_LIVE);
unlock:
	ft_release32(hb + 1, 0); /* struct ft_head.lock */
	return err;
}

/* Backing off: when a table is full, every insert walks a key's buckets
 * before it fails. After FT_FULL_STREAK inserts in a row found no room, a
 * CPU tries none for FT_BACKOFF_NS (they fail at once). One failure is no
 * sign of a full table: a key's buckets can be full while the table has
 * room (a few keys in 10^5 at half its entries). */
static __always_inline int ft_backing_off(const struct ft_backoff *b, __u64 now)
{
	return b && now < b->until;
}

/* ft_no_room notes an insert that found no room; ft_room one that did. */
static __always_inline void ft_no_room(struct ft_backoff *b, __u64 now)
{
	if (b && ++b->streak >= FT_FULL_STREAK) {
		b->streak = 0;
		b->until = now + FT_BACKOFF_NS;
	}
}

static __always_inline void ft_room(struct ft_backoff *b)
{
	if (b && b->streak)
		b->streak = 0;
}

#endif
