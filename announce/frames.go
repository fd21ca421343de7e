package announce

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Sizes and constants of the headers built and parsed here.
const (
	ethHeaderLen  = 14
	ipv6HeaderLen = 40
	icmpv6MinNDP  = 24 // ICMPv6 header and target address of an NS or NA
	protoICMPv6   = 58
	ndpHopLimit   = 255 // RFC 4861: NDP packets are sent and accepted with 255 only
	icmpTypeNS    = 135
	icmpTypeNA    = 136
)

var (
	zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	// allNodes is ff02::1, where unsolicited advertisements go.
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
)

// solicitedNode returns the solicited-node multicast address of a
// (ff02::1:ffXX:XXXX with the low 24 bits of a).
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// multicastMAC returns the Ethernet address an IPv6 multicast address maps
// to (RFC 2464: 33:33 and its low 32 bits).
func multicastMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// isUnicastMAC reports whether m is a 6-byte individual address other than
// all zeros.
func isUnicastMAC(m net.HardwareAddr) bool {
	return len(m) == 6 && m[0]&1 == 0 && !equalMAC(m, zeroMAC)
}

func equalMAC(a, b net.HardwareAddr) bool { return string(a) == string(b) }

// arpFrame builds an Ethernet frame holding an ARP packet (padded to the
// Ethernet minimum of 60 bytes).
func arpFrame(ethDst net.HardwareAddr, op arp.Operation, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) ([]byte, error) {
	p, err := arp.NewPacket(op, sha, spa, tha, tpa)
	if err != nil {
		return nil, fmt.Errorf("building ARP packet: %w", err)
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("building ARP packet: %w", err)
	}
	f := ethernet.Frame{Destination: ethDst, Source: sha, EtherType: ethernet.EtherTypeARP, Payload: pb}
	return f.MarshalBinary()
}

// naFrame builds a neighbour advertisement for target from src to dst
// (Ethernet ethSrc to ethDst), override set, with a target link-layer
// address option carrying ethSrc.
func naFrame(ethSrc, ethDst net.HardwareAddr, src, dst, target netip.Addr, solicited bool) ([]byte, error) {
	na := &ndp.NeighborAdvertisement{
		Solicited:     solicited,
		Override:      true,
		TargetAddress: target,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ethSrc}},
	}
	icmp, err := ndp.MarshalMessageChecksum(na, src, dst)
	if err != nil {
		return nil, fmt.Errorf("building neighbour advertisement: %w", err)
	}
	ip := make([]byte, ipv6HeaderLen, ipv6HeaderLen+len(icmp))
	ip[0] = 6 << 4 // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(ip[4:6], uint16(len(icmp)))
	ip[6] = protoICMPv6
	ip[7] = ndpHopLimit
	s, d := src.As16(), dst.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	f := ethernet.Frame{Destination: ethDst, Source: ethSrc, EtherType: ethernet.EtherTypeIPv6, Payload: append(ip, icmp...)}
	return f.MarshalBinary()
}

// icmpv6ChecksumOK reports whether the ICMPv6 message b, carried from src to
// dst, has a correct checksum (RFC 4443 section 2.3, pseudo-header of RFC 8200
// section 8.1).
func icmpv6ChecksumOK(src, dst netip.Addr, b []byte) bool {
	var sum uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(p[i])<<8 | uint32(p[i+1])
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	var tail [8]byte
	binary.BigEndian.PutUint32(tail[0:4], uint32(len(b)))
	tail[7] = protoICMPv6
	add(tail[:])
	add(b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

// validNDPOptions reports whether the options in b are well formed: each has
// a length above zero and fits (RFC 4861 section 7.1.1).
func validNDPOptions(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 2 || b[1] == 0 || int(b[1])*8 > len(b) {
			return false
		}
		b = b[int(b[1])*8:]
	}
	return true
}
