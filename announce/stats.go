package announce

import (
	"net/netip"
	"sync/atomic"
)

// Stats are the counters of an announcer, ready for export as metrics: per
// interface and protocol, and per active VIP. Label values are bounded: the
// interface, the protocol, a [Reason] and a configured VIP, never an asker's
// address. Counters only grow, except that a VIP's counters start again at
// zero when it becomes active again after a removal.
type Stats struct {
	// Interface is the interface's name.
	Interface string
	// ARP and NDP count the two protocols on the interface.
	ARP, NDP ProtocolStats
	// VIPs holds the active VIPs, IPv4 first, in address order.
	VIPs []VIPStats
}

// ProtocolStats counts one protocol (ARP or NDP) on one interface.
type ProtocolStats struct {
	// Received counts the frames the socket delivered (for NDP, only
	// neighbour solicitations and advertisements pass the socket filter).
	Received uint64
	// Replies counts the replies sent.
	Replies uint64
	// Gratuitous counts the gratuitous packets sent: gratuitous ARP requests
	// and replies (two per announcement), unsolicited advertisements (one
	// per announcement).
	Gratuitous uint64
	// SendErrors counts replies and gratuitous packets the socket refused.
	SendErrors uint64
	// Drops counts the received frames not answered, by reason. It holds
	// every reason of [DropReasons], zero or not.
	Drops map[Reason]uint64
}

// VIPStats counts one active VIP on one interface.
type VIPStats struct {
	VIP netip.Addr
	// Requests counts the valid requests (ARP requests, neighbour
	// solicitations) for the VIP, answered or rate limited.
	Requests uint64
	// Replies counts the replies sent for the VIP.
	Replies uint64
	// Gratuitous counts the gratuitous packets sent for the VIP.
	Gratuitous uint64
}

type vipCounters struct {
	requests, replies, gratuitous atomic.Uint64
}

type protoCounters struct {
	received, replies, gratuitous, sendErrors atomic.Uint64
	drops                                     [numReasons]atomic.Uint64
}

func (c *protoCounters) snapshot() ProtocolStats {
	s := ProtocolStats{
		Received:   c.received.Load(),
		Replies:    c.replies.Load(),
		Gratuitous: c.gratuitous.Load(),
		SendErrors: c.sendErrors.Load(),
		Drops:      make(map[Reason]uint64, len(DropReasons)),
	}
	for _, r := range DropReasons {
		s.Drops[r] = c.drops[r].Load()
	}
	return s
}
