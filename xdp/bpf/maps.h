/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps of the load-balancer program, one line of purpose each. The loader sets
 * max_entries from its options; the sizes here are defaults. */
#ifndef XDPLB_MAPS_H
#define XDPLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

/* Bitmap prefilter over VIP addresses: a clear bit means "no VIP", so traffic
 * that is not for us costs one array read. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} vip_filter SEC(".maps");

/* Every VIP address, for decisions about packets that have no port (ICMP,
 * fragments, other protocols). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__type(key, struct vip_addr);
	__type(value, struct vip_addr_info);
} vip_addrs SEC(".maps");

/* Services: (address, port, protocol) to mode and Maglev table. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
} vips SEC(".maps");

/* A direct-mapped cache of vips: entry vip_index_of(address, port, protocol)
 * holds the vip_slots slot of the service with that key (0: none, or the
 * entry is another key's), so most packets find their service with two
 * inlined array reads instead of a hash lookup. User space writes it through
 * mmap, one 4-byte store per change; vips stays the reference. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, VIP_INDEX_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} vip_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_slot);
} vip_slots SEC(".maps");

/* Maglev tables: one inner array of M slots per VIP, each slot holding the
 * backend ids of two tables, so the next table is written into the half the
 * current one does not use and swapped in by updating the VIP's vip_meta.
 * Sizes differ per VIP (BPF_F_INNER_MAP); user space writes tables through
 * mmap (BPF_F_MMAPABLE), and replaces an inner map only when a VIP's table
 * size changes, because every update of a map-in-map waits for an RCU grace
 * period (~10 ms here). */
struct maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 251);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct maglev_slot));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, DEFAULT_MAX_TABLES);
	__type(key, __u32);
	__array(values, struct maglev_inner);
} maglev_tables SEC(".maps");

/* Backends by id: an array (its lookups are inlined), each id with two
 * halves so that an update never shows a half-written entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_slot);
} backends SEC(".maps");

/* Pins of IPv4 and IPv6 flows made during table transitions: flow tables
 * (flowtable.h), arrays of buckets a cache line or two each, written by the
 * program and expired by user space through mmap. When a flow's buckets are
 * full its pin fails (counted); no pin is ever evicted. The loader sizes them
 * (a power of two of buckets, twice Options.MaxFlows entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct pin4_bucket);
} pins4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct pin6_bucket);
} pins6 SEC(".maps");

/* A filter in front of pins4/pins6: the bit of a pinned flow's hash is set, so a
 * clear bit means "no pin" without a lookup in a table of a million entries
 * (a cache miss or two each). Two halves: the program sets a new pin's bit
 * in both and reads the one settings_map names; user space rebuilds the
 * other from the pins that remain and switches (Maintain), so bits of
 * expired pins do not pile up. User space writes it through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2 * PIN_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} pin_filter SEC(".maps");

/* Global verdict and event counters, indexed by enum xdplb_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, enum xdplb_counter);
	__type(value, __u64);
} stats SEC(".maps");

/* Per-VIP counters, indexed by vip_meta.vip_id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct lb_stats);
} vip_stats SEC(".maps");

/* Per-backend counters, indexed by backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_stats);
} backend_stats SEC(".maps");

/* Interfaces a backend may be reached through other than the ingress one. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, DEFAULT_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* Runtime settings (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings_map SEC(".maps");

/* The outcome of a dry run (cfg_dry_run): private to each load of the
 * dry-run build, never pinned and never shared with the datapath. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dry_outcome);
} dry_result SEC(".maps");

/* Fragments: where the later fragments of a datagram go (see struct
 * frag_key). LRU: a datagram whose fragments never came is forgotten first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAG_ENTRIES);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
} frags SEC(".maps");

#endif
