// Package gpcheck checks frames with gopacket, a decoder that shares no code
// with xdplb's packet builder, checkers or datapath model: the datapath's
// tests and its differential fuzzing hold output frames to it.
package gpcheck

import (
	"fmt"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Problems decodes an Ethernet frame with gopacket and returns what is wrong
// with it: a header gopacket cannot decode (up to the transport header), a checksum it finds wrong (IPv4
// headers, TCP, UDP, ICMPv4 and ICMPv6, each transport checksum over the IP
// header right before it, however deep the encapsulation). None: the frame
// is sound as far as gopacket can tell. IP fragments carry no transport
// header to check.
func Problems(frame []byte) []string {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var out []string
	// A payload gopacket cannot read as the application its port suggests
	// (DNS on port 53, ...) is no fault of the frame's headers.
	if el := p.ErrorLayer(); el != nil && p.TransportLayer() == nil {
		out = append(out, fmt.Sprintf("gopacket cannot decode: %v", el.Error()))
	}
	var netl gopacket.NetworkLayer
	for _, l := range p.Layers() {
		switch l := l.(type) {
		case *layers.IPv4:
			netl = l
		case *layers.IPv6:
			netl = l
		case *layers.TCP:
			if netl != nil {
				_ = l.SetNetworkLayerForChecksum(netl)
			}
		case *layers.UDP:
			if netl != nil {
				_ = l.SetNetworkLayerForChecksum(netl)
			}
		case *layers.ICMPv6:
			if netl != nil {
				_ = l.SetNetworkLayerForChecksum(netl)
			}
		}
	}
	err, bad := p.VerifyChecksums()
	if err != nil {
		out = append(out, fmt.Sprintf("gopacket cannot verify the checksums: %v", err))
	}
	for _, m := range bad {
		out = append(out, fmt.Sprintf("gopacket: layer %d (%s) checksum is %#04x, want %#04x", m.LayerIndex, m.Layer.LayerType(), m.Actual, m.Correct))
	}
	return out
}

// Check is Problems as an error (nil when there are none).
func Check(frame []byte) error {
	if p := Problems(frame); len(p) > 0 {
		return fmt.Errorf("%v", p)
	}
	return nil
}

// OuterIPv4HeaderOK reports whether the outer IP header of the frame, if
// it is IPv4, has a correct checksum (true when it is not IPv4).
func OuterIPv4HeaderOK(frame []byte) bool {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	ip, ok := p.NetworkLayer().(*layers.IPv4)
	if !ok {
		return true
	}
	err, r := ip.VerifyChecksum()
	return err == nil && r.Valid
}
