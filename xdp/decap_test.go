package xdp

// The backend-side decap program through BPF_PROG_TEST_RUN: exact inner
// frames for the four encapsulations, everything else untouched and counted,
// and the round trip from the load balancer's encapsulation back to the
// original frame.

import (
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// decapFixture is one frame through the decap program.
type decapFixture struct {
	name string
	in   []byte
	// wantOut is the exact output; nil means "the input, unchanged".
	wantOut []byte
	// wantCounter is the one decap counter that must move, by one.
	wantCounter string
}

var (
	dcLocal4 = netip.MustParseAddr("198.18.2.3")
	dcLocal6 = netip.MustParseAddr("2001:db8:2::4")
	dcOther4 = netip.MustParseAddr("198.18.2.200")
	dcOther6 = netip.MustParseAddr("2001:db8:2::200")
	dcMAC    = fxMAC("02:00:00:00:01:03") // the backend's
)

// dcOpen loads the decap program (without attaching it) listing addrs.
func dcOpen(t *testing.T, addrs ...netip.Addr) *Decap {
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
		return packet.IPv4{Src: fxEncap4.Addr(), Dst: dst, TTL: 64, Flags: packet.IPv4DontFragment, Payload: packet.RawIP(inner)}
	}
	return packet.IPv6{Src: fxEncap6.Addr(), Dst: dst, HopLimit: 64, FlowLabel: 0x54321, Payload: packet.RawIP(inner)}
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
	dc := dcOpen(t, dcLocal4, dcLocal6)
	for _, f := range decapFixtures() {
		t.Run(f.name, func(t *testing.T) {
			before := dcCounters(t, dc)
			ret, out := fxRun(t, dc.objs.XdplbDecap, f.in)
			after := dcCounters(t, dc)
			if ret != fxPass {
				t.Errorf("verdict %s, want XDP_PASS", fxVerdict(ret))
			}
			want := f.wantOut
			if want == nil {
				want = f.in
			}
			if d := packet.Diff(want, out); d != "" {
				t.Errorf("output differs (-want +got):\n%s", d)
			}
			if f.wantOut != nil {
				if err := packet.VerifyFrame(out); err != nil {
					t.Errorf("output frame: %v", err)
				}
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
	dc := dcOpen(t, dcLocal4)
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
	dc := dcOpen(t, locals...)
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
