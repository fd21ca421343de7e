/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The monitor (`xdplb monitor`): events about packets, sent to user space
 * through a ring buffer while someone listens. Nobody listening costs a
 * packet nothing beyond a test of its reason (most verdicts are no event) and,
 * for one that is an event, one inlined array read of monitor_on. A full ring
 * loses the event, counted in monitor_lost; the packet is never held up.
 * Nothing here changes a verdict or a counter. */
#ifndef XDPLB_MONITOR_H
#define XDPLB_MONITOR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Bytes of the frame an event carries: enough for Ethernet, a VLAN tag, an
 * outer and an inner IPv6 header and a TCP header. */
#define MONITOR_CAP 128

/* What an event is about. */
enum xdplb_monitor_type {
	MON_DROP = 1,       /* a packet dropped; reason says why */
	MON_PIN = 2,        /* a flow pinned to its backend during a table transition */
	MON_ICMP_ERROR = 3, /* an ICMP error about a VIP flow forwarded to its backend */
	MON_ECHO_REPLY = 4, /* an echo request to a VIP answered */
	MON_ICMP_SENT = 5,  /* an ICMP error sent back to the client (too big, time exceeded) */
};

/* One event. The tuple is the flow as the program saw it (for an ICMP error,
 * the quoted flow, seen from the client); data holds the first bytes of the
 * frame as the program leaves it (a pin: none). */
struct monitor_event {
	__u32 type;       /* enum xdplb_monitor_type */
	__u32 reason;     /* enum xdplb_counter of the verdict, or of the event */
	__u32 ifindex;
	__u32 backend_id; /* the backend chosen; 0: none */
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;      /* 4, 6, or 0 when the packet was not parsed that far */
	__u8 proto;
	__u8 syn;
	__u8 pad;
	__u32 frame_len;
	__u32 cap_len;    /* bytes of data */
	__u8 data[MONITOR_CAP];
};

/* The events. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} monitor_events SEC(".maps");

/* 1 while someone listens (user space sets it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} monitor_on SEC(".maps");

/* Events lost because the ring was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} monitor_lost SEC(".maps");

/* monitor_start returns an event to fill and submit, or NULL when nobody
 * listens or the ring is full. */
static __always_inline struct monitor_event *monitor_start(__u32 type, __u32 reason)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&monitor_on, &zero);
	struct monitor_event *e;

	if (!on || !*on)
		return NULL;
	e = bpf_ringbuf_reserve(&monitor_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&monitor_lost, &zero);

		if (lost)
			*lost += 1;
		return NULL;
	}
	e->type = type;
	e->reason = reason;
	e->ifindex = 0;
	e->backend_id = 0;
	e->frame_len = 0;
	e->cap_len = 0;
	return e;
}

#endif
