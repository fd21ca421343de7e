package announce

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// responder decides what to answer on one interface. Its handlers take a
// received frame and return the reply to send (nil for none), the active VIP
// the frame concerns (invalid when none) and the reason. They do no I/O and
// count nothing; the only state they touch is the reply budget.
type responder struct {
	mac net.HardwareAddr
	// vips is the set of active VIPs with their counters. It is replaced
	// whole by SetVIPs, so a removed VIP is not answered from the moment
	// the new set is stored.
	vips    atomic.Pointer[vipSet]
	limiter *tokenBucket
	now     func() time.Time
}

// vipSet is an immutable set of active VIPs.
type vipSet map[netip.Addr]*vipCounters

func newResponder(mac net.HardwareAddr, limiter *tokenBucket) *responder {
	r := &responder{mac: mac, limiter: limiter, now: time.Now}
	r.vips.Store(&vipSet{})
	return r
}

// active returns the counters of vip if it is an active VIP.
func (r *responder) active(vip netip.Addr) (*vipCounters, bool) {
	c, ok := (*r.vips.Load())[vip]
	return c, ok
}

// handleARP handles an Ethernet frame holding an ARP packet. It answers a
// request for an active IPv4 VIP with a reply from the VIP at the
// interface's MAC, sent to the asker's hardware address (RFC 826); probes
// (sender address 0.0.0.0, RFC 5227) are answered too, which is how the prober
// learns the address is taken.
func (r *responder) handleARP(frame []byte) (reply []byte, vip netip.Addr, reason Reason) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeARP || f.VLAN != nil {
		// The kernel strips VLAN tags before a packet socket sees the
		// frame; a tagged frame here is not one we know how to answer.
		return nil, netip.Addr{}, ReasonMalformed
	}
	var p arp.Packet
	if len(f.Payload) < 8 {
		return nil, netip.Addr{}, ReasonMalformed
	}
	// Check the lengths before parsing: the parser takes addresses of any
	// length the packet claims.
	if hlen, plen := f.Payload[4], f.Payload[5]; hlen != 6 || plen != 4 {
		return nil, netip.Addr{}, ReasonMalformed
	}
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return nil, netip.Addr{}, ReasonMalformed
	}
	if p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) {
		return nil, netip.Addr{}, ReasonMalformed
	}
	switch p.Operation {
	case arp.OperationRequest:
	case arp.OperationReply:
		if _, ok := r.active(p.SenderIP); ok {
			// Another host claims one of our VIPs.
			return nil, p.SenderIP, ReasonReplyIgnored
		}
		return nil, netip.Addr{}, ReasonReplyIgnored
	default:
		return nil, netip.Addr{}, ReasonNotARequest
	}
	if !isUnicastMAC(p.SenderHardwareAddr) || !isUnicastMAC(f.Source) {
		// Never answer to a group address: that would turn one frame
		// into a broadcast.
		return nil, netip.Addr{}, ReasonMalformed
	}
	if _, ok := r.active(p.TargetIP); !ok {
		return nil, netip.Addr{}, ReasonNotOurs
	}
	vip = p.TargetIP
	if !equalMAC(f.Destination, ethernet.Broadcast) && !equalMAC(f.Destination, r.mac) {
		// A unicast request to another host's MAC, seen because the
		// interface is promiscuous: that host is asked, not us.
		return nil, netip.Addr{}, ReasonNotOurs
	}
	if p.SenderIP == p.TargetIP {
		// A gratuitous ARP request: another host announces our VIP.
		return nil, vip, ReasonNotARequest
	}
	if !r.limiter.allow(r.now()) {
		return nil, vip, ReasonRateLimited
	}
	reply, err := arpFrame(p.SenderHardwareAddr, arp.OperationReply, r.mac, vip, p.SenderHardwareAddr, p.SenderIP)
	if err != nil {
		// Cannot happen: every address was checked above.
		return nil, vip, ReasonMalformed
	}
	return reply, vip, ReasonAnswered
}

// handleNDP handles an Ethernet frame holding an IPv6 packet. It answers a
// neighbour solicitation for an active IPv6 VIP with a solicited, override
// neighbour advertisement from the VIP carrying the interface's MAC as target
// link-layer address; a solicitation from the unspecified address (duplicate
// address detection) gets an unsolicited one to all-nodes instead (RFC 4861
// section 7.2.4).
func (r *responder) handleNDP(frame []byte) (reply []byte, vip netip.Addr, reason Reason) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeIPv6 || f.VLAN != nil {
		return nil, netip.Addr{}, ReasonMalformed
	}
	ip := f.Payload
	if len(ip) < ipv6HeaderLen || ip[0]>>4 != 6 {
		return nil, netip.Addr{}, ReasonMalformed
	}
	plen := int(ip[4])<<8 | int(ip[5])
	if len(ip) < ipv6HeaderLen+plen {
		return nil, netip.Addr{}, ReasonMalformed
	}
	if ip[6] != protoICMPv6 {
		// Not ICMPv6, or ICMPv6 behind extension headers, which NDP does
		// not use. The socket filter lets neither through.
		return nil, netip.Addr{}, ReasonNotARequest
	}
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	dst := netip.AddrFrom16([16]byte(ip[24:40]))
	icmp := ip[ipv6HeaderLen : ipv6HeaderLen+plen] // without Ethernet padding
	if len(icmp) < 4 || !icmpv6ChecksumOK(src, dst, icmp) {
		return nil, netip.Addr{}, ReasonMalformed
	}
	switch icmp[0] {
	case icmpTypeNS:
	case icmpTypeNA:
		if len(icmp) >= icmpv6MinNDP {
			if _, ok := r.active(netip.AddrFrom16([16]byte(icmp[8:24]))); ok {
				return nil, netip.AddrFrom16([16]byte(icmp[8:24])), ReasonReplyIgnored
			}
		}
		return nil, netip.Addr{}, ReasonReplyIgnored
	default:
		return nil, netip.Addr{}, ReasonNotARequest
	}
	// RFC 4861 section 7.1.1: hop limit 255 (the packet was not routed),
	// code 0, at least 24 bytes, options with a non-zero length.
	if ip[7] != ndpHopLimit || icmp[1] != 0 || len(icmp) < icmpv6MinNDP || !validNDPOptions(icmp[icmpv6MinNDP:]) {
		return nil, netip.Addr{}, ReasonMalformed
	}
	m, err := ndp.ParseMessage(icmp)
	if err != nil {
		return nil, netip.Addr{}, ReasonMalformed
	}
	ns, ok := m.(*ndp.NeighborSolicitation)
	if !ok {
		return nil, netip.Addr{}, ReasonMalformed
	}
	target := ns.TargetAddress
	var sourceLLA net.HardwareAddr
	for _, o := range ns.Options {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Source {
			sourceLLA = lla.Addr
		}
	}
	dad := src.IsUnspecified()
	if target.IsMulticast() || src.IsMulticast() ||
		(dad && (dst != solicitedNode(target) || sourceLLA != nil)) ||
		!isUnicastMAC(f.Source) || (sourceLLA != nil && !isUnicastMAC(sourceLLA)) {
		return nil, netip.Addr{}, ReasonMalformed
	}
	if _, ok := r.active(target); !ok {
		return nil, netip.Addr{}, ReasonNotOurs
	}
	vip = target
	// Asked at the VIP's solicited-node group, or at the VIP itself (a
	// unicast probe of an entry the asker already has), at the Ethernet
	// address that goes with it.
	toUs := (dst == solicitedNode(target) && equalMAC(f.Destination, multicastMAC(dst))) ||
		(dst == target && equalMAC(f.Destination, r.mac))
	if !toUs {
		return nil, netip.Addr{}, ReasonNotOurs
	}
	if !r.limiter.allow(r.now()) {
		return nil, vip, ReasonRateLimited
	}
	if dad {
		reply, err = naFrame(r.mac, allNodesMAC, vip, allNodes, vip, false)
	} else {
		ethDst := f.Source
		if sourceLLA != nil {
			ethDst = sourceLLA
		}
		reply, err = naFrame(r.mac, ethDst, vip, src, vip, true)
	}
	if err != nil {
		// Cannot happen: every address was checked above.
		return nil, vip, ReasonMalformed
	}
	return reply, vip, ReasonAnswered
}

// tokenBucket limits replies to rate per second with bursts of burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// allow takes a token if there is one at time now.
func (b *tokenBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		if d := now.Sub(b.last); d > 0 {
			b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		}
	}
	if now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
