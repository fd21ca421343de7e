package announce

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/bpf"

	"github.com/xdplb/xdplb/internal/packet"
)

// The test LAN: the announcer's interface (ourMAC), an asker and another
// host, VIPs inside 198.18.0.0/24 and 2001:db8::/64.
var (
	ourMAC   = net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x00, 0x02}
	askerMAC = net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x00, 0x0a}
	otherMAC = net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x00, 0x0b}
	bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	vip4   = netip.MustParseAddr("198.18.0.100")
	asker4 = netip.MustParseAddr("198.18.0.10")
	other4 = netip.MustParseAddr("198.18.0.101")
	zero4  = netip.MustParseAddr("0.0.0.0")

	vip6   = netip.MustParseAddr("2001:db8::100")
	asker6 = netip.MustParseAddr("2001:db8::10")
	other6 = netip.MustParseAddr("2001:db8::101")

	// vip6's solicited-node group and its Ethernet address.
	vip6SNM    = netip.MustParseAddr("ff02::1:ff00:100")
	vip6SNMMAC = net.HardwareAddr{0x33, 0x33, 0xff, 0x00, 0x01, 0x00}
	other6SNM  = netip.MustParseAddr("ff02::1:ff00:101")
)

// newTestResponder returns a responder for ourMAC with vips active and a
// reply budget that a table test never exhausts.
func newTestResponder(vips ...netip.Addr) *responder {
	r := newResponder(ourMAC, newTokenBucket(1000, 1000))
	set := vipSet{}
	for _, v := range vips {
		set[v] = &vipCounters{}
	}
	r.vips.Store(&set)
	return r
}

// arpPayload writes an Ethernet/IPv4 ARP packet byte by byte (RFC 826), apart
// from the library under test.
func arpPayload(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 0x08, 0x00, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.AsSlice()...)
	b = append(b, tha...)
	return append(b, tpa.AsSlice()...)
}

// arpEth puts an ARP payload in an Ethernet frame padded to 60 bytes.
func arpEth(dst, src net.HardwareAddr, payload []byte) []byte {
	b := packet.MustBuild(packet.Ethernet{Dst: dst, Src: src, EtherType: packet.EtherTypeARP, Payload: packet.Raw(payload)})
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

func arpRequest(dst net.HardwareAddr, spa, tpa netip.Addr) []byte {
	return arpEth(dst, askerMAC, arpPayload(1, askerMAC, spa, zeroMAC, tpa))
}

func TestHandleARP(t *testing.T) {
	request := arpRequest(bcastMAC, asker4, vip4)
	for _, tc := range []struct {
		name       string
		frame      []byte
		wantReason Reason
		wantVIP    netip.Addr
		wantReply  []byte
	}{
		{
			name:       "broadcast request for a VIP",
			frame:      request,
			wantReason: ReasonAnswered, wantVIP: vip4,
			wantReply: arpEth(askerMAC, ourMAC, arpPayload(2, ourMAC, vip4, askerMAC, asker4)),
		},
		{
			name:       "unicast request for a VIP to our MAC",
			frame:      arpRequest(ourMAC, asker4, vip4),
			wantReason: ReasonAnswered, wantVIP: vip4,
			wantReply: arpEth(askerMAC, ourMAC, arpPayload(2, ourMAC, vip4, askerMAC, asker4)),
		},
		{
			name:       "reply goes to the ARP sender hardware address",
			frame:      arpEth(bcastMAC, otherMAC, arpPayload(1, askerMAC, asker4, zeroMAC, vip4)),
			wantReason: ReasonAnswered, wantVIP: vip4,
			wantReply: arpEth(askerMAC, ourMAC, arpPayload(2, ourMAC, vip4, askerMAC, asker4)),
		},
		{
			name:       "probe (RFC 5227) for a VIP",
			frame:      arpRequest(bcastMAC, zero4, vip4),
			wantReason: ReasonAnswered, wantVIP: vip4,
			wantReply: arpEth(askerMAC, ourMAC, arpPayload(2, ourMAC, vip4, askerMAC, zero4)),
		},
		{
			name:       "request for another address",
			frame:      arpRequest(bcastMAC, asker4, other4),
			wantReason: ReasonNotOurs,
		},
		{
			name:       "request for the host's own address",
			frame:      arpRequest(bcastMAC, asker4, netip.MustParseAddr("198.18.0.2")),
			wantReason: ReasonNotOurs,
		},
		{
			name:       "unicast request for a VIP to another MAC",
			frame:      arpRequest(otherMAC, asker4, vip4),
			wantReason: ReasonNotOurs,
		},
		{
			name:       "reply",
			frame:      arpEth(ourMAC, otherMAC, arpPayload(2, otherMAC, other4, ourMAC, asker4)),
			wantReason: ReasonReplyIgnored,
		},
		{
			name:       "reply from another host claiming a VIP",
			frame:      arpEth(bcastMAC, otherMAC, arpPayload(2, otherMAC, vip4, otherMAC, vip4)),
			wantReason: ReasonReplyIgnored, wantVIP: vip4,
		},
		{
			name:       "gratuitous request from another host for a VIP",
			frame:      arpEth(bcastMAC, otherMAC, arpPayload(1, otherMAC, vip4, zeroMAC, vip4)),
			wantReason: ReasonNotARequest, wantVIP: vip4,
		},
		{
			name:       "gratuitous request of another host for its address",
			frame:      arpEth(bcastMAC, otherMAC, arpPayload(1, otherMAC, other4, zeroMAC, other4)),
			wantReason: ReasonNotOurs,
		},
		{
			name:       "RARP request operation",
			frame:      arpEth(bcastMAC, askerMAC, arpPayload(3, askerMAC, asker4, askerMAC, vip4)),
			wantReason: ReasonNotARequest,
		},
		{
			name:       "frame shorter than an Ethernet header",
			frame:      request[:10],
			wantReason: ReasonMalformed,
		},
		{
			name:       "ARP packet cut short",
			frame:      request[:14+20],
			wantReason: ReasonMalformed,
		},
		{
			name:       "ARP header cut short",
			frame:      request[:14+6],
			wantReason: ReasonMalformed,
		},
		{
			name:       "hardware type not Ethernet",
			frame:      patch(request, 14, 0x00, 0x06),
			wantReason: ReasonMalformed,
		},
		{
			name:       "protocol type not IPv4",
			frame:      patch(request, 16, 0x86, 0xdd),
			wantReason: ReasonMalformed,
		},
		{
			name:       "hardware address length 8",
			frame:      patch(request, 18, 8),
			wantReason: ReasonMalformed,
		},
		{
			name:       "protocol address length 16",
			frame:      patch(request, 19, 16),
			wantReason: ReasonMalformed,
		},
		{
			name:       "EtherType IPv4",
			frame:      patch(request, 12, 0x08, 0x00),
			wantReason: ReasonMalformed,
		},
		{
			name:       "VLAN tag",
			frame:      slices.Concat(request[:12], []byte{0x81, 0x00, 0x00, 0x0a}, request[12:]),
			wantReason: ReasonMalformed,
		},
		{
			name:       "sender hardware address broadcast",
			frame:      arpEth(bcastMAC, askerMAC, arpPayload(1, bcastMAC, asker4, zeroMAC, vip4)),
			wantReason: ReasonMalformed,
		},
		{
			name:       "sender hardware address zero",
			frame:      arpEth(bcastMAC, askerMAC, arpPayload(1, zeroMAC, asker4, zeroMAC, vip4)),
			wantReason: ReasonMalformed,
		},
		{
			name:       "Ethernet source multicast",
			frame:      arpEth(bcastMAC, vip6SNMMAC, arpPayload(1, askerMAC, asker4, zeroMAC, vip4)),
			wantReason: ReasonMalformed,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestResponder(vip4, vip6)
			reply, vip, reason := r.handleARP(tc.frame)
			if reason != tc.wantReason || vip != tc.wantVIP {
				t.Errorf("handleARP = reason %q, VIP %v; want %q, %v", reason, vip, tc.wantReason, tc.wantVIP)
			}
			if d := packet.Diff(tc.wantReply, reply); d != "" {
				t.Errorf("reply (-want +got):\n%s", d)
			}
		})
	}
}

// patch returns a copy of b with the bytes at off replaced by v.
func patch(b []byte, off int, v ...byte) []byte {
	b = slices.Clone(b)
	copy(b[off:], v)
	return b
}

// ns describes a neighbour solicitation frame; nsFrame builds it with the
// fixture builder, whose checksum code is not the code under test.
type ns struct {
	ethDst, ethSrc net.HardwareAddr
	src, dst       netip.Addr
	target         netip.Addr
	hopLimit       uint8
	code           uint8
	options        []byte
	badChecksum    bool
}

func sllaOption(mac net.HardwareAddr) []byte { return append([]byte{1, 1}, mac...) }

// validNS is a solicitation from the asker for vip6 to its solicited-node
// group, with a source link-layer address option.
func validNS() ns {
	return ns{
		ethDst: vip6SNMMAC, ethSrc: askerMAC,
		src: asker6, dst: vip6SNM, target: vip6,
		hopLimit: 255, options: sllaOption(askerMAC),
	}
}

func (n ns) with(f func(*ns)) ns { f(&n); return n }

func (n ns) frame() []byte {
	return packet.MustBuild(packet.Ethernet{
		Dst: n.ethDst, Src: n.ethSrc,
		Payload: packet.IPv6{
			Src: n.src, Dst: n.dst, HopLimit: n.hopLimit,
			Payload: packet.ICMPv6{Type: 135, Code: n.code, Body: append(n.target.AsSlice(), n.options...), BadChecksum: n.badChecksum},
		},
	})
}

// NA flags in the first byte after the ICMPv6 header (RFC 4861 4.4).
const (
	flagSolicited = 0x40
	flagOverride  = 0x20
)

// wantNA is the advertisement for vip6 from ourMAC, built with the fixture
// builder.
func wantNA(ethDst net.HardwareAddr, dst netip.Addr, flags byte) []byte {
	return packet.MustBuild(packet.Ethernet{
		Dst: ethDst, Src: ourMAC,
		Payload: packet.IPv6{
			Src: vip6, Dst: dst, HopLimit: 255,
			Payload: packet.ICMPv6{Type: 136, Rest: [4]byte{flags}, Body: append(vip6.AsSlice(), append([]byte{2, 1}, ourMAC...)...)},
		},
	})
}

// naFrom is an advertisement from another host.
func naFrom(target netip.Addr) []byte {
	return packet.MustBuild(packet.Ethernet{
		Dst: allNodesMAC, Src: otherMAC,
		Payload: packet.IPv6{
			Src: other6, Dst: allNodes, HopLimit: 255,
			Payload: packet.ICMPv6{Type: 136, Rest: [4]byte{flagOverride}, Body: append(target.AsSlice(), append([]byte{2, 1}, otherMAC...)...)},
		},
	})
}

func TestHandleNDP(t *testing.T) {
	valid := validNS().frame()
	solicited := wantNA(askerMAC, asker6, flagSolicited|flagOverride)
	for _, tc := range []struct {
		name       string
		frame      []byte
		wantReason Reason
		wantVIP    netip.Addr
		wantReply  []byte
	}{
		{
			name:       "solicitation for a VIP to its solicited-node group",
			frame:      valid,
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: solicited,
		},
		{
			name:       "solicitation without source link-layer address option",
			frame:      validNS().with(func(n *ns) { n.options = nil }).frame(),
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: solicited,
		},
		{
			name: "the option's address is preferred to the frame's source",
			frame: validNS().with(func(n *ns) {
				n.ethSrc = otherMAC
			}).frame(),
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: solicited,
		},
		{
			name: "unicast solicitation to the VIP at our MAC (NUD)",
			frame: validNS().with(func(n *ns) {
				n.ethDst, n.dst = ourMAC, vip6
			}).frame(),
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: solicited,
		},
		{
			name: "duplicate address detection for a VIP",
			frame: validNS().with(func(n *ns) {
				n.src, n.options = netip.IPv6Unspecified(), nil
			}).frame(),
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: wantNA(allNodesMAC, allNodes, flagOverride),
		},
		{
			name: "Ethernet padding after the packet",
			frame: func() []byte {
				f := validNS().with(func(n *ns) { n.options = nil }).frame()
				return append(f, make([]byte, 8)...)
			}(),
			wantReason: ReasonAnswered, wantVIP: vip6,
			wantReply: solicited,
		},
		{
			name: "solicitation for another address",
			frame: validNS().with(func(n *ns) {
				n.target, n.dst, n.ethDst = other6, other6SNM, multicastMAC(other6SNM)
			}).frame(),
			wantReason: ReasonNotOurs,
		},
		{
			name: "solicitation for a VIP sent to another group",
			frame: validNS().with(func(n *ns) {
				n.dst, n.ethDst = other6SNM, multicastMAC(other6SNM)
			}).frame(),
			wantReason: ReasonNotOurs,
		},
		{
			name: "solicitation for a VIP to the group at another MAC",
			frame: validNS().with(func(n *ns) {
				n.ethDst = allNodesMAC
			}).frame(),
			wantReason: ReasonNotOurs,
		},
		{
			name: "unicast solicitation for a VIP to another MAC",
			frame: validNS().with(func(n *ns) {
				n.ethDst, n.dst = otherMAC, vip6
			}).frame(),
			wantReason: ReasonNotOurs,
		},
		{
			name:       "advertisement",
			frame:      naFrom(other6),
			wantReason: ReasonReplyIgnored,
		},
		{
			name:       "advertisement from another host for a VIP",
			frame:      naFrom(vip6),
			wantReason: ReasonReplyIgnored, wantVIP: vip6,
		},
		{
			name: "echo request",
			frame: packet.MustBuild(packet.Ethernet{Dst: ourMAC, Src: askerMAC, Payload: packet.IPv6{
				Src: asker6, Dst: vip6, HopLimit: 64, Payload: packet.ICMPv6{Type: 128, Rest: packet.EchoRest(1, 1)},
			}}),
			wantReason: ReasonNotARequest,
		},
		{
			name: "router solicitation",
			frame: packet.MustBuild(packet.Ethernet{Dst: multicastMAC(netip.MustParseAddr("ff02::2")), Src: askerMAC, Payload: packet.IPv6{
				Src: asker6, Dst: netip.MustParseAddr("ff02::2"), HopLimit: 255, Payload: packet.ICMPv6{Type: 133},
			}}),
			wantReason: ReasonNotARequest,
		},
		{
			name: "UDP",
			frame: packet.MustBuild(packet.Ethernet{Dst: ourMAC, Src: askerMAC, Payload: packet.IPv6{
				Src: asker6, Dst: vip6, HopLimit: 64, Payload: packet.UDP{SrcPort: 1, DstPort: 2},
			}}),
			wantReason: ReasonNotARequest,
		},
		{
			name:       "hop limit 64: routed from elsewhere",
			frame:      validNS().with(func(n *ns) { n.hopLimit = 64 }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "bad checksum",
			frame:      validNS().with(func(n *ns) { n.badChecksum = true }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "code 1",
			frame:      validNS().with(func(n *ns) { n.code = 1 }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "option of length zero",
			frame:      validNS().with(func(n *ns) { n.options = make([]byte, 8) }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "option longer than the packet",
			frame:      validNS().with(func(n *ns) { n.options = []byte{1, 2, 0, 0, 0, 0, 0, 0} }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "source link-layer address option of 16 bytes",
			frame:      validNS().with(func(n *ns) { n.options = append([]byte{1, 2}, make([]byte, 14)...) }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name: "solicitation shorter than 24 bytes",
			frame: packet.MustBuild(packet.Ethernet{Dst: vip6SNMMAC, Src: askerMAC, Payload: packet.IPv6{
				Src: asker6, Dst: vip6SNM, HopLimit: 255, Payload: packet.ICMPv6{Type: 135, Body: vip6.AsSlice()[:12]},
			}}),
			wantReason: ReasonMalformed,
		},
		{
			name: "multicast target",
			frame: validNS().with(func(n *ns) {
				n.target = netip.MustParseAddr("ff02::1:ff00:100")
			}).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name: "duplicate address detection with a source link-layer address option",
			frame: validNS().with(func(n *ns) {
				n.src = netip.IPv6Unspecified()
			}).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name: "duplicate address detection to a unicast address",
			frame: validNS().with(func(n *ns) {
				n.src, n.options, n.dst, n.ethDst = netip.IPv6Unspecified(), nil, vip6, ourMAC
			}).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "multicast source address",
			frame:      validNS().with(func(n *ns) { n.src = netip.MustParseAddr("ff02::1") }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "Ethernet source multicast",
			frame:      validNS().with(func(n *ns) { n.ethSrc, n.options = allNodesMAC, nil }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "source link-layer address broadcast",
			frame:      validNS().with(func(n *ns) { n.options = sllaOption(bcastMAC) }).frame(),
			wantReason: ReasonMalformed,
		},
		{
			name:       "payload length beyond the frame",
			frame:      valid[:len(valid)-8],
			wantReason: ReasonMalformed,
		},
		{
			name:       "IPv6 header cut short",
			frame:      valid[:14+39],
			wantReason: ReasonMalformed,
		},
		{
			name:       "IP version 4",
			frame:      patch(valid, 14, 0x45),
			wantReason: ReasonMalformed,
		},
		{
			name:       "EtherType ARP",
			frame:      patch(valid, 12, 0x08, 0x06),
			wantReason: ReasonMalformed,
		},
		{
			name:       "frame shorter than an Ethernet header",
			frame:      valid[:13],
			wantReason: ReasonMalformed,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestResponder(vip4, vip6)
			reply, vip, reason := r.handleNDP(tc.frame)
			if reason != tc.wantReason || vip != tc.wantVIP {
				t.Errorf("handleNDP = reason %q, VIP %v; want %q, %v", reason, vip, tc.wantReason, tc.wantVIP)
			}
			if d := packet.Diff(tc.wantReply, reply); d != "" {
				t.Errorf("reply (-want +got):\n%s", d)
			}
			if reply != nil {
				if err := packet.VerifyFrame(reply); err != nil {
					t.Errorf("reply: %v", err)
				}
			}
		})
	}
}

// TestNAChecksums checks the advertisements' checksums for several VIPs and
// destinations with the fixture checker, which shares no code with
// naFrame.
func TestNAChecksums(t *testing.T) {
	for _, vip := range []string{"2001:db8::100", "2001:db8:ffff::ffff", "2001:db8::1", "fe80::1", "2001:db8:0:1:2:3:4:5"} {
		v := netip.MustParseAddr(vip)
		for _, dst := range []netip.Addr{allNodes, asker6, netip.MustParseAddr("fe80::ffff:ffff:ffff:ffff")} {
			f, err := naFrame(ourMAC, askerMAC, v, dst, v, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := packet.VerifyFrame(f); err != nil {
				t.Errorf("NA for %v to %v: %v", v, dst, err)
			}
		}
	}
}

func TestHandlersNoVIPs(t *testing.T) {
	r := newTestResponder()
	if _, _, reason := r.handleARP(arpRequest(bcastMAC, asker4, vip4)); reason != ReasonNotOurs {
		t.Errorf("handleARP with no VIPs = %q, want %q", reason, ReasonNotOurs)
	}
	if _, _, reason := r.handleNDP(validNS().frame()); reason != ReasonNotOurs {
		t.Errorf("handleNDP with no VIPs = %q, want %q", reason, ReasonNotOurs)
	}
	// A VIP of the other family is no VIP of this one.
	r = newTestResponder(netip.MustParseAddr("::ffff:198.18.0.100"))
	if _, _, reason := r.handleARP(arpRequest(bcastMAC, asker4, vip4)); reason != ReasonNotOurs {
		t.Errorf("handleARP with only an IPv4-mapped IPv6 VIP = %q, want %q", reason, ReasonNotOurs)
	}
}

// TestRateLimit checks that ARP and NDP replies share one token bucket per
// interface.
func TestRateLimit(t *testing.T) {
	r := newResponder(ourMAC, newTokenBucket(2, 3))
	set := vipSet{vip4: {}, vip6: {}}
	r.vips.Store(&set)
	start := time.Unix(1000, 0)
	now := start
	r.now = func() time.Time { return now }

	arpReq, ns := arpRequest(bcastMAC, asker4, vip4), validNS().frame()
	type step struct {
		At     time.Duration
		Proto  string
		Reason string
	}
	var got []step
	do := func(at time.Duration, proto string) {
		now = start.Add(at)
		var reason Reason
		if proto == "ARP" {
			_, _, reason = r.handleARP(arpReq)
		} else {
			_, _, reason = r.handleNDP(ns)
		}
		got = append(got, step{at, proto, reason.String()})
	}
	do(0, "ARP")
	do(0, "NDP")
	do(0, "ARP")
	do(0, "NDP") // burst of 3 spent
	do(100*time.Millisecond, "ARP")
	do(500*time.Millisecond, "ARP") // 2/s: one token after 500 ms
	do(500*time.Millisecond, "NDP")
	do(time.Second, "NDP")
	do(10*time.Second, "ARP") // refilled to the burst, not beyond
	do(10*time.Second, "ARP")
	do(10*time.Second, "NDP")
	do(10*time.Second, "NDP")
	// Requests that are not ours cost no token.
	_, _, reason := r.handleARP(arpRequest(bcastMAC, asker4, other4))
	got = append(got, step{10 * time.Second, "ARP for another address", reason.String()})

	want := []step{
		{0, "ARP", "answered"},
		{0, "NDP", "answered"},
		{0, "ARP", "answered"},
		{0, "NDP", "rate limited"},
		{100 * time.Millisecond, "ARP", "rate limited"},
		{500 * time.Millisecond, "ARP", "answered"},
		{500 * time.Millisecond, "NDP", "rate limited"},
		{time.Second, "NDP", "answered"},
		{10 * time.Second, "ARP", "answered"},
		{10 * time.Second, "ARP", "answered"},
		{10 * time.Second, "NDP", "answered"},
		{10 * time.Second, "NDP", "rate limited"},
		{10 * time.Second, "ARP for another address", "not ours"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("replies (-want +got):\n%s", d)
	}
}

// TestNDPFilter runs the IPv6 socket's filter in the BPF interpreter.
func TestNDPFilter(t *testing.T) {
	vm, err := bpf.NewVM(ndpFilterProgram)
	if err != nil {
		t.Fatal(err)
	}
	mld := packet.MustBuild(packet.Ethernet{Dst: multicastMAC(vip6SNM), Src: askerMAC, Payload: packet.IPv6{
		Src: asker6, Dst: netip.MustParseAddr("ff02::16"), HopLimit: 1,
		ExtHeaders: []packet.IPv6ExtHeader{packet.HopByHopHeader([]byte{5, 2, 0, 0})},
		Payload:    packet.ICMPv6{Type: 143},
	}})
	for _, tc := range []struct {
		name  string
		frame []byte
		keep  bool
	}{
		{"neighbour solicitation", validNS().frame(), true},
		{"neighbour advertisement", naFrom(other6), true},
		{"echo request", packet.MustBuild(packet.Ethernet{Dst: ourMAC, Src: askerMAC, Payload: packet.IPv6{
			Src: asker6, Dst: vip6, HopLimit: 64, Payload: packet.ICMPv6{Type: 128},
		}}), false},
		{"TCP", packet.MustBuild(packet.Ethernet{Dst: ourMAC, Src: askerMAC, Payload: packet.IPv6{
			Src: asker6, Dst: vip6, HopLimit: 64, Payload: packet.TCP{SrcPort: 1, DstPort: 135},
		}}), false},
		{"MLD report behind a hop-by-hop header", mld, false},
		{"frame cut before the ICMPv6 type", validNS().frame()[:54], false},
	} {
		n, err := vm.Run(tc.frame)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if keep := n > 0; keep != tc.keep {
			t.Errorf("%s: filter keeps %d bytes, want kept=%v", tc.name, n, tc.keep)
		}
		if tc.keep && n < len(tc.frame) {
			t.Errorf("%s: filter keeps %d of %d bytes", tc.name, n, len(tc.frame))
		}
	}
}

func TestSolicitedNode(t *testing.T) {
	for _, tc := range []struct{ addr, want, mac string }{
		{"2001:db8::100", "ff02::1:ff00:100", "33:33:ff:00:01:00"},
		{"2001:db8:1:2:3:4:5678:9abc", "ff02::1:ff78:9abc", "33:33:ff:78:9a:bc"},
		{"fe80::1", "ff02::1:ff00:1", "33:33:ff:00:00:01"},
	} {
		got := solicitedNode(netip.MustParseAddr(tc.addr))
		if got.String() != tc.want {
			t.Errorf("solicitedNode(%s) = %v, want %s", tc.addr, got, tc.want)
		}
		if mac := multicastMAC(got).String(); mac != tc.mac {
			t.Errorf("multicastMAC(%v) = %s, want %s", got, mac, tc.mac)
		}
	}
}

func TestReasonStrings(t *testing.T) {
	var got []string
	for r := range numReasons + 1 {
		got = append(got, r.String()+"/"+r.Label())
	}
	want := []string{
		"answered/answered", "not ours/not_ours", "reply ignored/reply_ignored", "malformed/malformed",
		"rate limited/rate_limited", "not a request/not_a_request", "unknown/unknown",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("reasons (-want +got):\n%s", d)
	}
}
