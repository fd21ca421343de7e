package xdp

// The backend-side decap program through BPF_PROG_TEST_RUN: exact inner
// frames for the four encapsulations from allowed outer sources, drops from
// every other source, everything else untouched and counted, and the round
// trip from the load balancer's encapsulation back to the original frame.
// Output frames are also decoded by gopacket, which checks their checksums.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// decapFixture is one frame through the decap program.
type decapFixture struct {
	name string
	in   []byte
	// wantOut is the exact output; nil means "the input, unchanged".
	wantOut []byte
	// drop: the verdict must be XDP_DROP (else XDP_PASS).
	drop bool
	// wantCounter is the one decap counter that must move, by one.
	wantCounter string
}

var (
	dcLocal4 = netip.MustParseAddr("198.18.2.3")
	dcLocal6 = netip.MustParseAddr("2001:db8:2::4")
	dcOther4 = netip.MustParseAddr("198.18.2.200")
	dcOther6 = netip.MustParseAddr("2001:db8:2::200")
	dcMAC    = fxMAC("02:00:00:00:01:03") // the backend's

	// Outer sources allowed beside the world's encap sources (fxEncap4,
	// fxEncap6), and some that are not.
	dcAllow4    = netip.MustParsePrefix("198.18.6.0/24")
	dcAllow6    = netip.MustParsePrefix("2001:db8:6::/64")
	dcInAllow4  = netip.MustParseAddr("198.18.6.77")
	dcInAllow6  = netip.MustParseAddr("2001:db8:6::abcd")
	dcStranger4 = netip.MustParseAddr("198.18.3.2")    // next to fxEncap4
	dcStranger6 = netip.MustParseAddr("2001:db8:3::2") // next to fxEncap6
	dcLookalike = netip.MustParseAddr("c612:64d::1")   // begins with the bytes of 198.18.6.77
	dcAllowSet  = []netip.Prefix{fxEncap4, fxEncap6, dcAllow4, dcAllow6}
)

// dcOpen loads the decap program (without attaching it) listing addrs and
// allowing the outer sources of allow.
func dcOpen(t *testing.T, allow []netip.Prefix, addrs ...netip.Addr) *Decap {
	t.Helper()
	testnet.RequirePrivileged(t)
	dc := &Decap{}
	if err := loadDecapObjects(&dc.objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.objs.Close() })
	if err := dc.SetAddrs(addrs); err != nil {
		t.Fatal(err)
	}
	if err := dc.SetAllow(allow); err != nil {
		t.Fatal(err)
	}
	return dc
}

func dcCounters(t *testing.T, dc *Decap) map[string]uint64 {
	t.Helper()
	cs, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, c := range cs {
		out[c.Name] = c.Value
	}
	return out
}

// dcFrame is a frame from the load balancer to the backend carrying l.
func dcFrame(l packet.Layer, vlan *packet.VLAN) []byte {
	return packet.MustBuild(packet.Ethernet{Dst: dcMAC, Src: fxEgressMAC, VLAN: vlan, Payload: l})
}

func dcOuter(dst netip.Addr, inner []byte) packet.Layer {
	if dst.Is4() {
		return dcOuterFrom(fxEncap4.Addr(), dst, inner)
	}
	return dcOuterFrom(fxEncap6.Addr(), dst, inner)
}

// dcOuterFrom is inner encapsulated from src to dst.
func dcOuterFrom(src, dst netip.Addr, inner []byte) packet.Layer {
	if dst.Is4() {
		return packet.IPv4{Src: src, Dst: dst, TTL: 64, Flags: packet.IPv4DontFragment, Payload: packet.RawIP(inner)}
	}
	return packet.IPv6{Src: src, Dst: dst, HopLimit: 64, FlowLabel: 0x54321, Payload: packet.RawIP(inner)}
}

// dcDecoded is what gopacket reads in a frame the decap program passed on.
type dcDecoded struct {
	ip4 *layers.IPv4
	ip6 *layers.IPv6
}

// dcDecode decodes frame with gopacket, an implementation independent of
// the one that builds the expected frames, and fails the test if it cannot
// decode the Ethernet, IP and TCP/UDP layers or if any checksum it can check
// (IPv4 header, TCP, UDP) is wrong.
func dcDecode(t *testing.T, frame []byte) dcDecoded {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode the output: %v", el.Error())
	}
	var d dcDecoded
	var netl gopacket.NetworkLayer
	if l, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		d.ip4, netl = l, l
	}
	if l, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		d.ip6, netl = l, l
	}
	if netl == nil {
		t.Fatalf("gopacket finds no IP layer in the output")
	}
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		if err := l.SetNetworkLayerForChecksum(netl); err != nil {
			t.Fatal(err)
		}
	case *layers.UDP:
		if err := l.SetNetworkLayerForChecksum(netl); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("gopacket finds no TCP or UDP layer in the output")
	}
	err, bad := p.VerifyChecksums()
	if err != nil {
		t.Fatalf("gopacket cannot verify the checksums: %v", err)
	}
	for _, m := range bad {
		t.Errorf("gopacket: %s checksum is %#04x, want %#04x", m.Layer.LayerType(), m.Actual, m.Correct)
	}
	return d
}

func decapFixtures() []decapFixture {
	var fs []decapFixture
	add := func(f decapFixture) { fs = append(fs, f) }
	vlan := &packet.VLAN{ID: 100}
	in4 := packet.MustBuild(fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, []byte("hello")))
	in6 := packet.MustBuild(fxIP(fxAP(fxClient6, 40001), fxAP(fxVIP6in6, 80), packet.TCPAck, []byte("hello")))

	for _, c := range []struct {
		name    string
		outer   netip.Addr
		inner   []byte
		counter string
	}{
		{"4in4", dcLocal4, in4, "decap_ipv4_in_ipv4"},
		{"6in6", dcLocal6, in6, "decap_ipv6_in_ipv6"},
		{"4in6", dcLocal6, in4, "decap_ipv4_in_ipv6"},
		{"6in4", dcLocal4, in6, "decap_ipv6_in_ipv4"},
	} {
		for _, v := range []*packet.VLAN{nil, vlan} {
			name := c.name
			if v != nil {
				name += " with VLAN"
			}
			add(decapFixture{name: name, in: dcFrame(dcOuter(c.outer, c.inner), v),
				wantOut: dcFrame(packet.RawIP(c.inner), v), wantCounter: c.counter})
		}
	}
	// Outer sources: inside an allowed prefix, decapsulated; outside every
	// one, dropped whatever the packet's shape.
	add(decapFixture{name: "4in4 from inside an allowed /24", in: dcFrame(dcOuterFrom(dcInAllow4, dcLocal4, in4), nil),
		wantOut: dcFrame(packet.RawIP(in4), nil), wantCounter: "decap_ipv4_in_ipv4"})
	add(decapFixture{name: "6in6 from inside an allowed /64", in: dcFrame(dcOuterFrom(dcInAllow6, dcLocal6, in6), vlan),
		wantOut: dcFrame(packet.RawIP(in6), vlan), wantCounter: "decap_ipv6_in_ipv6"})
	add(decapFixture{name: "4in6 from inside an allowed /64", in: dcFrame(dcOuterFrom(dcInAllow6, dcLocal6, in4), nil),
		wantOut: dcFrame(packet.RawIP(in4), nil), wantCounter: "decap_ipv4_in_ipv6"})
	add(decapFixture{name: "6in4 from inside an allowed /24", in: dcFrame(dcOuterFrom(dcInAllow4, dcLocal4, in6), nil),
		wantOut: dcFrame(packet.RawIP(in6), nil), wantCounter: "decap_ipv6_in_ipv4"})
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
		inner    []byte
		vlan     *packet.VLAN
	}{
		{"4in4 from a source not allowed", dcStranger4, dcLocal4, in4, nil},
		{"4in4 from a source not allowed, with VLAN", dcStranger4, dcLocal4, in4, vlan},
		{"6in6 from a source not allowed", dcStranger6, dcLocal6, in6, nil},
		{"4in6 from a source not allowed", dcStranger6, dcLocal6, in4, nil},
		{"6in4 from a source not allowed", dcStranger4, dcLocal4, in6, nil},
		{"6in6 from an IPv6 source whose first bytes are an allowed IPv4 prefix", dcLookalike, dcLocal6, in6, nil},
		{"4in4 from a spoofed client address", fxClient4, dcLocal4, in4, nil},
	} {
		add(decapFixture{name: c.name, in: dcFrame(dcOuterFrom(c.src, c.dst, c.inner), c.vlan), drop: true, wantCounter: "drop_source_not_allowed"})
	}
	add(decapFixture{name: "outer IPv4 fragment from a source not allowed", in: dcFrame(packet.IPv4{Src: dcStranger4, Dst: dcLocal4, TTL: 64, Flags: packet.IPv4MoreFragments,
		Payload: packet.RawIP(in4)}, nil), drop: true, wantCounter: "drop_source_not_allowed"})
	add(decapFixture{name: "outer IPv4 with options from a source not allowed", in: dcFrame(packet.IPv4{Src: dcStranger4, Dst: dcLocal4, TTL: 64, Options: []byte{1, 1, 1, 1},
		Payload: packet.RawIP(in4)}, nil), drop: true, wantCounter: "drop_source_not_allowed"})
	add(decapFixture{name: "4in4 from a source not allowed to an address not listed", in: dcFrame(dcOuterFrom(dcStranger4, dcOther4, in4), nil), wantCounter: "pass_not_local"})
	add(decapFixture{name: "plain IPv4 from a source not allowed", in: dcFrame(fxIP(fxAP(dcStranger4, 1), fxAP(dcLocal4, 22), packet.TCPSyn, nil), nil), wantCounter: "pass_not_encapsulated"})
	add(decapFixture{name: "4in4 to an address not listed", in: dcFrame(dcOuter(dcOther4, in4), nil), wantCounter: "pass_not_local"})
	add(decapFixture{name: "6in6 to an address not listed", in: dcFrame(dcOuter(dcOther6, in6), nil), wantCounter: "pass_not_local"})
	add(decapFixture{name: "plain IPv4 TCP to a listed address", in: dcFrame(fxIP(fxAP(fxClient4, 1), fxAP(dcLocal4, 22), packet.TCPSyn, nil), nil), wantCounter: "pass_not_encapsulated"})
	add(decapFixture{name: "plain IPv6 UDP to a listed address", in: dcFrame(fxUDP(fxAP(fxClient6, 1), fxAP(dcLocal6, 53), []byte{1}), vlan), wantCounter: "pass_not_encapsulated"})
	add(decapFixture{name: "ARP", in: packet.MustBuild(packet.Ethernet{Dst: dcMAC, Src: fxEgressMAC, EtherType: packet.EtherTypeARP, Payload: packet.Raw(make([]byte, 28))}),
		wantCounter: "pass_not_ip"})
	add(decapFixture{name: "4in4, inner header cut short", in: dcFrame(packet.IPv4{Src: fxEncap4.Addr(), Dst: dcLocal4, TTL: 64, Protocol: packet.ProtoIPIP,
		Payload: packet.Raw(in4[:12])}, nil), wantCounter: "pass_malformed"})
	add(decapFixture{name: "6in6, inner header cut short", in: dcFrame(packet.IPv6{Src: fxEncap6.Addr(), Dst: dcLocal6, HopLimit: 64, NextHeader: packet.ProtoIPv6,
		Payload: packet.Raw(in6[:39])}, nil), wantCounter: "pass_malformed"})
	add(decapFixture{name: "protocol 4 carrying IPv6", in: dcFrame(packet.IPv4{Src: fxEncap4.Addr(), Dst: dcLocal4, TTL: 64, Protocol: packet.ProtoIPIP,
		Payload: packet.Raw(in6)}, nil), wantCounter: "pass_malformed"})
	add(decapFixture{name: "outer IPv4 with options", in: dcFrame(packet.IPv4{Src: fxEncap4.Addr(), Dst: dcLocal4, TTL: 64, Options: []byte{1, 1, 1, 1},
		Payload: packet.RawIP(in4)}, nil), wantCounter: "pass_malformed"})
	add(decapFixture{name: "outer IPv4 fragment", in: dcFrame(packet.IPv4{Src: fxEncap4.Addr(), Dst: dcLocal4, TTL: 64, Flags: packet.IPv4MoreFragments,
		Payload: packet.RawIP(in4)}, nil), wantCounter: "pass_malformed"})
	full := dcFrame(dcOuter(dcLocal4, in4), nil)
	add(decapFixture{name: "cut inside the outer IPv4 header", in: full[:14+16], wantCounter: "pass_malformed"})
	{
		tag := append([]byte{0x00, 0x64, 0x08, 0x00}, packet.MustBuild(dcOuter(dcLocal4, in4))...)
		add(decapFixture{name: "stacked VLAN tags", in: packet.MustBuild(packet.Ethernet{Dst: dcMAC, Src: fxEgressMAC, VLAN: &packet.VLAN{TPID: packet.EtherTypeQinQ, ID: 7},
			EtherType: packet.EtherTypeVLAN, Payload: packet.Raw(tag)}), wantCounter: "pass_vlan_stacked"})
	}
	return fs
}

func TestDecapFixtures(t *testing.T) {
	dc := dcOpen(t, dcAllowSet, dcLocal4, dcLocal6)
	for _, f := range decapFixtures() {
		t.Run(f.name, func(t *testing.T) {
			before := dcCounters(t, dc)
			ret, out := fxRun(t, dc.objs.XdplbDecap, f.in)
			after := dcCounters(t, dc)
			wantRet := fxPass
			if f.drop {
				wantRet = fxDrop
			}
			if ret != wantRet {
				t.Errorf("verdict %s, want %s", fxVerdict(ret), fxVerdict(wantRet))
			}
			if !f.drop {
				want := f.wantOut
				if want == nil {
					want = f.in
				}
				if d := packet.Diff(want, out); d != "" {
					t.Errorf("output differs (-want +got):\n%s", d)
				}
			}
			if f.wantOut != nil {
				if err := packet.VerifyFrame(out); err != nil {
					t.Errorf("output frame: %v", err)
				}
				dcDecode(t, out)
			}
			if _, ok := after[f.wantCounter]; !ok {
				t.Fatalf("no decap counter %q", f.wantCounter)
			}
			for name := range after {
				want := uint64(0)
				if name == f.wantCounter {
					want = 1
				}
				if got := after[name] - before[name]; got != want {
					t.Errorf("counter %s moved by %d, want %d", name, got, want)
				}
			}
		})
	}
}

// TestDecapSetAddrs checks that SetAddrs replaces the list.
func TestDecapSetAddrs(t *testing.T) {
	dc := dcOpen(t, dcAllowSet, dcLocal4)
	in4 := packet.MustBuild(fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, nil))
	frame := dcFrame(dcOuter(dcLocal4, in4), nil)
	if _, out := fxRun(t, dc.objs.XdplbDecap, frame); len(out) != len(frame)-20 {
		t.Fatalf("not decapsulated while listed")
	}
	if err := dc.SetAddrs([]netip.Addr{dcOther4}); err != nil {
		t.Fatal(err)
	}
	if _, out := fxRun(t, dc.objs.XdplbDecap, frame); len(out) != len(frame) {
		t.Errorf("decapsulated after its address was removed")
	}
}

// TestEncapDecapRoundTrip feeds the load balancer's IPIP output to the decap
// program: the result is the client's frame with the MACs of the hop from
// the load balancer to the backend.
func TestEncapDecapRoundTrip(t *testing.T) {
	w := fixtureWorld
	d := fxOpen(t, Options{})
	vips := []netip.Addr{fxVIP4in4, fxVIP6in6, fxVIP4in6, fxVIP6in4, fxVIP4ThreeT, fxVIP6ThreeT}
	w.applyVIPs(t, d, fxNoEnv, vips...)
	var locals []netip.Addr
	for _, b := range w.backends {
		locals = append(locals, b.Addr)
	}
	dc := dcOpen(t, []netip.Prefix{fxEncap4Spread, fxEncap6Spread}, locals...)
	if err := d.SetEncapSource(fxEncap4Spread, fxEncap6Spread); err != nil {
		t.Fatal(err)
	}
	vlan := &packet.VLAN{ID: 42, Priority: 5}
	n := 0
	for _, vip := range vips {
		for _, tag := range []*packet.VLAN{nil, vlan} {
			for port := uint16(40000); port < 40010; port++ {
				client := fxClient4
				if vip.Is6() {
					client = fxClient6
				}
				src, dst := fxAP(client, port), fxAP(vip, 80)
				l := fxIP(src, dst, packet.TCPAck|packet.TCPPsh, []byte("round trip"))
				in := fxIn(l, tag)
				ret, enc := fxRun(t, d.Program(), in)
				if ret != fxTX {
					t.Fatalf("%s -> %s: load balancer verdict %s", src, dst, fxVerdict(ret))
				}
				ret, dec := fxRun(t, dc.objs.XdplbDecap, enc)
				if ret != fxPass {
					t.Fatalf("%s -> %s: decap verdict %s", src, dst, fxVerdict(ret))
				}
				_, b, _ := w.pick(w.vip(vip, 80, TCP), src, dst)
				// What left the appliance was routed: its TTL is one lower.
				want := fxL2Out(b, packet.RawIP(fxRouted(packet.MustBuild(l))), tag)
				if d := packet.Diff(want, dec); d != "" {
					t.Errorf("%s -> %s (VLAN %v): round trip differs (-want +got):\n%s", src, dst, tag != nil, d)
				}
				n++
			}
		}
	}
	cs := dcCounters(t, dc)
	if got := cs["decap_ipv4_in_ipv4"] + cs["decap_ipv6_in_ipv6"] + cs["decap_ipv4_in_ipv6"] + cs["decap_ipv6_in_ipv4"]; got != uint64(n) {
		t.Errorf("%d frames decapsulated, want %d", got, n)
	}
}

// TestDecapSetAllow checks that SetAllow replaces the allowed set, families
// apart, that Allowed reads it back, and that an empty set drops every
// encapsulated packet to a listed address.
func TestDecapSetAllow(t *testing.T) {
	dc := dcOpen(t, []netip.Prefix{fxEncap4, fxEncap6}, dcLocal4, dcLocal6)
	in4 := packet.MustBuild(fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, nil))
	in6 := packet.MustBuild(fxIP(fxAP(fxClient6, 40001), fxAP(fxVIP6in6, 80), packet.TCPAck, nil))
	frames := map[string][]byte{
		"from fxEncap4":   dcFrame(dcOuterFrom(fxEncap4.Addr(), dcLocal4, in4), nil),
		"from fxEncap6":   dcFrame(dcOuterFrom(fxEncap6.Addr(), dcLocal6, in6), nil),
		"from dcInAllow4": dcFrame(dcOuterFrom(dcInAllow4, dcLocal4, in4), nil),
		"from dcInAllow6": dcFrame(dcOuterFrom(dcInAllow6, dcLocal6, in6), nil),
	}
	for _, step := range []struct {
		allow []netip.Prefix
		// want are the frames decapsulated; the others are dropped.
		want []string
	}{
		{[]netip.Prefix{fxEncap4, fxEncap6}, []string{"from fxEncap4", "from fxEncap6"}},
		{[]netip.Prefix{dcAllow4, dcAllow6}, []string{"from dcInAllow4", "from dcInAllow6"}},
		{[]netip.Prefix{dcAllow4, fxEncap6}, []string{"from dcInAllow4", "from fxEncap6"}},
		{[]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, []string{"from fxEncap4", "from dcInAllow4"}},
		{AnySource, []string{"from fxEncap4", "from fxEncap6", "from dcInAllow4", "from dcInAllow6"}},
		{[]netip.Prefix{}, nil},
	} {
		if err := dc.SetAllow(step.allow); err != nil {
			t.Fatal(err)
		}
		got, err := dc.Allowed()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, step.allow) {
			t.Errorf("after SetAllow(%v): Allowed() = %v", step.allow, got)
		}
		for name, frame := range frames {
			ret, out := fxRun(t, dc.objs.XdplbDecap, frame)
			decapsulated := ret == fxPass && len(out) < len(frame)
			if want := slices.Contains(step.want, name); decapsulated != want || (!want && ret != fxDrop) {
				t.Errorf("allowing %v: frame %s: verdict %s, %d of %d bytes left; want decapsulated: %v", step.allow, name, fxVerdict(ret), len(out), len(frame), want)
			}
		}
	}
}

// ECN codepoints (RFC 3168), the low two bits of the TOS / traffic class.
const (
	dcNotECT uint8 = 0
	dcECT1   uint8 = 1
	dcECT0   uint8 = 2
	dcCE     uint8 = 3
)

var dcECNNames = map[uint8]string{dcNotECT: "Not-ECT", dcECT1: "ECT(1)", dcECT0: "ECT(0)", dcCE: "CE"}

// dcRFC6040 is the table of RFC 6040 section 4.2 (normal mode), written out:
// the inner ECN field forwarded after decapsulation, by arriving inner field
// (first index) and arriving outer field (second index); dcDropECN: the
// packet is dropped.
const dcDropECN = 0xff

var dcRFC6040 = map[uint8]map[uint8]uint8{
	//        outer: Not-ECT            ECT(0)             ECT(1)             CE
	dcNotECT: {dcNotECT: dcNotECT, dcECT0: dcNotECT, dcECT1: dcNotECT, dcCE: dcDropECN},
	dcECT0:   {dcNotECT: dcECT0, dcECT0: dcECT0, dcECT1: dcECT1, dcCE: dcCE},
	dcECT1:   {dcNotECT: dcECT1, dcECT0: dcECT1, dcECT1: dcECT1, dcCE: dcCE},
	dcCE:     {dcNotECT: dcCE, dcECT0: dcCE, dcECT1: dcCE, dcCE: dcCE},
}

// TestDecapECN runs every pair of outer and inner ECN field through the four
// encapsulations: the inner packet leaves with the field RFC 6040's table
// gives, its DSCP and (IPv6) flow label untouched and (IPv4) a header
// checksum that gopacket verifies; outer CE over a Not-ECT inner packet is
// dropped and counted. The inner IPv4 packets come with several IDs, one of
// which gives a header checksum of 0x0000 before the change.
func TestDecapECN(t *testing.T) {
	dc := dcOpen(t, dcAllowSet, dcLocal4, dcLocal6)
	const innerDSCP, outerDSCP = 46 << 2, 34 << 2 // EF inside, AF41 outside: the inner's stays
	ids := []uint16{0x04d2, 0x0000, 0xffff, dcZeroChecksumID(t, innerDSCP|dcECT0)}
	inner := func(v6 bool, tos uint8, id uint16) []byte {
		if v6 {
			l := fxIP(fxAP(fxClient6, 40001), fxAP(fxVIP6in6, 80), packet.TCPAck, []byte("ecn")).(packet.IPv6)
			l.TrafficClass, l.FlowLabel = tos, 0xfedcb
			return packet.MustBuild(l)
		}
		l := fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, []byte("ecn")).(packet.IPv4)
		l.TOS, l.ID = tos, id
		return packet.MustBuild(l)
	}
	for _, enc := range []struct {
		name     string
		outer    netip.Addr
		innerV6  bool
		counter  string
		innerIDs []uint16
	}{
		{"4in4", dcLocal4, false, "decap_ipv4_in_ipv4", ids},
		{"6in6", dcLocal6, true, "decap_ipv6_in_ipv6", ids[:1]},
		{"4in6", dcLocal6, false, "decap_ipv4_in_ipv6", ids},
		{"6in4", dcLocal4, true, "decap_ipv6_in_ipv4", ids[:1]},
	} {
		for _, in := range []uint8{dcNotECT, dcECT1, dcECT0, dcCE} {
			for _, out := range []uint8{dcNotECT, dcECT1, dcECT0, dcCE} {
				for _, id := range enc.innerIDs {
					name := fmt.Sprintf("%s outer %s inner %s", enc.name, dcECNNames[out], dcECNNames[in])
					if len(enc.innerIDs) > 1 {
						name += fmt.Sprintf(" ID %#04x", id)
					}
					t.Run(name, func(t *testing.T) {
						ip := inner(enc.innerV6, innerDSCP|in, id)
						var o packet.Layer
						if enc.outer.Is4() {
							o = packet.IPv4{Src: fxEncap4.Addr(), Dst: enc.outer, TOS: outerDSCP | out, TTL: 64, Flags: packet.IPv4DontFragment, Payload: packet.RawIP(ip)}
						} else {
							o = packet.IPv6{Src: fxEncap6.Addr(), Dst: enc.outer, TrafficClass: outerDSCP | out, HopLimit: 64, FlowLabel: 0x54321, Payload: packet.RawIP(ip)}
						}
						frame := dcFrame(o, nil)
						want := dcRFC6040[in][out]
						wantCounter := enc.counter
						if want == dcDropECN {
							wantCounter = "drop_ecn_ce_not_ect"
						}
						before := dcCounters(t, dc)
						ret, got := fxRun(t, dc.objs.XdplbDecap, frame)
						after := dcCounters(t, dc)
						for name := range after {
							n := uint64(0)
							if name == wantCounter {
								n = 1
							}
							if d := after[name] - before[name]; d != n {
								t.Errorf("counter %s moved by %d, want %d", name, d, n)
							}
						}
						if want == dcDropECN {
							if ret != fxDrop {
								t.Errorf("verdict %s, want XDP_DROP", fxVerdict(ret))
							}
							return
						}
						if ret != fxPass {
							t.Fatalf("verdict %s, want XDP_PASS", fxVerdict(ret))
						}
						if d := packet.Diff(dcFrame(packet.RawIP(inner(enc.innerV6, innerDSCP|want, id)), nil), got); d != "" {
							t.Errorf("output differs (-want +got):\n%s", d)
						}
						g := dcDecode(t, got)
						switch {
						case g.ip4 != nil && g.ip4.TOS != innerDSCP|want:
							t.Errorf("inner TOS %#02x, want %#02x", g.ip4.TOS, innerDSCP|want)
						case g.ip6 != nil && g.ip6.TrafficClass != innerDSCP|want:
							t.Errorf("inner traffic class %#02x, want %#02x", g.ip6.TrafficClass, innerDSCP|want)
						case g.ip6 != nil && g.ip6.FlowLabel != 0xfedcb:
							t.Errorf("inner flow label %#05x, want 0xfedcb", g.ip6.FlowLabel)
						}
					})
				}
			}
		}
	}
}

// dcZeroChecksumID finds an IP ID for which the inner IPv4 packet of
// TestDecapECN, with TOS tos, has a header checksum of 0x0000.
func dcZeroChecksumID(t *testing.T, tos uint8) uint16 {
	t.Helper()
	for id := 0; id <= 0xffff; id++ {
		l := fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, []byte("ecn")).(packet.IPv4)
		l.TOS, l.ID = tos, uint16(id)
		if b := packet.MustBuild(l); b[10] == 0 && b[11] == 0 {
			return uint16(id)
		}
	}
	t.Fatal("no IP ID gives a header checksum of 0x0000")
	return 0
}

// TestDecapUpgradeCounters attaches over the maps a version with fewer
// counters pinned: the counters map is replaced, the pinned addresses are
// kept, and the program decapsulates at once.
func TestDecapUpgradeCounters(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	ns, err := testnet.NewNS("xdcup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	err = ns.Do(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dcup0"}, PeerName: "dcup1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("dcup0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		// What the version before the allowed sources left: its address
		// map and a counters map of 10 entries.
		dir := filepath.Join(pin, "decap", "dcup0")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		spec, err := loadDecap()
		if err != nil {
			return err
		}
		addrs, err := ebpf.NewMap(spec.Maps["decap_addrs"])
		if err != nil {
			return err
		}
		defer addrs.Close()
		if err := addrs.Put(vipAddrKey(dcLocal4), uint32(1)); err != nil {
			return err
		}
		old := spec.Maps["decap_stats"].Copy()
		old.MaxEntries = 10
		stats, err := ebpf.NewMap(old)
		if err != nil {
			return err
		}
		defer stats.Close()
		for name, m := range map[string]*ebpf.Map{"decap_addrs": addrs, "decap_stats": stats} {
			if err := m.Pin(filepath.Join(dir, name)); err != nil {
				return err
			}
		}

		d, err := OpenDecap("dcup0", DecapOptions{PinPath: pin, Allow: []netip.Prefix{fxEncap4}})
		if err != nil {
			return err
		}
		defer d.Detach()
		if cs, err := d.Counters(); err != nil || len(cs) != len(decapCounterNames) {
			t.Errorf("counters after the upgrade: %d, %v; want %d", len(cs), err, len(decapCounterNames))
		}
		in4 := packet.MustBuild(fxIP(fxAP(fxClient4, 40001), fxAP(fxVIP4in4, 80), packet.TCPAck, nil))
		frame := dcFrame(dcOuter(dcLocal4, in4), nil)
		if ret, out := fxRun(t, d.objs.XdplbDecap, frame); ret != fxPass || packet.Diff(dcFrame(packet.RawIP(in4), nil), out) != "" {
			t.Errorf("not decapsulated to the pinned address after the upgrade: %s, %d bytes", fxVerdict(ret), len(out))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
