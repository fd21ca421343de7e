package gpcheck

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/internal/packet"
)

func TestProblems(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	ip := func(bad bool, tcpBad bool) []byte {
		return packet.MustBuild(packet.Ethernet{Dst: mac, Src: mac, Payload: packet.IPv4{
			Src: netip.MustParseAddr("198.18.1.1"), Dst: netip.MustParseAddr("198.19.0.1"), TTL: 64, BadChecksum: bad,
			Payload: packet.TCP{SrcPort: 1, DstPort: 80, Flags: packet.TCPAck, BadChecksum: tcpBad, Payload: []byte("x")},
		}})
	}
	encap := func(innerBad bool) []byte {
		inner := packet.MustBuild(packet.IPv4{
			Src: netip.MustParseAddr("198.18.1.1"), Dst: netip.MustParseAddr("198.19.0.1"), TTL: 64,
			Payload: packet.UDP{SrcPort: 1, DstPort: 5353, BadChecksum: innerBad, Payload: []byte("abc")},
		})
		return packet.MustBuild(packet.Ethernet{Dst: mac, Src: mac, Payload: packet.IPv6{
			Src: netip.MustParseAddr("2001:db8:3::1"), Dst: netip.MustParseAddr("2001:db8:2::1"), HopLimit: 64, Payload: packet.RawIP(inner),
		}})
	}
	for _, c := range []struct {
		name  string
		frame []byte
		want  string // a substring of the problems; "" for none
	}{
		{"sound", ip(false, false), ""},
		{"IPv4 header checksum", ip(true, false), "IPv4"},
		{"TCP checksum", ip(false, true), "TCP"},
		{"4in6 sound", encap(false), ""},
		{"4in6 inner UDP checksum", encap(true), "UDP"},
		{"cut short", ip(false, false)[:30], "cannot decode"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(Problems(c.frame), "; ")
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Errorf("problems %q, want %q", got, c.want)
			}
		})
	}
	if !OuterIPv4HeaderOK(encap(false)) || OuterIPv4HeaderOK(ip(true, false)) {
		t.Error("OuterIPv4HeaderOK is wrong")
	}
}
