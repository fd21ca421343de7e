/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map keys and values. Fixed-width types and explicit padding only: bpf2go
 * generates the Go mirror of each struct, and pinned maps outlive a program
 * version, so a layout change is a breaking change (append fields at the end). */
#ifndef XDPLB_STRUCTS_H
#define XDPLB_STRUCTS_H

#include <linux/types.h>

/* Addresses are 16 bytes in every key; an IPv4 address takes the first 4
 * bytes and the rest are zero. family is 4 or 6. */

/* Key of vip_addrs: a VIP address, whatever the port. */
struct vip_addr {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

struct vip_addr_info {
	__u32 flags; /* enum xdplb_addr_flags */
	__u32 pad;
};

/* Key of vips: a service. port is in network byte order; 0 means "any port". */
struct vip_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* Value of vips. Replaced as a whole (hash map update) to switch tables: a
 * packet sees the old value or the new one, never a mix. */
struct vip_meta {
	__u32 vip_id;       /* index into vip_stats */
	__u32 table_idx;    /* inner map of the current Maglev table in maglev_tables */
	__u32 table_half;   /* which of the two ids of each slot is the current table's */
	__u32 table_size;   /* its number of slots (M, a prime) */
	__u32 prev_idx;     /* the table before the last change, while transition_end */
	__u32 prev_half;
	__u32 prev_size;
	__u32 hash_seed;    /* flow hash seed, the same on every appliance */
	__u64 transition_end; /* CLOCK_MONOTONIC_COARSE ns; 0 or past: no transition */
	__u8 mode;          /* enum xdplb_mode */
	__u8 flags;         /* enum xdplb_vip_flags */
	__u8 pad[6];
};

/* A service as found through vip_index: its key (to check the index hit)
 * and its vip_meta. Each VIP has two slots; user space writes the one not in
 * use, then points vip_index at it. */
struct vip_slot {
	struct vip_key key;
	__u32 pad;
	struct vip_meta meta;
};

/* A backend, as the program uses it. */
struct backend {
	__u8 addr[16];      /* IPIP outer destination */
	__u8 family;
	__u8 flags;         /* enum xdplb_backend_flags */
	__u16 mtu;          /* egress MTU, for the IPIP size check */
	__u32 ifindex;      /* egress interface */
	__u8 dmac[6];       /* next hop's MAC: the backend's or its gateway's */
	__u8 smac[6];       /* egress interface's MAC */
	__be16 port;        /* SNAT: the backend's port (0: the service's) */
	__u16 pad;
	__u64 owner;        /* the control plane's name for the entry; unused here */
};

/* Value of backends, indexed by the backend id (never 0). The entry in use is
 * b[gen & 1]: user space writes a changed backend into the other half, then
 * flips gen, so a packet never reads a half-written entry. */
struct backend_slot {
	__u32 gen;
	__u32 pad;
	struct backend b[2];
};

/* Flow keys of ct4 and ct6, the pin tables of releases before the flow table
 * (flowtable.h): the client's side of a flow, as seen arriving. Kept for the
 * copy of an earlier release's pins into the flow table (xdp/upgrade.go). */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* A pin of ct4/ct6: the flow stayed on backend_id while the backend was up. */
struct ct_value {
	__u32 backend_id;
	__u32 flags;        /* reserved */
	__u64 last_seen;    /* CLOCK_MONOTONIC_COARSE ns, refreshed at most every PIN_TOUCH_NS */
};

/* A bucket of a flow table starts with this (flowtable.h). */
struct ft_head {
	__u32 ovf;          /* keys of this home bucket stored in a later bucket */
	__u32 lock;         /* 1 while an insert of a key of this home runs */
};

/* A CPU's backoff from a flow table's inserts (flowtable.h). */
struct ft_backoff {
	__u64 until;        /* CLOCK_MONOTONIC_COARSE ns: no insert tried before */
	__u32 streak;       /* inserts in a row that found no room */
	__u32 pad;
};

/* A pin in the flow table pins4: the flow stays on backend_id while the
 * backend is up. The key is the client's side of the flow, as seen arriving,
 * and its protocol, which is the tag byte of the state word (flowtable.h).
 * Words after the state: key 3, value 2. */
struct pin4 {
	__u32 state;        /* flowtable.h; the tag is the protocol */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 backend_id;   /* value */
	__u32 seen;         /* CLOCK_MONOTONIC_COARSE ns >> FT_TICK_SHIFT, modulo 2^32,
			     * refreshed at most every PIN_TOUCH_NS */
};

/* A bucket of pins4: one cache line (64 bytes), two pins. */
struct pin4_bucket {
	struct ft_head head;
	struct pin4 e[PIN4_WAYS];
	__u32 pad[2];
};

/* A pin in pins6. Words after the state: key 9, value 2. */
struct pin6 {
	__u32 state;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u32 backend_id;
	__u32 seen;
};

/* A bucket of pins6: two cache lines (128 bytes, aligned), a pin in each
 * (e1 starts at byte 64). */
struct pin6_bucket {
	struct ft_head head;
	struct pin6 e0;
	__u32 gap[2];
	struct pin6 e1;
	__u32 pad[4];
};

/* The first fragment of a datagram to a VIP is balanced by its ports like
 * any packet; its later fragments carry no ports and find the backend here,
 * by (source, destination, IP ID or IPv6 fragment identification,
 * protocol). IPv4 addresses take the first word of each address. */
struct frag_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct frag_value {
	__u32 backend_id;
	__u32 hash;         /* the flow hash of the first fragment (IPIP outer source) */
	__be16 sport;       /* the first fragment's ports: they find the service */
	__be16 dport;
	__u32 pad;
	__u64 seen;         /* CLOCK_MONOTONIC_COARSE ns of the first fragment */
};

/* A slot of an inner Maglev map holds the backend ids of two tables: the
 * current one and the previous or next one. */
struct maglev_slot {
	__u32 id[2];
};

/* Per-CPU counters of one VIP or one backend. */
struct lb_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;    /* TCP SYNs */
};

/* Runtime settings that may change without reloading the program. */
struct settings {
	__be32 encap_src4;      /* outer source of IPv4 encapsulation */
	__u32 encap_src4_spread; /* host bits of encap_src4 varied by flow hash (0-16) */
	__u8 encap_src6[16];
	__u32 encap_src6_spread; /* low bits of encap_src6 varied by flow hash (0-32) */
	__u32 pin_filter;        /* which half of pin_filter packets read (0 or 1) */
};

/* What a dry run of the program (cfg_dry_run) would have done with its
 * frame, in dry_result: the verdict counter it would have counted, the
 * backend it chose and the pin it would have written. */
struct dry_outcome {
	__u32 reason;       /* enum xdplb_counter */
	__u32 backend_id;   /* 0: none (the packet was not forwarded to a backend) */
	__u32 pin;          /* enum xdplb_dry_pin */
	__u32 done;         /* 1 once the program ran to its end */
};

/* The NAT map of earlier releases (a hash map, nat_flows), for copying its
 * flows into nat4 and nat6 (xdp/upgrade.go): a packet's tuple as it arrives
 * in one direction of a flow, and what the packet becomes. */
struct nat_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 dir;           /* enum xdplb_nat_dir */
	__u8 pad;
};

struct nat_value {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 backend_id;
	__u32 ifindex;
	__u8 dmac[6];
	__u8 smac[6];
	__u32 vip_id;
	__u32 pad;
	__u64 state;
	__u64 created;
	__u64 last_seen;
};

/* A NAT entry in the flow table nat4: one direction of a translated flow.
 * The key is the packet's tuple as it arrives (addresses, then the ports as
 * one word); the tag (flowtable.h) is the protocol, plus NAT_TAG_REPLY in a
 * reply entry. The value is what the packet becomes, and the flow's state.
 * Words after the state: key 3, value 10. */
struct nat4 {
	__u32 state;        /* flowtable.h */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be32 to_saddr;    /* value: forward, the SNAT source and the backend; */
	__be32 to_daddr;    /* reply, the VIP and the client */
	__be16 to_sport;
	__be16 to_dport;
	__u32 backend_id;
	__u32 bits;         /* enum xdplb_nat_state seen in this direction (atomic or) */
	__u32 seen;         /* CLOCK_MONOTONIC_COARSE ns >> FT_TICK_SHIFT, modulo 2^32,
			     * refreshed at most every NAT_TOUCH_NS */
	__u32 aux;          /* forward: created, ns >> NAT_CREATED_SHIFT; reply: the
			     * client side's interface */
	__u8 dmac[6];       /* reply: the client side's next hop */
	__u8 smac[6];       /* reply: the appliance's MAC on that interface */
};

/* A bucket of nat4: two cache lines (128 bytes), an entry in each (e1
 * starts at byte 64). */
struct nat4_bucket {
	struct ft_head head;
	struct nat4 e0;
	struct nat4 e1;
	__u32 pad[2];
};

/* A NAT entry in nat6. Words after the state: key 9, value 16. */
struct nat6 {
	__u32 state;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 to_saddr[16];
	__u8 to_daddr[16];
	__be16 to_sport;
	__be16 to_dport;
	__u32 backend_id;
	__u32 bits;
	__u32 seen;
	__u32 aux;
	__u8 dmac[6];
	__u8 smac[6];
};

/* A bucket of nat6: four cache lines (256 bytes), an entry in each half
 * (e1 starts at byte 128). */
struct nat6_bucket {
	struct ft_head head;
	struct nat6 e0;
	__u32 gap[4];
	struct nat6 e1;
	__u32 pad[6];
};

/* A NAT entry's key as the nat_ft_* functions of nat.h take it,
 * for either family, and what a lookup does to the entry it finds. */
struct nat_fkey {
	__u32 w[9];         /* IPv4: saddr, daddr, ports; IPv6: saddr, daddr, ports */
	__u32 tag;          /* protocol, plus NAT_TAG_REPLY */
	__u32 v6;
	__u32 bits;         /* lookup: state bits to set in the entry found */
	__u32 tick;         /* lookup: now >> FT_TICK_SHIFT, or 0 not to touch */
	__u32 hash;         /* its hash in its table, once a nat_ft_* function computed it; 0 before */
};

/* A NAT entry's value for either family (nat4 and nat6 store it packed). */
struct nat_val {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 backend_id;
	__u32 bits;
	__u32 seen;
	__u32 aux;
	__u8 dmac[6];
	__u8 smac[6];
};

/* SNAT settings (one entry of nat_config). Ports are host order. */
struct nat_config {
	__u64 filter;       /* bit (vip_filter_bit(folded source) & 63) of each source */
	__u16 port_lo;
	__u16 port_hi;
	__u8 n4;            /* sources of each family in src4/src6 */
	__u8 n6;
	__u8 filter_half;   /* which half of nat_filter packets read (0 or 1) */
	__u8 pad;
	__be32 src4[NAT_MAX_SOURCES];
	__u32 src6[NAT_MAX_SOURCES][4];
};

/* Per-CPU counters of one SNAT source (nat_src_stats: IPv4 sources first,
 * then IPv6 ones from NAT_MAX_SOURCES). */
struct nat_src_stats {
	__u64 flows;        /* NAT flows created with this source */
	__u64 alloc_fail;   /* new flows dropped: no free port toward their backend */
};

/* Original frame restored before every run of the bench wrapper. */
struct bench_frame {
	__u32 len;
	__u32 vary_offset; /* offset of a be32 field set to its value + seq % vary_count */
	__u32 vary_count;  /* 0: nothing varies */
	__u32 seq;         /* runs so far on this CPU */
	__u8 data[BENCH_MAX_FRAME];
};

#endif
