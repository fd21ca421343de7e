// Package announce tells the LAN where the appliance's VIPs live: it answers
// ARP requests and IPv6 neighbour solicitations for them with the MAC address
// of the interface it runs on, and announces a VIP with gratuitous ARP or an
// unsolicited neighbour advertisement when it becomes active, so that a
// client or router that cached another MAC (the previous owner's, after a
// failover) switches at once.
//
// The VIPs are on no kernel interface (XDP takes their packets first), so the
// kernel never answers for them. An [Announcer] serves one interface from two
// raw packet sockets, one for ARP and one for IPv6 (filtered in the kernel to
// neighbour solicitations and advertisements), and builds every reply itself.
// It needs no IPv4 or IPv6 address on the interface: replies come from the
// VIP, and it joins the solicited-node multicast group of each IPv6 VIP at the
// link layer.
//
// The packet handlers are functions of the received frame that return the
// reply and a [Reason]; the counters in [Stats] are kept by reason, per
// interface and per VIP, and never by the address of the asker. Replies go
// through a per-interface token bucket, so a flood of requests costs at most a
// bounded number of replies; requests beyond the socket's buffer are dropped
// by the kernel.
package announce
