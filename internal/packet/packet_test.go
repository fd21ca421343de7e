package packet

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	macA = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x0a}
	macB = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}

	client4 = netip.MustParseAddr("198.18.0.10")
	lb4     = netip.MustParseAddr("198.18.0.2")
	b14     = netip.MustParseAddr("198.18.0.11")
	vip4    = netip.MustParseAddr("198.18.100.1")
	client6 = netip.MustParseAddr("2001:db8::10")
	lb6     = netip.MustParseAddr("2001:db8::2")
	b16     = netip.MustParseAddr("2001:db8::11")
	vip6    = netip.MustParseAddr("2001:db8:100::1")
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChecksumRFC1071Example uses the numerical example of RFC 1071 section 3:
// the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d.
func TestChecksumRFC1071Example(t *testing.T) {
	data := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := checksum(data); got != 0x220d {
		t.Errorf("checksum = %#04x, want 0x220d", got)
	}
	if got := onesSum(0, data); got != 0xddf2 {
		t.Errorf("onesSum = %#04x, want 0xddf2", got)
	}
	// Split at an even offset, as the pseudo-header is.
	if got := checksum(data[:2], data[2:]); got != 0x220d {
		t.Errorf("checksum of parts = %#04x, want 0x220d", got)
	}
}

// wellKnownIPv4Header is the example header from the Wikipedia article on the
// IPv4 header checksum (a UDP packet from 192.168.0.1 to 192.168.0.199); only
// bytes in memory, never sent anywhere.
const wellKnownIPv4Header = "4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7"

func TestIPv4HeaderWellKnownExample(t *testing.T) {
	want := unhex(t, wellKnownIPv4Header)
	if err := VerifyIPv4HeaderChecksum(want); err != nil {
		t.Errorf("VerifyIPv4HeaderChecksum(example) = %v, want nil", err)
	}
	got := MustBuild(IPv4{
		Src:      netip.MustParseAddr("192.168.0.1"),
		Dst:      netip.MustParseAddr("192.168.0.199"),
		TTL:      64,
		Flags:    IPv4DontFragment,
		Protocol: ProtoUDP,
		Payload:  Raw(make([]byte, 0x73-20)),
	})
	if d := DiffIP(want, got[:20]); d != "" {
		t.Errorf("built header differs from the example:\n%s", d)
	}
	bad := bytes.Clone(want)
	bad[11] ^= 1 // b861 -> b860
	err := VerifyIPv4HeaderChecksum(bad)
	if want := "ipv4 header checksum is 0xb860, want 0xb861: bad checksum"; err == nil || err.Error() != want {
		t.Errorf("VerifyIPv4HeaderChecksum(bad) = %v, want %q", err, want)
	}
}

// TestBuildKnownGood compares builds with bytes computed independently (by a
// short Python script using struct.pack and RFC 1071, not by this package).
func TestBuildKnownGood(t *testing.T) {
	tests := []struct {
		name  string
		layer Layer
		want  string
	}{
		{
			name: "udp4",
			layer: IPv4{Src: client4, Dst: vip4, ID: 0x1234, Flags: IPv4DontFragment, TTL: 64,
				Payload: UDP{SrcPort: 40000, DstPort: 53, Payload: []byte("hello")}},
			want: "4500 0021 1234 4000 4011 3868 c612 000a c612 6401" +
				"9c40 0035 000d 2f5c 6865 6c6c 6f",
		},
		{
			name: "tcp6 syn with mss",
			layer: IPv6{Src: client6, Dst: vip6, FlowLabel: 0x12345, HopLimit: 64,
				Payload: TCP{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: TCPSyn, Window: 65535,
					Options: []byte{2, 4, 0x05, 0xb4}}},
			want: "6001 2345 0018 0640 20010db8000000000000000000000010 20010db8010000000000000000000001" +
				"9c40 0050 0000 0001 0000 0000 6002 ffff 9f12 0000 0204 05b4",
		},
		{
			name: "icmp6 echo",
			layer: IPv6{Src: client6, Dst: b16, HopLimit: 255,
				Payload: ICMPv6{Type: ICMPv6EchoRequest, Rest: EchoRest(7, 1), Body: []byte("ping")}},
			want: "6000 0000 000c 3aff 20010db8000000000000000000000010 20010db8000000000000000000000011" +
				"8000 454d 0007 0001 7069 6e67",
		},
		{
			name: "icmp4 echo",
			layer: IPv4{Src: client4, Dst: b14, TTL: 64,
				Payload: ICMPv4{Type: ICMPv4EchoRequest, Rest: EchoRest(7, 1), Body: []byte("ping")}},
			want: "4500 0020 0000 0000 4001 eea3 c612 000a c612 000b" +
				"0800 1927 0007 0001 7069 6e67",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(tt.layer)
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tt.want)
			if d := DiffIP(want, got); d != "" {
				t.Errorf("Build differs:\n%s", d)
			}
			if err := VerifyPacket(want); err != nil {
				t.Errorf("VerifyPacket(known good) = %v", err)
			}
		})
	}
}

func TestBuildFields(t *testing.T) {
	tests := []struct {
		name  string
		layer Layer
		want  string
	}{
		{
			name: "ethernet with vlan",
			layer: Ethernet{Dst: macB, Src: macA, VLAN: &VLAN{Priority: 5, DropEligible: true, ID: 0x123},
				Payload: Raw{0xaa}, EtherType: 0x1234},
			want: "020000000002 02000000000a 8100 b123 1234 aa",
		},
		{
			name: "ethernet qinq tpid",
			layer: Ethernet{VLAN: &VLAN{TPID: EtherTypeQinQ, ID: 7},
				Payload: RawIP{0x45}},
			want: "000000000000 000000000000 88a8 0007 0800 45",
		},
		{
			name: "ipv4 flags fragment options and overrides",
			layer: IPv4{Src: client4, Dst: vip4, TOS: 0xb8, ID: 1, TTL: 1,
				Flags: IPv4MoreFragments | IPv4Reserved, FragmentOffset: 0x123,
				Options:  []byte{0x94, 0x04, 0x00}, // router alert, padded to 4; IHL 5 lies
				Protocol: 0xfd, IHL: 5, TotalLength: 0xffff, Version: 7, BadChecksum: false,
				Payload: Raw{1, 2}},
			want: "75b8 ffff 0001 a123 01fd 62f0 c612000a c6126401 94040000 0102",
		},
		{
			name: "tcp flags and data offset override",
			layer: IPv4{Src: client4, Dst: vip4, TTL: 64, Payload: TCP{SrcPort: 1, DstPort: 2, Seq: 3, Ack: 4,
				Flags: TCPAE | TCPCwr | TCPAck | TCPFin, Urgent: 9, DataOffset: 15}},
			want: "4500 0028 0000 0000 4006 8aa0 c612000a c6126401" +
				"0001 0002 00000003 00000004 f191 0000 1e10 0009",
		},
		{
			name: "udp length override and no checksum",
			layer: IPv4{Src: client4, Dst: vip4, TTL: 64,
				Payload: UDP{SrcPort: 1, DstPort: 2, Length: 100, NoChecksum: true, Payload: []byte{9}}},
			want: "4500 001d 0000 0000 4011 8aa0 c612000a c6126401 0001 0002 0064 0000 09",
		},
		{
			name: "ipv6 traffic class and ext header chain",
			layer: IPv6{Src: client6, Dst: vip6, TrafficClass: 0xab, FlowLabel: 0xfffff, HopLimit: 3,
				ExtHeaders: []IPv6ExtHeader{HopByHopHeader([]byte{5, 2, 0, 0}), FragmentHeader(0x10, true, 0xdeadbeef)},
				Payload:    Raw{0xee}},
			want: "6abf ffff 0011 0003 20010db8000000000000000000000010 20010db8010000000000000000000001" +
				"2c00 0502 0000 0100" + // hop-by-hop: next fragment, router alert, PadN(0)
				"0000 0081 deadbeef" + // fragment: next header 0 (Raw), offset 0x10, M
				"ee",
		},
		{
			name: "ipv6 dst opts padding and routing",
			layer: IPv6{Src: client6, Dst: vip6, NextHeader: 99, PayloadLength: 7,
				ExtHeaders: []IPv6ExtHeader{DstOptsHeader([]byte{0x1e, 0x03, 1, 2, 3}), RoutingHeader(4, 0, []byte{0, 0, 0, 0})},
				Payload:    ICMPv6{Type: ICMPv6EchoReply}},
			want: "6000 0000 0007 6300 20010db8000000000000000000000010 20010db8010000000000000000000001" +
				"2b00 1e03 0102 0300" + // dst opts, Pad1
				"3a00 0400 0000 0000" + // routing type 4 (SRH) with 0 segments left
				"8100 223a 0000 0000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(tt.layer)
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tt.want)
			diff := Diff
			if isIP(tt.layer) {
				diff = DiffIP
			}
			if d := diff(want, got); d != "" {
				t.Errorf("Build differs:\n%s", d)
			}
		})
	}
}

func isIP(l Layer) bool {
	switch l.(type) {
	case IPv4, IPv6:
		return true
	}
	return false
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name  string
		layer Layer
		want  string
	}{
		{"nil", nil, "building packet: nil layer"},
		{"raw needs ethertype", Ethernet{Payload: Raw{1}}, "ethernet: EtherType not set and payload packet.Raw does not imply one"},
		{"bad mac", Ethernet{Dst: net.HardwareAddr{1}, Payload: RawIP{0x45}}, `ethernet: MAC address "01" is 1 bytes, want 6`},
		{"v6 in ipv4", IPv4{Src: client6, Dst: vip4}, "ipv4: addresses 2001:db8::10 and 198.18.100.1 must be IPv4"},
		{"v4 in ipv6", IPv6{Src: client4, Dst: vip6}, "ipv6: addresses 198.18.0.10 and 2001:db8:100::1 must be IPv6"},
		{"tcp alone", TCP{}, "tcp: checksum needs an enclosing IPv4 or IPv6 layer for the pseudo-header"},
		{"icmpv6 in ipv4", IPv4{Src: client4, Dst: vip4, Payload: ICMPv6{}}, "icmpv6: enclosing layer is IPv4; its checksum needs an IPv6 pseudo-header"},
		{"too many options", IPv4{Src: client4, Dst: vip4, Options: make([]byte, 41)}, "ipv4: 44 bytes of options, at most 40 fit"},
		{"fragment offset", IPv4{Src: client4, Dst: vip4, FragmentOffset: 0x2000}, "ipv4: fragment offset 8192 does not fit 13 bits"},
		{"flow label", IPv6{Src: client6, Dst: vip6, FlowLabel: 1 << 20}, "ipv6: flow label 0x100000 does not fit 20 bits"},
		{"empty ext header", IPv6{Src: client6, Dst: vip6, ExtHeaders: []IPv6ExtHeader{{Type: 60}}}, "ipv6: extension header 0 is empty"},
		{"encap non-ip", nil, "encapsulating: outer layer is packet.TCP, want IPv4 or IPv6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.name == "encap non-ip" {
				_, err = Encap(TCP{}, nil)
			} else {
				_, err = Build(tt.layer)
			}
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

// fixtures are well-formed frames of every shape the checkers walk.
func fixtures() map[string]Layer {
	inner4 := IPv4{Src: client4, Dst: vip4, TTL: 64, ID: 7, Flags: IPv4DontFragment,
		Payload: TCP{SrcPort: 40000, DstPort: 80, Seq: 100, Ack: 200, Flags: TCPAck | TCPPsh, Window: 512, Payload: []byte("GET / HTTP/1.0\r\n\r\n")}}
	inner6 := IPv6{Src: client6, Dst: vip6, HopLimit: 64,
		Payload: UDP{SrcPort: 40000, DstPort: 53, Payload: []byte("query")}}
	eth := func(p Layer) Ethernet { return Ethernet{Dst: macB, Src: macA, Payload: p} }
	homeAddr := append(make([]byte, 4), b16.AsSlice()...)
	return map[string]Layer{
		"tcp4":         eth(inner4),
		"udp6":         eth(inner6),
		"udp4 odd":     eth(IPv4{Src: client4, Dst: vip4, TTL: 64, Payload: UDP{SrcPort: 1, DstPort: 2, Payload: []byte("odd")}}),
		"tcp6 opts":    eth(IPv6{Src: client6, Dst: vip6, HopLimit: 64, Payload: TCP{SrcPort: 1, DstPort: 2, Flags: TCPSyn, Options: []byte{2, 4, 5, 0xb4, 1, 3, 3, 7}}}),
		"icmp4":        eth(IPv4{Src: client4, Dst: b14, TTL: 64, Payload: ICMPv4{Type: ICMPv4EchoRequest, Rest: EchoRest(1, 2), Body: []byte("abc")}}),
		"icmp4 pmtu":   eth(IPv4{Src: lb4, Dst: client4, TTL: 64, Payload: ICMPv4{Type: ICMPv4DestUnreachable, Code: ICMPv4CodeFragNeeded, Rest: FragNeededRest(1400), Body: MustBuild(inner4)[:28]}}),
		"icmp6 ptb":    eth(IPv6{Src: lb6, Dst: client6, HopLimit: 64, Payload: ICMPv6{Type: ICMPv6PacketTooBig, Rest: PacketTooBigRest(1280), Body: MustBuild(inner6)[:48]}}),
		"vlan tcp4":    Ethernet{Dst: macB, Src: macA, VLAN: &VLAN{ID: 100}, Payload: inner4},
		"ipv4 options": eth(IPv4{Src: client4, Dst: vip4, TTL: 64, Options: []byte{0x94, 4, 0, 0}, Payload: UDP{SrcPort: 1, DstPort: 2}}),
		"ext headers":  eth(IPv6{Src: client6, Dst: vip6, HopLimit: 64, ExtHeaders: []IPv6ExtHeader{HopByHopHeader(nil), DstOptsHeader([]byte{0x1e, 1, 0})}, Payload: TCP{SrcPort: 1, DstPort: 2}}),
		"routing type2": eth(IPv6{Src: client6, Dst: vip6, HopLimit: 64,
			ExtHeaders: []IPv6ExtHeader{RoutingHeader(2, 1, homeAddr)}, Payload: UDP{SrcPort: 1, DstPort: 2, Payload: []byte{1}}}),
		"ipip":   eth(IPv4{Src: lb4, Dst: b14, TTL: 64, Payload: inner4}),
		"6in4":   eth(IPv4{Src: lb4, Dst: b14, TTL: 64, Payload: inner6}),
		"4in6":   eth(IPv6{Src: lb6, Dst: b16, HopLimit: 64, Payload: inner4}),
		"ip6ip6": eth(IPv6{Src: lb6, Dst: b16, HopLimit: 64, Payload: inner6}),
		"ipip in ip6ip6": eth(IPv6{Src: lb6, Dst: b16, HopLimit: 64,
			Payload: IPv6{Src: lb6, Dst: b16, HopLimit: 64, Payload: IPv4{Src: lb4, Dst: b14, TTL: 3, Payload: inner4}}}),
	}
}

func TestVerifyFrameRoundTrip(t *testing.T) {
	for name, l := range fixtures() {
		t.Run(name, func(t *testing.T) {
			frame, err := Build(l)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyFrame(frame); err != nil {
				t.Errorf("VerifyFrame = %v\n%s", err, hex.Dump(frame))
			}
			// Ethernet padding to the 60-byte minimum is ignored.
			if err := VerifyFrame(append(frame, make([]byte, 64)...)); err != nil {
				t.Errorf("VerifyFrame(padded) = %v", err)
			}
			if err := VerifyFrame(frame[:len(frame)-1]); !errors.Is(err, ErrTruncated) {
				t.Errorf("VerifyFrame(one byte short) = %v, want ErrTruncated", err)
			}
		})
	}
}

// TestVerifyCatchesFlippedBits flips every bit of each fixture, one at a time,
// and expects VerifyFrame to fail unless the bit is one no checksum covers:
// the Ethernet addresses and VLAN TCI, IPv6 traffic class, flow label and hop
// limit, and the bytes of an ICMP body, which their checksum covers but whose
// flip can cancel out in no way, so those are expected to fail as well.
func TestVerifyCatchesFlippedBits(t *testing.T) {
	for name, l := range fixtures() {
		t.Run(name, func(t *testing.T) {
			frame := MustBuild(l)
			uncovered, either := uncoveredBits(frame)
			for bit := 0; bit < len(frame)*8; bit++ {
				if either[bit] {
					continue
				}
				f := bytes.Clone(frame)
				f[bit/8] ^= 0x80 >> (bit % 8)
				err := VerifyFrame(f)
				switch {
				case uncovered[bit] && err != nil:
					t.Errorf("bit %d (byte %#x, %s) is covered by no checksum but VerifyFrame = %v", bit, bit/8, fieldName(frameFields(frame), bit/8), err)
				case !uncovered[bit] && err == nil:
					t.Errorf("bit %d (byte %#x, %s) flipped but VerifyFrame = nil", bit, bit/8, fieldName(frameFields(frame), bit/8))
				}
			}
		})
	}
}

// uncoveredBits marks the bits of a frame that no checksum covers and that do
// not change how the frame parses: Ethernet addresses and VLAN TCI; IPv6
// traffic class, flow label and hop limit; the options of IPv6 extension
// headers and the reserved bytes of a routing header; and the addresses of an
// IPv6 header that are not in an upper-layer pseudo-header (those of an outer
// header in a tunnel, the destination replaced by a routing header's final
// destination). The routing type and segments left are in either: whether a
// flip matters depends on the value it yields.
func uncoveredBits(frame []byte) (uncovered, either map[int]bool) {
	m, either := map[int]bool{}, map[int]bool{}
	mark := func(off, n int) {
		for i := off * 8; i < (off+n)*8; i++ {
			m[i] = true
		}
	}
	fields := frameFields(frame)
	has := func(prefix, sub string) bool {
		for _, f := range fields {
			if strings.HasPrefix(f.name, prefix) && strings.Contains(f.name[len(prefix):], sub) {
				return true
			}
		}
		return false
	}
	for _, f := range fields {
		prefix := ""
		if i := strings.LastIndex(f.name, "inner."); i >= 0 {
			prefix = f.name[:i+len("inner.")]
		}
		name := f.name[len(prefix):]
		switch {
		case name == "eth.dst", name == "eth.src", name == "vlan.tci", name == "ipv6.hop_limit":
			mark(f.off, f.len)
		case name == "ipv6.version_class_flow":
			mark(f.off, f.len)
			for i := 0; i < 4; i++ {
				delete(m, f.off*8+i) // the version nibble
			}
		case strings.HasSuffix(name, "hop_by_hop"), strings.HasSuffix(name, "dst_opts"):
			mark(f.off+2, f.len-2)
		case strings.HasSuffix(name, "routing"):
			mark(f.off+4, 4)
			for i := (f.off + 2) * 8; i < (f.off+4)*8; i++ {
				either[i] = true
			}
		case name == "ipv6.src", name == "ipv6.dst":
			if has(prefix, "inner.") || (name == "ipv6.dst" && has(prefix, "routing")) {
				mark(f.off, f.len)
			}
		}
	}
	return m, either
}

func TestVerifyL4ChecksumFlippedBits(t *testing.T) {
	for _, name := range []string{"tcp4", "udp6", "icmp4", "icmp6 ptb", "tcp6 opts"} {
		t.Run(name, func(t *testing.T) {
			ip := MustBuild(fixtures()[name])[14:]
			info, err := parseIP(ip)
			if err != nil {
				t.Fatal(err)
			}
			l4 := len(ip) - len(info.l4)
			for bit := l4 * 8; bit < len(ip)*8; bit++ {
				p := bytes.Clone(ip)
				p[bit/8] ^= 0x80 >> (bit % 8)
				if err := VerifyL4Checksum(p); err == nil {
					t.Errorf("bit %d of the L4 header flipped but VerifyL4Checksum = nil", bit-l4*8)
				}
			}
			// Pseudo-header fields: the addresses.
			srcOff := 12
			if ip[0]>>4 == 6 {
				srcOff = 8
			}
			if name == "icmp4" {
				return // ICMPv4 has no pseudo-header
			}
			for bit := srcOff * 8; bit < l4*8 && bit < (srcOff+2*len(info.src.AsSlice()))*8; bit++ {
				p := bytes.Clone(ip)
				p[bit/8] ^= 0x80 >> (bit % 8)
				if err := VerifyL4Checksum(p); !errors.Is(err, ErrChecksum) {
					t.Errorf("address bit %d flipped: VerifyL4Checksum = %v, want ErrChecksum", bit-srcOff*8, err)
				}
			}
		})
	}
}

func TestVerifyIPv4HeaderChecksumFlippedBits(t *testing.T) {
	h := unhex(t, wellKnownIPv4Header)
	for bit := 0; bit < 160; bit++ {
		p := bytes.Clone(h)
		p[bit/8] ^= 0x80 >> (bit % 8)
		if err := VerifyIPv4HeaderChecksum(p); err == nil {
			t.Errorf("bit %d flipped but VerifyIPv4HeaderChecksum = nil", bit)
		}
	}
}

func TestBadChecksumIsCaught(t *testing.T) {
	tests := []struct {
		name  string
		layer Layer
		want  string
	}{
		{"ipv4 header", IPv4{Src: client4, Dst: vip4, TTL: 64, BadChecksum: true, Payload: UDP{SrcPort: 1, DstPort: 2}}, "ipv4 header checksum"},
		{"tcp4", IPv4{Src: client4, Dst: vip4, TTL: 64, Payload: TCP{SrcPort: 1, DstPort: 2, BadChecksum: true}}, "ipv4: tcp checksum"},
		{"tcp6", IPv6{Src: client6, Dst: vip6, Payload: TCP{SrcPort: 1, DstPort: 2, BadChecksum: true}}, "ipv6: tcp checksum"},
		{"udp4", IPv4{Src: client4, Dst: vip4, Payload: UDP{SrcPort: 1, DstPort: 2, BadChecksum: true}}, "ipv4: udp checksum"},
		{"udp6", IPv6{Src: client6, Dst: vip6, Payload: UDP{SrcPort: 1, DstPort: 2, BadChecksum: true}}, "ipv6: udp checksum"},
		{"udp6 zero", IPv6{Src: client6, Dst: vip6, Payload: UDP{SrcPort: 1, DstPort: 2, NoChecksum: true}}, "ipv6: udp checksum is zero"},
		{"icmp4", IPv4{Src: client4, Dst: vip4, Payload: ICMPv4{BadChecksum: true}}, "ipv4: icmp checksum"},
		{"icmp6", IPv6{Src: client6, Dst: vip6, Payload: ICMPv6{BadChecksum: true}}, "ipv6: icmpv6 checksum"},
		{"inner tcp", IPv6{Src: lb6, Dst: b16, Payload: IPv4{Src: client4, Dst: vip4, Payload: TCP{BadChecksum: true}}}, "inner ipv4: tcp checksum"},
		{"inner ipv4 header", IPv4{Src: lb4, Dst: b14, Payload: IPv4{Src: client4, Dst: vip4, BadChecksum: true, Payload: TCP{}}}, "inner ipv4 header checksum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyPacket(MustBuild(tt.layer))
			if !errors.Is(err, ErrChecksum) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("VerifyPacket = %v, want ErrChecksum starting %q", err, tt.want)
			}
		})
	}
}

func TestUDPChecksumNeverZero(t *testing.T) {
	// Find a payload whose UDP checksum computes to zero; it must be sent as
	// 0xffff, and BadChecksum must still not write zero.
	for i := 0; i < 1<<16; i++ {
		p := []byte{byte(i >> 8), byte(i)}
		b := MustBuild(IPv4{Src: client4, Dst: vip4, Payload: UDP{SrcPort: 1, DstPort: 2, Payload: p}})
		if b[26] != 0xff || b[27] != 0xff {
			continue
		}
		if err := VerifyPacket(b); err != nil {
			t.Fatalf("VerifyPacket(checksum 0xffff) = %v", err)
		}
		return
	}
	t.Fatal("no payload gave a zero checksum")
}

func TestVerifyUnverifiable(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"ipv4 fragment", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, Flags: IPv4MoreFragments, Payload: UDP{}}}), ErrFragment},
		{"ipv4 later fragment", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, FragmentOffset: 10, Protocol: ProtoUDP, Payload: Raw{1, 2, 3}}}), ErrFragment},
		{"ipv6 fragment", MustBuild(Ethernet{Payload: IPv6{Src: client6, Dst: vip6, ExtHeaders: []IPv6ExtHeader{FragmentHeader(0, true, 1)}, Payload: UDP{}}}), ErrFragment},
		{"gre", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, Protocol: ProtoGRE, Payload: Raw{0, 0, 0x08, 0}}}), ErrUnsupported},
		{"no next header", MustBuild(Ethernet{Payload: IPv6{Src: client6, Dst: vip6, NextHeader: ProtoNoNext, Payload: Raw{0}}}), ErrUnsupported},
		{"arp", MustBuild(Ethernet{EtherType: EtherTypeARP, Payload: Raw(make([]byte, 28))}), ErrUnsupported},
		{"version mismatch", MustBuild(Ethernet{EtherType: EtherTypeIPv6, Payload: IPv4{Src: client4, Dst: vip4, Payload: UDP{}}}), ErrMalformed},
		{"ipip wrong inner", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, Protocol: ProtoIPIP, Payload: IPv6{Src: client6, Dst: vip6, Payload: UDP{}}}}), ErrMalformed},
		{"udp length", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, Payload: UDP{Length: 9}}}), ErrMalformed},
		{"total length", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, TotalLength: 100, Payload: UDP{}}}), ErrTruncated},
		{"ihl", MustBuild(Ethernet{Payload: IPv4{Src: client4, Dst: vip4, IHL: 4, Payload: UDP{}}}), ErrMalformed},
		{"short", []byte{1, 2, 3}, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := VerifyFrame(tt.frame); !errors.Is(err, tt.want) {
				t.Errorf("VerifyFrame = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestEncap(t *testing.T) {
	inner4 := MustBuild(IPv4{Src: client4, Dst: vip4, TTL: 64, Payload: UDP{SrcPort: 1, DstPort: 2}})
	inner6 := MustBuild(IPv6{Src: client6, Dst: vip6, HopLimit: 64, Payload: UDP{SrcPort: 1, DstPort: 2}})
	tests := []struct {
		name      string
		outer     Layer
		inner     []byte
		protoOff  int
		wantProto byte
		hlen      int
	}{
		{"ipip", IPv4{Src: lb4, Dst: b14, TTL: 64}, inner4, 9, ProtoIPIP, 20},
		{"6in4", &IPv4{Src: lb4, Dst: b14, TTL: 64}, inner6, 9, ProtoIPv6, 20},
		{"4in6", IPv6{Src: lb6, Dst: b16, HopLimit: 64}, inner4, 6, ProtoIPIP, 40},
		{"ip6ip6", &IPv6{Src: lb6, Dst: b16, HopLimit: 64}, inner6, 6, ProtoIPv6, 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Encap(tt.outer, tt.inner)
			if err != nil {
				t.Fatal(err)
			}
			if got[tt.protoOff] != tt.wantProto {
				t.Errorf("outer protocol = %d, want %d", got[tt.protoOff], tt.wantProto)
			}
			if !bytes.Equal(got[tt.hlen:], tt.inner) {
				t.Errorf("payload is not the inner packet:\n%s", DiffIP(tt.inner, got[tt.hlen:]))
			}
			if err := VerifyPacket(got); err != nil {
				t.Errorf("VerifyPacket = %v", err)
			}
			// The same packet as nested layers.
			var outer Layer
			switch o := tt.outer.(type) {
			case IPv4:
				o.Payload = RawIP(tt.inner)
				outer = o
			case *IPv4:
				c := *o
				c.Payload = RawIP(tt.inner)
				outer = c
			case IPv6:
				o.Payload = RawIP(tt.inner)
				outer = o
			case *IPv6:
				c := *o
				c.Payload = RawIP(tt.inner)
				outer = c
			}
			if d := cmp.Diff(MustBuild(outer), got); d != "" {
				t.Errorf("Encap differs from nesting (-want +got):\n%s", d)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	want := MustBuild(Ethernet{Dst: macB, Src: macA, Payload: IPv4{Src: client4, Dst: vip4, TTL: 64,
		Payload: TCP{SrcPort: 40000, DstPort: 80, Flags: TCPSyn}}})
	if d := Diff(want, want); d != "" {
		t.Errorf("Diff(x, x) = %q, want empty", d)
	}
	got := bytes.Clone(want)
	got[14+8]--                   // TTL
	got[14+10], got[14+11] = 0, 0 // IP checksum
	got[0] = 0xff                 // dst MAC
	got = append(got, 0xde, 0xad) // trailer
	wantDiff := strings.Join([]string{
		"6 of 56 bytes differ (want 54 bytes, got 56)",
		"  0x0000        eth.dst                  want 02  got ff",
		"  0x0016        ipv4.ttl                 want 40  got 3f",
		"  0x0018-0x0019 ipv4.checksum            want " + hex.EncodeToString(want[24:26]) + "  got 0000",
		"  0x0036-0x0037 trailer                  want ----  got dead",
		"       00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
		"-0000  02 00 00 00 00 02 02 00 00 00 00 0a 08 00 45 00",
		"+0000  ff 00 00 00 00 02 02 00 00 00 00 0a 08 00 45 00",
		"       ^^",
		"-0010  00 28 00 00 00 00 40 06 " + spaced(want[24:32]),
		"+0010  00 28 00 00 00 00 3f 06 00 00 " + spaced(want[26:32]),
		"                         ^^    ^^ ^^",
		"-0030  " + spaced(want[48:54]) + " -- --",
		"+0030  " + spaced(want[48:54]) + " de ad",
		"                         ^^ ^^",
		"",
	}, "\n")
	if d := Diff(want, got); d != wantDiff {
		t.Errorf("Diff:\n%s\nwant:\n%s\n(-want +got):\n%s", d, wantDiff, cmp.Diff(wantDiff, d))
	}
}

func spaced(b []byte) string {
	s := make([]string, len(b))
	for i, c := range b {
		s[i] = hex.EncodeToString([]byte{c})
	}
	return strings.Join(s, " ")
}

func TestDiffFieldNames(t *testing.T) {
	frame := MustBuild(fixtures()["ipip in ip6ip6"])
	fields := frameFields(frame)
	names := map[string]bool{}
	for _, f := range fields {
		names[f.name] = true
	}
	for _, want := range []string{"eth.type", "ipv6.dst", "inner.ipv6.next_header", "inner.inner.ipv4.ttl",
		"inner.inner.inner.ipv4.checksum", "inner.inner.inner.tcp.flags", "inner.inner.inner.tcp.payload"} {
		if !names[want] {
			t.Errorf("no field %q in layout", want)
		}
	}
	frame = MustBuild(fixtures()["vlan tcp4"])
	if got := fieldName(frameFields(frame), 14); got != "vlan.tci" {
		t.Errorf("byte 14 of a tagged frame is %q, want vlan.tci", got)
	}
	if got := fieldName(frameFields(frame), 16); got != "eth.type" {
		t.Errorf("byte 16 of a tagged frame is %q, want eth.type", got)
	}
}
