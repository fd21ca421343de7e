package controlplane

import (
	"fmt"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// frameSummary decodes a frame's headers into one line, outermost first:
// "eth 02:..:01 > 02:..:02 | ipv4 198.18.0.2 > 198.18.1.12 ttl 64 | ipv4
// 198.18.0.10 > 198.18.10.10 ttl 63 | tcp 40001 > 80". It uses gopacket, not
// the program's or the model's code.
func frameSummary(frame []byte) string {
	if len(frame) == 0 {
		return ""
	}
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var parts []string
	for _, l := range pkt.Layers() {
		switch h := l.(type) {
		case *layers.Ethernet:
			parts = append(parts, fmt.Sprintf("eth %s > %s", h.SrcMAC, h.DstMAC))
		case *layers.Dot1Q:
			parts = append(parts, fmt.Sprintf("vlan %d", h.VLANIdentifier))
		case *layers.IPv4:
			parts = append(parts, fmt.Sprintf("ipv4 %s > %s ttl %d", h.SrcIP, h.DstIP, h.TTL))
		case *layers.IPv6:
			parts = append(parts, fmt.Sprintf("ipv6 %s > %s hlim %d", h.SrcIP, h.DstIP, h.HopLimit))
		case *layers.TCP:
			parts = append(parts, fmt.Sprintf("tcp %d > %d", h.SrcPort, h.DstPort))
		case *layers.UDP:
			parts = append(parts, fmt.Sprintf("udp %d > %d", h.SrcPort, h.DstPort))
		case *layers.ICMPv4:
			parts = append(parts, fmt.Sprintf("icmp %s", h.TypeCode))
		case *layers.ICMPv6:
			parts = append(parts, fmt.Sprintf("icmp6 %s", h.TypeCode))
		}
	}
	if err := pkt.ErrorLayer(); err != nil {
		parts = append(parts, "undecodable: "+err.Error().Error())
	}
	return strings.Join(parts, " | ")
}
