package xdp

// Datapath fixtures: packets through the load-balancer program with
// BPF_PROG_TEST_RUN, each with the verdict, the exact output bytes and the one
// global counter it must move. datapathFixtures is the table; benchmarks reuse
// it (fixtureWorld and fixture.setup build the maps a fixture expects, in a
// namespace with an interface for redirects: fxNewEnv).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/gpcheck"
	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// XDP verdicts, as BPF_PROG_TEST_RUN returns them.
const (
	fxAborted  uint32 = 0
	fxDrop     uint32 = 1
	fxPass     uint32 = 2
	fxTX       uint32 = 3
	fxRedirect uint32 = 4
)

var fxVerdictNames = map[uint32]string{fxAborted: "XDP_ABORTED", fxDrop: "XDP_DROP", fxPass: "XDP_PASS", fxTX: "XDP_TX", fxRedirect: "XDP_REDIRECT"}

func fxVerdict(v uint32) string {
	if n, ok := fxVerdictNames[v]; ok {
		return n
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// fixture is one packet through the program.
type fixture struct {
	name string
	// setup changes the fixture world for this fixture (nil: the world
	// alone). Fixtures with the same setup share a datapath.
	setup       *fixtureSetup
	in          []byte
	wantVerdict uint32
	// wantOut is the exact output frame; nil means "the input, unchanged".
	wantOut []byte
	// wantCounter is the one verdict counter ("action/reason") that must move,
	// by exactly one.
	wantCounter string
	// wantEvents are event counters that must each move by exactly one.
	wantEvents []string
}

// fixtureSetup is a named change to the fixture world.
type fixtureSetup struct {
	name  string
	apply func(tb testing.TB, d *Datapath)
}

// fixtureEnv is the network namespace fixtures run in: redirect targets must
// be interfaces of the namespace that updates the tx ports and runs the
// program.
type fixtureEnv struct {
	ns *testnet.NS
	// ifindex is in the tx ports (the world's redirect backends use it),
	// peer is not.
	ifindex, peer int
}

// fxNewEnv creates a namespace with a veth pair (this kernel has no dummy
// driver), removed when tb ends.
func fxNewEnv(tb testing.TB) fixtureEnv {
	tb.Helper()
	testnet.RequirePrivileged(tb)
	ns, err := testnet.NewNS("xfix")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Close() })
	if err := ns.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xfix0"}, PeerName: "xfix1"}); err != nil {
		tb.Fatal(err)
	}
	env := fixtureEnv{ns: ns}
	for _, name := range []string{"xfix0", "xfix1"} {
		l, err := ns.Netlink().LinkByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		if err := ns.Netlink().LinkSetUp(l); err != nil {
			tb.Fatal(err)
		}
		if l.Attrs().Index == 1 {
			tb.Fatalf("%s has ifindex 1, the test-run ingress", name)
		}
		if name == "xfix0" {
			env.ifindex = l.Attrs().Index
		} else {
			env.peer = l.Attrs().Index
		}
	}
	return env
}

// do runs fn inside the namespace.
func (e fixtureEnv) do(tb testing.TB, fn func()) {
	tb.Helper()
	if err := e.ns.Do(func() error { fn(); return nil }); err != nil {
		tb.Fatal(err)
	}
}

func fxMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// The fixture world: addresses, MACs, backends and VIPs every fixture may use.
var (
	fxLBMAC     = fxMAC("02:00:00:00:00:01") // the appliance's interface, frames arrive to it
	fxEgressMAC = fxMAC("02:00:00:00:00:02") // SrcMAC of every backend
	fxRouterMAC = fxMAC("02:00:00:00:00:fe") // frames arrive from it

	fxClient4 = netip.MustParseAddr("198.18.1.10")
	fxClient6 = netip.MustParseAddr("2001:db8:1::10")
	fxRouter4 = netip.MustParseAddr("198.18.5.1") // sends ICMP errors
	fxRouter6 = netip.MustParseAddr("2001:db8:5::1")
	fxOther4  = netip.MustParseAddr("198.18.9.9") // no VIP
	fxOther6  = netip.MustParseAddr("2001:db8:9::9")

	fxEncap4 = netip.MustParsePrefix("198.18.3.1/32")
	fxEncap6 = netip.MustParsePrefix("2001:db8:3::1/128")
	// Spreading prefixes: host bits vary with the flow hash.
	fxEncap4Spread = netip.MustParsePrefix("198.18.4.0/24")
	fxEncap6Spread = netip.MustParsePrefix("2001:db8:4::/112")
)

// VIP addresses of the world.
var (
	fxVIP4L2     = netip.MustParseAddr("198.19.0.1")
	fxVIP6L2     = netip.MustParseAddr("2001:db8:100::1")
	fxVIP4Any    = netip.MustParseAddr("198.19.0.2") // port 0: every TCP port
	fxVIP4in4    = netip.MustParseAddr("198.19.0.3")
	fxVIP6in6    = netip.MustParseAddr("2001:db8:100::3")
	fxVIP4in6    = netip.MustParseAddr("198.19.0.4")
	fxVIP6in4    = netip.MustParseAddr("2001:db8:100::4")
	fxVIP4MTU    = netip.MustParseAddr("198.19.0.5")      // 4in4 to a backend with MTU 1400
	fxVIP6MTU    = netip.MustParseAddr("2001:db8:100::5") // 6in6, MTU 1400
	fxVIP4in6MTU = netip.MustParseAddr("198.19.0.10")     // 4in6, MTU 1400
	fxVIP4NoTab  = netip.MustParseAddr("198.19.0.6")      // no table
	fxVIP4NoBE   = netip.MustParseAddr("198.19.0.7")      // table names a missing backend
	fxVIP4Three  = netip.MustParseAddr("198.19.0.8")      // L2, three backends
	fxVIP6Three  = netip.MustParseAddr("2001:db8:100::8")
	fxVIP4ThreeT = netip.MustParseAddr("198.19.0.9") // IPIP, three backends
	fxVIP6ThreeT = netip.MustParseAddr("2001:db8:100::9")
	fxVIP6in4MTU = netip.MustParseAddr("2001:db8:100::6") // 6in4, MTU 1400
	fxVIP4SNAT   = netip.MustParseAddr("198.19.0.11")     // SNAT, no SNAT source configured
	fxVIP4Redir  = netip.MustParseAddr("198.19.0.12")     // L2 and IPIP, backend behind another interface
	fxVIP4NoPort = netip.MustParseAddr("198.19.0.13")     // backend behind an interface not in the tx ports
)

// Backends behind interfaces other than the ingress one; their ifindex comes
// from the fixtureEnv.
const (
	fxRedirBackend  = 31 // env.ifindex, in the tx ports
	fxNoPortBackend = 32 // env.peer, not in the tx ports
)

type fxVIPDef struct {
	key   VIPKey
	vip   VIP
	table []uint32 // nil: no SetTable
}

type fxWorld struct {
	backends map[uint32]Backend
	vips     []fxVIPDef
}

func fxBackend(addr string, mac string, mtu int) Backend {
	return Backend{Addr: netip.MustParseAddr(addr), IfIndex: 1, NextHopMAC: fxMAC(mac), SrcMAC: fxEgressMAC, MTU: mtu, Up: true}
}

// fxFill is a table of n slots all naming id.
func fxFill(n int, id uint32) []uint32 {
	t := make([]uint32, n)
	for i := range t {
		t[i] = id
	}
	return t
}

// fxThree is a 13-slot table over backends 11, 12, 13.
func fxThree() []uint32 {
	t := make([]uint32, 13)
	for i := range t {
		t[i] = 11 + uint32(i*7%3)
	}
	return t
}

// fixtureWorld is the datapath state the fixtures run against.
var fixtureWorld = newFixtureWorld()

func newFixtureWorld() *fxWorld {
	w := &fxWorld{backends: map[uint32]Backend{
		1:               fxBackend("198.18.2.1", "02:00:00:00:01:01", 0),
		2:               fxBackend("2001:db8:2::2", "02:00:00:00:01:02", 0),
		3:               fxBackend("198.18.2.3", "02:00:00:00:01:03", 0),
		4:               fxBackend("2001:db8:2::4", "02:00:00:00:01:04", 0),
		5:               fxBackend("198.18.2.5", "02:00:00:00:01:05", 1400),
		6:               fxBackend("2001:db8:2::6", "02:00:00:00:01:06", 1400),
		11:              fxBackend("198.18.2.11", "02:00:00:00:01:11", 0),
		12:              fxBackend("198.18.2.12", "02:00:00:00:01:12", 0),
		13:              fxBackend("198.18.2.13", "02:00:00:00:01:13", 0),
		fxRedirBackend:  fxBackend("198.18.2.31", "02:00:00:00:01:31", 0),
		fxNoPortBackend: fxBackend("198.18.2.32", "02:00:00:00:01:32", 0),
	}}
	l2 := func(a netip.Addr, port uint16, proto Proto, seed uint32, table []uint32) {
		w.vips = append(w.vips, fxVIPDef{VIPKey{a, port, proto}, VIP{Mode: ModeDSRL2, HashSeed: seed}, table})
	}
	ipip := func(a netip.Addr, port uint16, seed uint32, table []uint32) {
		w.vips = append(w.vips, fxVIPDef{VIPKey{a, port, TCP}, VIP{Mode: ModeDSRIPIP, HashSeed: seed}, table})
	}
	l2(fxVIP4L2, 80, TCP, 0x1001, fxFill(7, 1))
	l2(fxVIP4L2, 53, UDP, 0x1002, fxFill(7, 1))
	l2(fxVIP6L2, 80, TCP, 0x1003, fxFill(7, 2))
	l2(fxVIP6L2, 53, UDP, 0x1004, fxFill(7, 2))
	l2(fxVIP4Any, 0, TCP, 0x1005, fxFill(7, 1))
	ipip(fxVIP4in4, 80, 0x2001, fxFill(7, 3))
	ipip(fxVIP6in6, 80, 0x2002, fxFill(7, 4))
	ipip(fxVIP4in6, 80, 0x2003, fxFill(7, 4))
	ipip(fxVIP6in4, 80, 0x2004, fxFill(7, 3))
	ipip(fxVIP4MTU, 80, 0x2005, fxFill(7, 5))
	ipip(fxVIP6MTU, 80, 0x2006, fxFill(7, 6))
	ipip(fxVIP4in6MTU, 80, 0x2007, fxFill(7, 6))
	ipip(fxVIP6in4MTU, 80, 0x2008, fxFill(7, 5))
	l2(fxVIP4NoTab, 80, TCP, 0x3001, nil)
	l2(fxVIP4NoBE, 80, TCP, 0x3002, fxFill(7, 99))
	l2(fxVIP4Three, 80, TCP, 0x4001, fxThree())
	l2(fxVIP6Three, 80, TCP, 0x4002, fxThree())
	ipip(fxVIP4ThreeT, 80, 0x4003, fxThree())
	ipip(fxVIP6ThreeT, 80, 0x4004, fxThree())
	w.vips = append(w.vips, fxVIPDef{VIPKey{fxVIP4SNAT, 80, TCP}, VIP{Mode: ModeSNAT, HashSeed: 0x5001}, fxFill(7, 1)})
	l2(fxVIP4Redir, 80, TCP, 0x6001, fxFill(7, fxRedirBackend))
	ipip(fxVIP4Redir, 443, 0x6002, fxFill(7, fxRedirBackend))
	l2(fxVIP4NoPort, 80, TCP, 0x6003, fxFill(7, fxNoPortBackend))
	return w
}

// apply writes the world into d, inside env's namespace.
func (w *fxWorld) apply(tb testing.TB, d *Datapath, env fixtureEnv) {
	tb.Helper()
	env.do(tb, func() {
		if err := d.AddTxPort(env.ifindex); err != nil {
			tb.Fatal(err)
		}
		w.applyVIPs(tb, d, env)
	})
}

// applyVIPs writes the backends and the VIPs of the given addresses (all
// when none) into d.
func (w *fxWorld) applyVIPs(tb testing.TB, d *Datapath, env fixtureEnv, addrs ...netip.Addr) {
	tb.Helper()
	for id, b := range w.backends {
		switch id {
		case fxRedirBackend:
			b.IfIndex = env.ifindex
		case fxNoPortBackend:
			b.IfIndex = env.peer
		}
		if err := d.UpsertBackend(id, b); err != nil {
			tb.Fatal(err)
		}
	}
	for _, v := range w.vips {
		if len(addrs) > 0 && !slices.Contains(addrs, v.key.Addr) {
			continue
		}
		if err := d.UpsertVIP(v.key, v.vip); err != nil {
			tb.Fatal(err)
		}
		if v.table != nil {
			if err := d.SetTable(v.key, v.table); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := d.SetEncapSource(fxEncap4, fxEncap6); err != nil {
		tb.Fatal(err)
	}
}

// fxNoEnv is for datapaths without redirect backends.
var fxNoEnv fixtureEnv

func (w *fxWorld) vip(a netip.Addr, port uint16, proto Proto) fxVIPDef {
	for _, v := range w.vips {
		if v.key == (VIPKey{a, port, proto}) {
			return v
		}
	}
	panic(fmt.Sprintf("no fixture VIP %s:%d/%s", a, port, proto))
}

// pick predicts the backend of the flow src -> dst of service v, as the
// program must choose it: table[Slot(FlowHash, M)].
func (w *fxWorld) pick(v fxVIPDef, src, dst netip.AddrPort) (uint32, Backend, uint32) {
	h := FlowHash(src, dst, v.key.Proto, v.vip.HashSeed)
	id := v.table[Slot(h, len(v.table))]
	return id, w.backends[id], h
}

// vipAddrs are the world's VIP addresses.
func (w *fxWorld) vipAddrs() []netip.Addr {
	var out []netip.Addr
	for _, v := range w.vips {
		if !slices.Contains(out, v.key.Addr) {
			out = append(out, v.key.Addr)
		}
	}
	return out
}

// filterTwin is an IPv4 address of 198.18.0.0/15 that is no VIP but sets the
// same prefilter bit as one, so that the program looks further at packets to
// it.
func (w *fxWorld) filterTwin() netip.Addr {
	bits := map[uint32]bool{}
	vips := w.vipAddrs()
	for _, a := range vips {
		bits[FilterBit(a)] = true
	}
	for i := uint32(0); i < 1<<17; i++ {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], 198<<24|18<<16|i)
		a := netip.AddrFrom4(b)
		if bits[FilterBit(a)] && !slices.Contains(vips, a) {
			return a
		}
	}
	panic("no address in 198.18.0.0/15 shares a filter bit with a fixture VIP")
}

// Packet construction helpers.

func fxAP(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// fxIP is a TCP (or UDP when udp) packet from src to dst.
func fxIP(src, dst netip.AddrPort, flags packet.TCPFlags, payload []byte) packet.Layer {
	tcp := packet.TCP{SrcPort: src.Port(), DstPort: dst.Port(), Seq: 0x01020304, Flags: flags, Window: 64240, Payload: payload}
	if flags&packet.TCPAck != 0 {
		tcp.Ack = 0x0a0b0c0d
	}
	if src.Addr().Is4() {
		return packet.IPv4{Src: src.Addr(), Dst: dst.Addr(), ID: 0x4d2, Flags: packet.IPv4DontFragment, TTL: 61, Payload: tcp}
	}
	return packet.IPv6{Src: src.Addr(), Dst: dst.Addr(), HopLimit: 61, FlowLabel: 0x12345, Payload: tcp}
}

func fxUDP(src, dst netip.AddrPort, payload []byte) packet.Layer {
	udp := packet.UDP{SrcPort: src.Port(), DstPort: dst.Port(), Payload: payload}
	if src.Addr().Is4() {
		return packet.IPv4{Src: src.Addr(), Dst: dst.Addr(), ID: 0x4d3, TTL: 61, Payload: udp}
	}
	return packet.IPv6{Src: src.Addr(), Dst: dst.Addr(), HopLimit: 61, Payload: udp}
}

// fxIn is a frame arriving at the appliance.
func fxIn(l packet.Layer, vlan *packet.VLAN) []byte {
	return packet.MustBuild(packet.Ethernet{Dst: fxLBMAC, Src: fxRouterMAC, VLAN: vlan, Payload: l})
}

// fxL2Out is l sent to backend b by MAC rewrite.
func fxL2Out(b Backend, l packet.Layer, vlan *packet.VLAN) []byte {
	return packet.MustBuild(packet.Ethernet{Dst: b.NextHopMAC, Src: b.SrcMAC, VLAN: vlan, Payload: l})
}

// fxEncapSrc is the outer source the program must choose from prefix p for a
// flow of hash h: the prefix's host bits replaced by the hash's low bits.
func fxEncapSrc(p netip.Prefix, h uint32) netip.Addr {
	host := p.Addr().BitLen() - p.Bits()
	if host == 0 {
		return p.Addr()
	}
	mask := uint32(1)<<host - 1
	if host == 32 {
		mask = 0xffffffff
	}
	b := p.Addr().AsSlice()
	last := binary.BigEndian.Uint32(b[len(b)-4:])
	binary.BigEndian.PutUint32(b[len(b)-4:], last&^mask|h&mask)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// fxTOS is the IPv4 TOS or IPv6 traffic class of the IP packet ip.
func fxTOS(ip []byte) uint8 {
	if ip[0]>>4 == 4 {
		return ip[1]
	}
	return uint8(binary.BigEndian.Uint32(ip) >> 20)
}

// fxRouted is the IP packet ip as a router forwards it: TTL or hop limit one
// lower, the IPv4 header checksum computed anew.
func fxRouted(ip []byte) []byte {
	out := bytes.Clone(ip)
	if out[0]>>4 == 4 {
		out[8]--
		binary.BigEndian.PutUint16(out[10:], 0)
		binary.BigEndian.PutUint16(out[10:], ^fxOnesSum(out[:20]))
		return out
	}
	out[7]--
	return out
}

// fxIPIPOut is the IP packet inner encapsulated toward backend b for a flow of
// hash h, with outer sources from src4 and src6: inner is routed (fxRouted).
func fxIPIPOut(b Backend, inner []byte, h uint32, src4, src6 netip.Prefix, vlan *packet.VLAN) []byte {
	inner = fxRouted(inner)
	var outer packet.Layer
	if b.Addr.Is4() {
		outer = packet.IPv4{Src: fxEncapSrc(src4, h), Dst: b.Addr, TOS: fxTOS(inner), Flags: packet.IPv4DontFragment, TTL: 64, Payload: packet.RawIP(inner)}
	} else {
		outer = packet.IPv6{Src: fxEncapSrc(src6, h), Dst: b.Addr, TrafficClass: fxTOS(inner), FlowLabel: h & 0xfffff, HopLimit: 64, Payload: packet.RawIP(inner)}
	}
	return packet.MustBuild(packet.Ethernet{Dst: b.NextHopMAC, Src: b.SrcMAC, VLAN: vlan, Payload: outer})
}

// fxTooBig is the ICMP "fragmentation needed" or ICMPv6 "packet too big" the
// program answers the IP packet ip (from client to vip) with.
func fxTooBig(ip []byte, client, vip netip.Addr, mtu int, vlan *packet.VLAN) []byte {
	var l packet.Layer
	if vip.Is4() {
		l = packet.IPv4{Src: vip, Dst: client, TOS: 0xc0, TTL: 64, Payload: packet.ICMPv4{
			Type: packet.ICMPv4DestUnreachable, Code: packet.ICMPv4CodeFragNeeded,
			Rest: packet.FragNeededRest(uint16(mtu)), Body: ip[:28],
		}}
	} else {
		l = packet.IPv6{Src: vip, Dst: client, HopLimit: 64, Payload: packet.ICMPv6{
			Type: packet.ICMPv6PacketTooBig, Rest: packet.PacketTooBigRest(uint32(mtu)), Body: ip[:48],
		}}
	}
	return packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, VLAN: vlan, Payload: l})
}

// fxICMPError is an ICMP error from a router to vip quoting the packet the
// backend sent from vip:vport to client:cport. For IPv4 it is "fragmentation
// needed", for IPv6 "packet too big" (or time exceeded when timeExceeded).
func fxICMPError(vip netip.Addr, vport uint16, client netip.AddrPort, proto Proto, timeExceeded bool) packet.Layer {
	src := fxAP(vip, vport)
	var quoted []byte
	if proto == UDP {
		quoted = packet.MustBuild(fxUDP(src, client, bytes.Repeat([]byte{0xab}, 1200)))
	} else {
		quoted = packet.MustBuild(fxIP(src, client, packet.TCPAck|packet.TCPPsh, bytes.Repeat([]byte{0xab}, 1200)))
	}
	if vip.Is4() {
		m := packet.ICMPv4{Type: packet.ICMPv4DestUnreachable, Code: packet.ICMPv4CodeFragNeeded, Rest: packet.FragNeededRest(1200), Body: quoted[:28]}
		if timeExceeded {
			m = packet.ICMPv4{Type: packet.ICMPv4TimeExceeded, Body: quoted[:28]}
		}
		return packet.IPv4{Src: fxRouter4, Dst: vip, TOS: 0x10, TTL: 250, Payload: m}
	}
	m := packet.ICMPv6{Type: packet.ICMPv6PacketTooBig, Rest: packet.PacketTooBigRest(1280), Body: quoted[:40+32]}
	if timeExceeded {
		m = packet.ICMPv6{Type: packet.ICMPv6TimeExceeded, Body: quoted[:40+32]}
	}
	return packet.IPv6{Src: fxRouter6, Dst: vip, TrafficClass: 0x20, HopLimit: 250, Payload: m}
}

// fxDecisivePort returns a client port whose flow (client:port -> vip:vport)
// maps to a different backend than the quoted packet's own tuple (vip:vport
// -> client:port) and than the tuple with the ports swapped, so that a program
// that hashes the wrong tuple picks the wrong backend.
func fxDecisivePort(w *fxWorld, v fxVIPDef, client netip.Addr) uint16 {
	for p := uint16(40000); p < 50000; p++ {
		c, s := fxAP(client, p), fxAP(v.key.Addr, 80)
		right, _, _ := w.pick(v, c, s)
		wrong1, _, _ := w.pick(v, s, c)
		wrong2, _, _ := w.pick(v, fxAP(client, 80), fxAP(v.key.Addr, p))
		if right != wrong1 && right != wrong2 {
			return p
		}
	}
	panic("no decisive client port")
}

// datapathFixtures is the fixture table.
func datapathFixtures() []fixture {
	w := fixtureWorld
	var fs []fixture
	add := func(f fixture) { fs = append(fs, f) }
	vlan := &packet.VLAN{ID: 100, Priority: 3}
	payload := []byte("GET / HTTP/1.1\r\nHost: xdplb\r\n\r\n")
	c4 := fxAP(fxClient4, 40001)
	c6 := fxAP(fxClient6, 40001)
	big := bytes.Repeat([]byte{0x5a}, 1400-40) // IP packet of 1400 bytes with TCP over IPv4

	// Not for us.
	add(fixture{name: "non-VIP IPv4 TCP passes untouched", in: fxIn(fxIP(c4, fxAP(fxOther4, 80), packet.TCPSyn, nil), nil),
		wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	add(fixture{name: "non-VIP IPv6 TCP passes untouched", in: fxIn(fxIP(c6, fxAP(fxOther6, 80), packet.TCPSyn, nil), nil),
		wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	add(fixture{name: "ARP passes", in: packet.MustBuild(packet.Ethernet{
		Dst: fxMAC("ff:ff:ff:ff:ff:ff"), Src: fxRouterMAC, EtherType: packet.EtherTypeARP,
		Payload: packet.Raw(append([]byte{0, 1, 8, 0, 6, 4, 0, 1}, make([]byte, 20)...)),
	}), wantVerdict: fxPass, wantCounter: "pass/not_ip"})
	add(fixture{name: "VIP address, port without service", in: fxIn(fxIP(c4, fxAP(fxVIP4L2, 81), packet.TCPSyn, nil), nil),
		wantVerdict: fxDrop, wantCounter: "drop/no_service"})
	add(fixture{name: "VIP address, UDP to a TCP-only service", in: fxIn(fxUDP(c4, fxAP(fxVIP4in4, 80), payload), nil),
		wantVerdict: fxDrop, wantCounter: "drop/no_service"})
	add(fixture{name: "IPv6 VIP address, port without service", in: fxIn(fxIP(c6, fxAP(fxVIP6L2, 443), packet.TCPAck, nil), nil),
		wantVerdict: fxDrop, wantCounter: "drop/no_service"})

	// L2 DSR.
	{
		v := w.vip(fxVIP4L2, 80, TCP)
		ip := fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPSyn, nil)
		_, b, _ := w.pick(v, c4, fxAP(fxVIP4L2, 80))
		add(fixture{name: "L2 DSR IPv4 TCP SYN", in: fxIn(ip, nil), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, nil),
			wantCounter: "tx/dsr_l2", wantEvents: []string{"event/tcp_syn"}})
		ip = fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPAck|packet.TCPPsh, payload)
		add(fixture{name: "L2 DSR IPv4 TCP data, one VLAN tag kept", in: fxIn(ip, vlan), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, vlan),
			wantCounter: "tx/dsr_l2", wantEvents: []string{"event/vlan_tagged"}})
		qinq := &packet.VLAN{TPID: packet.EtherTypeQinQ, ID: 200}
		add(fixture{name: "L2 DSR IPv4, one 802.1ad tag kept", in: fxIn(ip, qinq), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, qinq),
			wantCounter: "tx/dsr_l2", wantEvents: []string{"event/vlan_tagged"}})
		// A minimum-size frame carries Ethernet padding after the IP packet.
		in := append(fxIn(fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPAck, nil), nil), make([]byte, 6)...)
		out := append(fxL2Out(b, fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPAck, nil), nil), make([]byte, 6)...)
		add(fixture{name: "L2 DSR IPv4 with Ethernet padding", in: in, wantVerdict: fxTX, wantOut: out, wantCounter: "tx/dsr_l2"})
	}
	{
		v := w.vip(fxVIP4L2, 53, UDP)
		ip := fxUDP(c4, fxAP(fxVIP4L2, 53), payload)
		_, b, _ := w.pick(v, c4, fxAP(fxVIP4L2, 53))
		add(fixture{name: "L2 DSR IPv4 UDP", in: fxIn(ip, nil), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, nil), wantCounter: "tx/dsr_l2"})
	}
	{
		v := w.vip(fxVIP6L2, 80, TCP)
		ip := fxIP(c6, fxAP(fxVIP6L2, 80), packet.TCPSyn, nil)
		_, b, _ := w.pick(v, c6, fxAP(fxVIP6L2, 80))
		add(fixture{name: "L2 DSR IPv6 TCP SYN", in: fxIn(ip, nil), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, nil),
			wantCounter: "tx/dsr_l2", wantEvents: []string{"event/tcp_syn"}})
		ip = fxIP(c6, fxAP(fxVIP6L2, 80), packet.TCPAck, payload)
		add(fixture{name: "L2 DSR IPv6 TCP data, one VLAN tag kept", in: fxIn(ip, vlan), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, vlan),
			wantCounter: "tx/dsr_l2", wantEvents: []string{"event/vlan_tagged"}})
		u := w.vip(fxVIP6L2, 53, UDP)
		uip := fxUDP(c6, fxAP(fxVIP6L2, 53), payload)
		_, ub, _ := w.pick(u, c6, fxAP(fxVIP6L2, 53))
		add(fixture{name: "L2 DSR IPv6 UDP", in: fxIn(uip, nil), wantVerdict: fxTX, wantOut: fxL2Out(ub, uip, nil), wantCounter: "tx/dsr_l2"})
	}
	{
		v := w.vip(fxVIP4Any, 0, TCP)
		ip := fxIP(c4, fxAP(fxVIP4Any, 8443), packet.TCPSyn, nil)
		_, b, _ := w.pick(v, c4, fxAP(fxVIP4Any, 8443))
		add(fixture{name: "port-0 VIP catches any port", in: fxIn(ip, nil), wantVerdict: fxTX, wantOut: fxL2Out(b, ip, nil), wantCounter: "tx/dsr_l2"})
	}
	{
		// Two tags: 802.1ad outside, 802.1Q inside.
		inner := packet.MustBuild(fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPSyn, nil))
		tag := append([]byte{0x00, 0x64, 0x08, 0x00}, inner...)
		in := packet.MustBuild(packet.Ethernet{Dst: fxLBMAC, Src: fxRouterMAC, VLAN: &packet.VLAN{TPID: packet.EtherTypeQinQ, ID: 10},
			EtherType: packet.EtherTypeVLAN, Payload: packet.Raw(tag)})
		add(fixture{name: "stacked VLAN tags pass", in: in, wantVerdict: fxPass, wantCounter: "pass/vlan_stacked"})
	}

	// IPIP.
	ipip := func(name string, vip netip.Addr, client netip.AddrPort, tos uint8, vlan *packet.VLAN, src4, src6 netip.Prefix, setup *fixtureSetup) {
		v := w.vip(vip, 80, TCP)
		dst := fxAP(vip, 80)
		var l packet.Layer
		tcp := packet.TCP{SrcPort: client.Port(), DstPort: 80, Seq: 7, Ack: 9, Flags: packet.TCPAck | packet.TCPPsh, Window: 512, Payload: payload}
		if vip.Is4() {
			l = packet.IPv4{Src: client.Addr(), Dst: vip, TOS: tos, ID: 0x77, Flags: packet.IPv4DontFragment, TTL: 55, Payload: tcp}
		} else {
			l = packet.IPv6{Src: client.Addr(), Dst: vip, TrafficClass: tos, FlowLabel: 0xabcde, HopLimit: 55, Payload: tcp}
		}
		inner := packet.MustBuild(l)
		_, b, h := w.pick(v, client, dst)
		f := fixture{name: name, setup: setup, in: fxIn(l, vlan), wantVerdict: fxTX, wantOut: fxIPIPOut(b, inner, h, src4, src6, vlan), wantCounter: "tx/dsr_ipip"}
		if vlan != nil {
			f.wantEvents = []string{"event/vlan_tagged"}
		}
		add(f)
	}
	ipip("IPIP 4in4", fxVIP4in4, c4, 0xb9, nil, fxEncap4, fxEncap6, nil)
	ipip("IPIP 6in6", fxVIP6in6, c6, 0xb9, nil, fxEncap4, fxEncap6, nil)
	ipip("IPIP 4in6", fxVIP4in6, c4, 0x2e, nil, fxEncap4, fxEncap6, nil)
	ipip("IPIP 6in4 (IPv6 VIP, IPv4 backend)", fxVIP6in4, c6, 0x2e, nil, fxEncap4, fxEncap6, nil)
	ipip("IPIP 4in4 with VLAN", fxVIP4in4, fxAP(fxClient4, 51000), 0x01, vlan, fxEncap4, fxEncap6, nil)
	ipip("IPIP 6in6 with VLAN", fxVIP6in6, fxAP(fxClient6, 51000), 0x01, vlan, fxEncap4, fxEncap6, nil)
	ipip("IPIP 4in6 with an 802.1ad tag", fxVIP4in6, fxAP(fxClient4, 51001), 0x01, &packet.VLAN{TPID: packet.EtherTypeQinQ, ID: 4000, DropEligible: true}, fxEncap4, fxEncap6, nil)
	{
		// Ethernet padding after a short packet travels inside the tunnel,
		// after the inner packet the outer length covers.
		v := w.vip(fxVIP4in4, 80, TCP)
		ip := fxIP(c4, fxAP(fxVIP4in4, 80), packet.TCPAck, nil)
		_, b, h := w.pick(v, c4, fxAP(fxVIP4in4, 80))
		add(fixture{name: "IPIP 4in4 with Ethernet padding", in: append(fxIn(ip, nil), make([]byte, 6)...), wantVerdict: fxTX,
			wantOut: append(fxIPIPOut(b, packet.MustBuild(ip), h, fxEncap4, fxEncap6, nil), make([]byte, 6)...), wantCounter: "tx/dsr_ipip"})
	}
	spread := &fixtureSetup{name: "encap source spread", apply: func(tb testing.TB, d *Datapath) {
		if err := d.SetEncapSource(fxEncap4Spread, fxEncap6Spread); err != nil {
			tb.Fatal(err)
		}
	}}
	for _, port := range []uint16{40001, 40002} {
		ipip(fmt.Sprintf("IPIP 4in4, encap source spread over a /24 (port %d)", port), fxVIP4in4, fxAP(fxClient4, port), 0, nil, fxEncap4Spread, fxEncap6Spread, spread)
		ipip(fmt.Sprintf("IPIP 6in6, encap source spread over a /112 (port %d)", port), fxVIP6in6, fxAP(fxClient6, port), 0, nil, fxEncap4Spread, fxEncap6Spread, spread)
	}
	ipip("IPIP 6in4, encap source spread over a /24", fxVIP6in4, c6, 0, nil, fxEncap4Spread, fxEncap6Spread, spread)
	ipip("IPIP 4in6, encap source spread over a /112", fxVIP4in6, c4, 0, nil, fxEncap4Spread, fxEncap6Spread, spread)

	// Too big to encapsulate.
	{
		ip4 := fxIP(c4, fxAP(fxVIP4MTU, 80), packet.TCPAck, big)
		raw4 := packet.MustBuild(ip4)
		add(fixture{name: "IPIP 4in4 too big, DF set: ICMP fragmentation needed", in: fxIn(ip4, nil), wantVerdict: fxTX,
			wantOut: fxTooBig(raw4, fxClient4, fxVIP4MTU, 1400-20, nil), wantCounter: "tx/icmp_too_big"})
		add(fixture{name: "IPIP 4in4 too big with VLAN: ICMP fragmentation needed, tag kept", in: fxIn(ip4, vlan), wantVerdict: fxTX,
			wantOut: fxTooBig(raw4, fxClient4, fxVIP4MTU, 1400-20, vlan), wantCounter: "tx/icmp_too_big", wantEvents: []string{"event/vlan_tagged"}})
		nodf := packet.IPv4{Src: fxClient4, Dst: fxVIP4MTU, TTL: 61, Payload: packet.TCP{SrcPort: c4.Port(), DstPort: 80, Flags: packet.TCPAck, Payload: big}}
		add(fixture{name: "IPIP 4in4 too big, DF clear: dropped", in: fxIn(nodf, nil), wantVerdict: fxDrop, wantCounter: "drop/too_big_df_clear"})
		fits := fxIP(c4, fxAP(fxVIP4MTU, 80), packet.TCPAck, big[:1380-40])
		v := w.vip(fxVIP4MTU, 80, TCP)
		_, b, h := w.pick(v, c4, fxAP(fxVIP4MTU, 80))
		add(fixture{name: "IPIP 4in4 exactly at the MTU is encapsulated", in: fxIn(fits, nil), wantVerdict: fxTX,
			wantOut: fxIPIPOut(b, packet.MustBuild(fits), h, fxEncap4, fxEncap6, nil), wantCounter: "tx/dsr_ipip"})

		ip6 := fxIP(c6, fxAP(fxVIP6MTU, 80), packet.TCPAck, big[:1400-60])
		raw6 := packet.MustBuild(ip6)
		add(fixture{name: "IPIP 6in6 too big: ICMPv6 packet too big", in: fxIn(ip6, nil), wantVerdict: fxTX,
			wantOut: fxTooBig(raw6, fxClient6, fxVIP6MTU, 1400-40, nil), wantCounter: "tx/icmp_too_big"})
		ip46 := fxIP(c4, fxAP(fxVIP4in6MTU, 80), packet.TCPAck, big[:1380-40])
		ip64 := fxIP(c6, fxAP(fxVIP6in4MTU, 80), packet.TCPAck, big[:1400-60])
		add(fixture{name: "IPIP 6in4 too big: packet too big names MTU-20", in: fxIn(ip64, nil), wantVerdict: fxTX,
			wantOut: fxTooBig(packet.MustBuild(ip64), fxClient6, fxVIP6in4MTU, 1400-20, nil), wantCounter: "tx/icmp_too_big"})
		add(fixture{name: "IPIP 4in6 too big: fragmentation needed names MTU-40", in: fxIn(ip46, nil), wantVerdict: fxTX,
			wantOut: fxTooBig(packet.MustBuild(ip46), fxClient4, fxVIP4in6MTU, 1400-40, nil), wantCounter: "tx/icmp_too_big"})
	}

	// Truncated and malformed.
	twin := w.filterTwin()
	add(fixture{name: "Ethernet header only, IPv4 ethertype", in: packet.MustBuild(packet.Ethernet{Dst: fxLBMAC, Src: fxRouterMAC, EtherType: packet.EtherTypeIPv4}),
		wantVerdict: fxPass, wantCounter: "pass/truncated"})
	{
		full := fxIn(fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPSyn, nil), vlan)
		add(fixture{name: "cut inside the VLAN tag", in: full[:16], wantVerdict: fxPass, wantCounter: "pass/truncated"})
		full = fxIn(fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPSyn, nil), nil)
		add(fixture{name: "cut inside the IPv4 header", in: full[:14+19], wantVerdict: fxPass, wantCounter: "pass/truncated"})
		full6 := fxIn(fxIP(c6, fxAP(fxVIP6L2, 80), packet.TCPSyn, nil), nil)
		add(fixture{name: "cut inside the IPv6 header", in: full6[:14+39], wantVerdict: fxPass, wantCounter: "pass/truncated"})
	}
	long := func(dst netip.Addr) []byte {
		return fxIn(packet.IPv4{Src: fxClient4, Dst: dst, TTL: 61, TotalLength: 200, Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil)
	}
	add(fixture{name: "IPv4 total length beyond the frame, VIP", in: long(fxVIP4L2), wantVerdict: fxDrop, wantCounter: "drop/bad_ip_header"})
	add(fixture{name: "IPv4 total length beyond the frame, not a VIP (prefilter hit)", in: long(twin), wantVerdict: fxPass, wantCounter: "pass/bad_ip_header"})
	add(fixture{name: "IPv4 to a prefilter twin of a VIP passes", in: fxIn(fxIP(c4, fxAP(twin, 80), packet.TCPSyn, nil), nil),
		wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	add(fixture{name: "IPv4 total length shorter than the header, VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, TotalLength: 19,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_ip_header"})
	add(fixture{name: "IPv4 version 5 to a VIP", in: fxIn(packet.IPv4{Version: 5, Src: fxClient4, Dst: fxVIP4L2, TTL: 61,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_ip_header"})
	cutL4 := func(l packet.Layer, keep int) []byte {
		// The IP header says the packet ends keep bytes into the transport
		// header, and so does the frame.
		switch ip := l.(type) {
		case packet.IPv4:
			ip.TotalLength = uint16(20 + keep)
			return fxIn(ip, nil)[:14+20+keep]
		case packet.IPv6:
			ip.PayloadLength = uint16(keep)
			return fxIn(ip, nil)[:14+40+keep]
		}
		panic("not IP")
	}
	add(fixture{name: "cut inside the TCP header, IPv4 VIP", in: cutL4(fxIP(c4, fxAP(fxVIP4L2, 80), packet.TCPSyn, nil), 12),
		wantVerdict: fxDrop, wantCounter: "drop/truncated"})
	add(fixture{name: "cut inside the TCP header, IPv6 VIP", in: cutL4(fxIP(c6, fxAP(fxVIP6L2, 80), packet.TCPSyn, nil), 19),
		wantVerdict: fxDrop, wantCounter: "drop/truncated"})
	add(fixture{name: "cut inside the UDP header, IPv4 VIP", in: cutL4(fxUDP(c4, fxAP(fxVIP4L2, 53), nil), 4),
		wantVerdict: fxDrop, wantCounter: "drop/truncated"})
	add(fixture{name: "cut inside the UDP header, IPv6 VIP", in: cutL4(fxUDP(c6, fxAP(fxVIP6L2, 53), nil), 7),
		wantVerdict: fxDrop, wantCounter: "drop/truncated"})
	add(fixture{name: "cut inside the TCP header, prefilter twin passes", in: cutL4(fxIP(c4, fxAP(twin, 80), packet.TCPSyn, nil), 12),
		wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	add(fixture{name: "IPv6 payload length beyond the frame, VIP", in: fxIn(packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61, PayloadLength: 100,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_ip_header"})
	add(fixture{name: "IPv4 IHL 4 to a VIP", in: fxIn(packet.IPv4{IHL: 4, Src: fxClient4, Dst: fxVIP4L2, TTL: 61,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_ip_header"})
	opts := []byte{1, 1, 1, 0} // NOP, NOP, NOP, EOL
	add(fixture{name: "IPv4 options to a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, Options: opts,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxDrop, wantCounter: "drop/ip_options"})
	add(fixture{name: "IPv4 options, not a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxOther4, TTL: 61, Options: opts,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn}}, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	add(fixture{name: "TCP data offset 4 to a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn, DataOffset: 4}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_tcp_header"})
	add(fixture{name: "TCP data offset beyond the packet, IPv4 VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPSyn, DataOffset: 15, Payload: make([]byte, 36)}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_tcp_header"})
	add(fixture{name: "TCP data offset beyond the packet, IPv6 VIP", in: fxIn(packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPAck, DataOffset: 6}}, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_tcp_header"})
	// Fragments: the first is balanced like any packet (and remembered,
	// see TestFragments for the rest); a later one whose first was never
	// seen is dropped; fragmented ICMP is not handled.
	first4 := packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, ID: 9, Flags: packet.IPv4MoreFragments,
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPAck, Payload: payload}}
	_, b4, _ := w.pick(w.vip(fxVIP4L2, 80, TCP), fxAP(fxClient4, 40001), fxAP(fxVIP4L2, 80))
	add(fixture{name: "IPv4 first fragment (MF) to a VIP is balanced by its ports", in: fxIn(first4, nil), wantVerdict: fxTX,
		wantOut: fxL2Out(b4, first4, nil), wantCounter: "tx/dsr_l2"})
	add(fixture{name: "IPv4 later fragment whose first was not seen, to a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, ID: 10, FragmentOffset: 185,
		Protocol: packet.ProtoTCP, Payload: packet.Raw(payload)}, nil), wantVerdict: fxDrop, wantCounter: "drop/fragment_unknown"})
	add(fixture{name: "IPv4 ICMP fragment to a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, ID: 11, Flags: packet.IPv4MoreFragments,
		Payload: packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(1, 1), Body: payload}}, nil), wantVerdict: fxDrop, wantCounter: "drop/fragment"})
	add(fixture{name: "IPv4 fragment, not a VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxOther4, TTL: 61, ID: 9, FragmentOffset: 185,
		Protocol: packet.ProtoTCP, Payload: packet.Raw(payload)}, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})
	ext := func(name string, h packet.IPv6ExtHeader, counter string) {
		add(fixture{name: name, in: fxIn(packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61, ExtHeaders: []packet.IPv6ExtHeader{h},
			Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPAck, Payload: payload}}, nil), wantVerdict: fxDrop, wantCounter: counter})
	}
	first6 := packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61, ExtHeaders: []packet.IPv6ExtHeader{packet.FragmentHeader(0, true, 77)},
		Payload: packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPAck, Payload: payload}}
	_, b6, _ := w.pick(w.vip(fxVIP6L2, 80, TCP), fxAP(fxClient6, 40001), fxAP(fxVIP6L2, 80))
	add(fixture{name: "IPv6 first fragment to a VIP is balanced by its ports", in: fxIn(first6, nil), wantVerdict: fxTX,
		wantOut: fxL2Out(b6, first6, nil), wantCounter: "tx/dsr_l2"})
	add(fixture{name: "IPv6 fragment header followed by another extension header, to a VIP", in: fxIn(packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61,
		ExtHeaders: []packet.IPv6ExtHeader{packet.FragmentHeader(0, true, 78), packet.DstOptsHeader(nil)},
		Payload:    packet.TCP{SrcPort: 40001, DstPort: 80, Flags: packet.TCPAck, Payload: payload}}, nil), wantVerdict: fxDrop, wantCounter: "drop/fragment"})
	ext("IPv6 hop-by-hop header to a VIP", packet.HopByHopHeader([]byte{5, 2, 0, 0}), "drop/ipv6_extension_header")
	ext("IPv6 routing header to a VIP", packet.RoutingHeader(2, 0, make([]byte, 20)), "drop/ipv6_extension_header")
	ext("IPv6 destination options to a VIP", packet.DstOptsHeader(nil), "drop/ipv6_extension_header")
	add(fixture{name: "GRE to an IPv4 VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 61, Protocol: packet.ProtoGRE,
		Payload: packet.Raw(make([]byte, 24))}, nil), wantVerdict: fxDrop, wantCounter: "drop/protocol"})
	add(fixture{name: "SCTP to an IPv6 VIP", in: fxIn(packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 61, NextHeader: 132,
		Payload: packet.Raw(make([]byte, 28))}, nil), wantVerdict: fxDrop, wantCounter: "drop/protocol"})
	add(fixture{name: "GRE to a non-VIP passes", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxOther4, TTL: 61, Protocol: packet.ProtoGRE,
		Payload: packet.Raw(make([]byte, 24))}, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})

	// ICMP to VIPs.
	{
		m := packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(0x77, 3), Body: []byte("xdplb ping payload")}
		in := packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 57, ID: 0x1111, Flags: packet.IPv4DontFragment, Payload: m}
		r := m
		r.Type = packet.ICMPv4EchoReply
		out := packet.IPv4{Src: fxVIP4L2, Dst: fxClient4, TTL: 64, ID: 0x1111, Flags: packet.IPv4DontFragment, Payload: r}
		add(fixture{name: "ICMP echo to an IPv4 VIP is answered", in: fxIn(in, nil), wantVerdict: fxTX,
			wantOut: packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: out}), wantCounter: "tx/icmp_echo_reply"})
		add(fixture{name: "ICMP echo to an IPv4 VIP with VLAN is answered, tag kept", in: fxIn(in, vlan), wantVerdict: fxTX,
			wantOut: packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, VLAN: vlan, Payload: out}), wantCounter: "tx/icmp_echo_reply",
			wantEvents: []string{"event/vlan_tagged"}})
		in.Dst = fxOther4
		add(fixture{name: "ICMP echo to a non-VIP passes", in: fxIn(in, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})
		in.Dst = twin
		add(fixture{name: "ICMP echo to a prefilter twin passes", in: fxIn(in, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})
		ts := packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 57, Payload: packet.ICMPv4{Type: 13, Body: make([]byte, 12)}}
		add(fixture{name: "ICMP timestamp to a VIP is dropped", in: fxIn(ts, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})
		add(fixture{name: "ICMP cut short to a VIP", in: cutL4(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 57, Payload: m}, 6),
			wantVerdict: fxDrop, wantCounter: "drop/truncated"})
	}
	{
		m := packet.ICMPv6{Type: packet.ICMPv6EchoRequest, Rest: packet.EchoRest(0x99, 1), Body: []byte("xdplb ping6")}
		in := packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 50, FlowLabel: 0x777, Payload: m}
		r := m
		r.Type = packet.ICMPv6EchoReply
		out := packet.IPv6{Src: fxVIP6L2, Dst: fxClient6, HopLimit: 64, FlowLabel: 0x777, Payload: r}
		add(fixture{name: "ICMPv6 echo to an IPv6 VIP is answered", in: fxIn(in, nil), wantVerdict: fxTX,
			wantOut: packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: out}), wantCounter: "tx/icmp_echo_reply"})
		in.Dst = fxOther6
		add(fixture{name: "ICMPv6 echo to a non-VIP passes", in: fxIn(in, nil), wantVerdict: fxPass, wantCounter: "pass/not_vip"})
		ns := packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 255, Payload: packet.ICMPv6{Type: packet.ICMPv6NeighborSolicit,
			Body: append(fxVIP6L2.AsSlice(), 1, 1, 0x02, 0, 0, 0, 0, 0xfe)}}
		add(fixture{name: "ICMPv6 neighbour solicitation to a VIP passes", in: fxIn(ns, nil), wantVerdict: fxPass, wantCounter: "pass/ndp"})
		mld := packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 1, Payload: packet.ICMPv6{Type: 130, Body: make([]byte, 16)}}
		add(fixture{name: "ICMPv6 MLD query to a VIP is dropped", in: fxIn(mld, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	}

	// ICMP errors about VIP flows go to the flow's backend.
	icmpErr := func(name string, vip netip.Addr, timeExceeded bool, vlan *packet.VLAN) {
		v := w.vip(vip, 80, TCP)
		client := fxClient4
		if vip.Is6() {
			client = fxClient6
		}
		cport := fxDecisivePort(w, v, client)
		l := fxICMPError(vip, 80, fxAP(client, cport), TCP, timeExceeded)
		raw := packet.MustBuild(l)
		_, b, h := w.pick(v, fxAP(client, cport), fxAP(vip, 80))
		f := fixture{name: name, in: fxIn(l, vlan), wantVerdict: fxTX, wantCounter: "tx/icmp_error_to_backend"}
		if v.vip.Mode == ModeDSRIPIP {
			f.wantOut = fxIPIPOut(b, raw, h, fxEncap4, fxEncap6, vlan)
		} else {
			f.wantOut = fxL2Out(b, l, vlan)
		}
		if vlan != nil {
			f.wantEvents = []string{"event/vlan_tagged"}
		}
		add(f)
	}
	icmpErr("ICMP fragmentation needed about a VIP flow goes to its backend", fxVIP4Three, false, nil)
	icmpErr("ICMP time exceeded about a VIP flow goes to its backend, VLAN", fxVIP4Three, true, vlan)
	icmpErr("ICMPv6 packet too big about a VIP flow goes to its backend", fxVIP6Three, false, nil)
	icmpErr("ICMPv6 time exceeded about a VIP flow goes to its backend", fxVIP6Three, true, nil)
	icmpErr("ICMP fragmentation needed about an IPIP VIP flow is encapsulated", fxVIP4ThreeT, false, nil)
	icmpErr("ICMPv6 packet too big about an IPIP VIP flow is encapsulated (6in4)", fxVIP6ThreeT, false, nil)
	add(fixture{name: "ICMP error quoting a VIP port without service", in: fxIn(fxICMPError(fxVIP4Three, 9999, fxAP(fxClient4, 40000), TCP, false), nil),
		wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	add(fixture{name: "ICMPv6 error quoting a VIP port without service", in: fxIn(fxICMPError(fxVIP6Three, 9999, fxAP(fxClient6, 40000), TCP, false), nil),
		wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	add(fixture{name: "ICMP error quoting UDP to a TCP-only VIP", in: fxIn(fxICMPError(fxVIP4Three, 80, fxAP(fxClient4, 40000), UDP, false), nil),
		wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	{
		// The quoted packet's source is not the VIP the error is sent to.
		q := packet.MustBuild(fxIP(fxAP(fxVIP4L2, 80), fxAP(fxClient4, 40000), packet.TCPAck, nil))
		l := packet.IPv4{Src: fxRouter4, Dst: fxVIP4Three, TTL: 250, Payload: packet.ICMPv4{Type: packet.ICMPv4DestUnreachable,
			Code: packet.ICMPv4CodeFragNeeded, Rest: packet.FragNeededRest(1200), Body: q[:28]}}
		add(fixture{name: "ICMP error quoting another address", in: fxIn(l, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	}

	{
		// An ICMP error that would exceed the backend's MTU once
		// encapsulated is dropped, not answered.
		q := packet.MustBuild(fxIP(fxAP(fxVIP4MTU, 80), fxAP(fxClient4, 40000), packet.TCPAck, big))
		l := packet.IPv4{Src: fxRouter4, Dst: fxVIP4MTU, TTL: 250, Payload: packet.ICMPv4{Type: packet.ICMPv4DestUnreachable,
			Code: packet.ICMPv4CodeFragNeeded, Rest: packet.FragNeededRest(1200), Body: q[:1380-28+1]}}
		add(fixture{name: "ICMP error too big to encapsulate", in: fxIn(l, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	}

	// No backend.
	add(fixture{name: "VIP without a table", in: fxIn(fxIP(c4, fxAP(fxVIP4NoTab, 80), packet.TCPSyn, nil), nil),
		wantVerdict: fxDrop, wantCounter: "drop/no_backend"})
	add(fixture{name: "table names a backend without an entry", in: fxIn(fxIP(c4, fxAP(fxVIP4NoBE, 80), packet.TCPAck, nil), nil),
		wantVerdict: fxDrop, wantCounter: "drop/no_backend"})

	add(fixture{name: "SNAT VIP without SNAT sources", in: fxIn(fxIP(c4, fxAP(fxVIP4SNAT, 80), packet.TCPSyn, nil), nil),
		wantVerdict: fxDrop, wantCounter: "drop/snat_no_source"})

	// Redirect to another interface.
	{
		rv := w.vip(fxVIP4Redir, 80, TCP)
		_, b, _ := w.pick(rv, c4, fxAP(fxVIP4Redir, 80))
		ip := fxIP(c4, fxAP(fxVIP4Redir, 80), packet.TCPAck, payload)
		add(fixture{name: "L2 DSR to a backend behind another interface: redirect",
			in: fxIn(ip, nil), wantVerdict: fxRedirect, wantOut: fxL2Out(b, ip, nil), wantCounter: "redirect/dsr_l2"})

		tv := w.vip(fxVIP4Redir, 443, TCP)
		_, tb, th := w.pick(tv, c4, fxAP(fxVIP4Redir, 443))
		tip := fxIP(c4, fxAP(fxVIP4Redir, 443), packet.TCPAck, payload)
		add(fixture{name: "IPIP to a backend behind another interface: redirect",
			in: fxIn(tip, nil), wantVerdict: fxRedirect, wantOut: fxIPIPOut(tb, packet.MustBuild(tip), th, fxEncap4, fxEncap6, nil), wantCounter: "redirect/dsr_ipip"})

		el := fxICMPError(fxVIP4Redir, 80, fxAP(fxClient4, 40000), TCP, false)
		add(fixture{name: "ICMP error about a flow behind another interface: redirect",
			in: fxIn(el, nil), wantVerdict: fxRedirect, wantOut: fxL2Out(b, el, nil), wantCounter: "redirect/icmp_error_to_backend"})

		nv := w.vip(fxVIP4NoPort, 80, TCP)
		_, nb, _ := w.pick(nv, c4, fxAP(fxVIP4NoPort, 80))
		nip := fxIP(c4, fxAP(fxVIP4NoPort, 80), packet.TCPAck, payload)
		add(fixture{name: "L2 DSR to an interface missing from the tx ports: dropped",
			in: fxIn(nip, nil), wantVerdict: fxDrop, wantOut: fxL2Out(nb, nip, nil), wantCounter: "drop/redirect_failed"})
	}
	return fs
}

// fxCounters reads the global counters as "action/reason" -> value, with the
// verdict counters' names in verdicts.
func fxCounters(tb testing.TB, d *Datapath) (all map[string]uint64, verdicts []string) {
	tb.Helper()
	cs, err := d.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	all = map[string]uint64{}
	for i, c := range cs {
		name := c.Action + "/" + c.Reason
		all[name] = c.Value
		if i < int(lbXdplbCounterCOUNTER_EVENTS) {
			verdicts = append(verdicts, name)
		}
	}
	return all, verdicts
}

// fxRun runs frame through prog once and returns the verdict and output.
func fxRun(tb testing.TB, prog *ebpf.Program, in []byte) (uint32, []byte) {
	tb.Helper()
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := prog.Run(&opts)
	if err != nil {
		tb.Fatalf("running the program: %v", err)
	}
	return ret, opts.DataOut
}

// fxOpen opens a private datapath with small maps.
func fxOpen(tb testing.TB, o Options) *Datapath {
	tb.Helper()
	testnet.RequirePrivileged(tb)
	if o.PinPath == "" {
		o.PinPath = NoPin
	}
	if o.MaxVIPs == 0 {
		o.MaxVIPs = 64
	}
	if o.MaxBackends == 0 {
		o.MaxBackends = 256
	}
	if o.MaxFlows == 0 {
		o.MaxFlows = 1024
	}
	d, err := Open(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// checkFixture runs f against d and reports every difference.
func checkFixture(t *testing.T, d *Datapath, f fixture) {
	t.Helper()
	before, verdicts := fxCounters(t, d)
	ret, out := fxRun(t, d.Program(), f.in)
	after, _ := fxCounters(t, d)

	if ret != f.wantVerdict {
		t.Errorf("verdict %s, want %s", fxVerdict(ret), fxVerdict(f.wantVerdict))
	}
	want := f.wantOut
	if want == nil {
		want = f.in
	}
	if d := packet.Diff(want, out); d != "" {
		t.Errorf("output differs (-want +got):\n%s", d)
	}
	if ret == fxTX || ret == fxRedirect {
		// A fragment's transport checksum covers the whole datagram.
		if err := packet.VerifyFrame(out); err != nil && !errors.Is(err, packet.ErrFragment) {
			t.Errorf("output frame: %v", err)
		}
		// And gopacket, which shares no code with the builder of the
		// expected frames, reads it too (fragments: no transport header).
		for _, p := range gpcheck.Problems(out) {
			t.Errorf("output frame: %s", p)
		}
	}
	if _, ok := after[f.wantCounter]; !ok || !slices.Contains(verdicts, f.wantCounter) {
		t.Fatalf("fixture names %q, which is no verdict counter", f.wantCounter)
	}
	for _, name := range verdicts {
		want := uint64(0)
		if name == f.wantCounter {
			want = 1
		}
		if got := after[name] - before[name]; got != want {
			t.Errorf("counter %s moved by %d, want %d", name, got, want)
		}
	}
	for _, name := range f.wantEvents {
		if _, ok := after[name]; !ok {
			t.Fatalf("fixture names event %q, which does not exist", name)
		}
		if got := after[name] - before[name]; got != 1 {
			t.Errorf("event %s moved by %d, want 1", name, got)
		}
	}
}

func TestDatapathFixtures(t *testing.T) {
	runFixtures(t, Options{}, "v4")
}

// TestDatapathFixturesV3 runs the fixtures on the build for BPF's v3
// instruction set, which kernels before 6.6 load: the same bytes out.
func TestDatapathFixturesV3(t *testing.T) {
	runFixtures(t, Options{isaV3: true}, "v3")
}

// runFixtures runs every fixture on datapaths opened with o, whose program
// must be the build for instruction set isa.
func runFixtures(t *testing.T, o Options, isa string) {
	env := fxNewEnv(t)
	datapaths := map[*fixtureSetup]*Datapath{}
	datapath := func(t *testing.T, s *fixtureSetup) *Datapath {
		if d, ok := datapaths[s]; ok {
			return d
		}
		d := fxOpen(t, o)
		if d.ISA() != isa {
			t.Fatalf("the datapath loaded the %s build, want %s", d.ISA(), isa)
		}
		fixtureWorld.apply(t, d, env)
		if s != nil {
			env.do(t, func() { s.apply(t, d) })
		}
		datapaths[s] = d
		return d
	}
	// One datapath for the plain world, owned by the parent test.
	datapath(t, nil)

	fs := datapathFixtures()
	if len(fs) < 45 {
		t.Errorf("%d fixtures, want at least 45", len(fs))
	}
	names := map[string]bool{}
	setups := map[string]*fixtureSetup{}
	for _, f := range fs {
		if names[f.name] {
			t.Errorf("fixture name %q used twice", f.name)
		}
		names[f.name] = true
		if f.setup != nil {
			if s, ok := setups[f.setup.name]; ok && s != f.setup {
				t.Errorf("two setups named %q", f.setup.name)
			}
			setups[f.setup.name] = f.setup
			datapath(t, f.setup)
		}
	}
	for _, f := range fs {
		t.Run(f.name, func(t *testing.T) {
			d := datapaths[f.setup]
			env.do(t, func() { checkFixture(t, d, f) })
		})
	}
}

// TestIPIPOuterHeaderFields reads the outer headers of encapsulated packets
// field by field, independently of the packet builder that made the fixtures'
// expected bytes.
func TestIPIPOuterHeaderFields(t *testing.T) {
	d := fxOpen(t, Options{})
	fixtureWorld.applyVIPs(t, d, fxNoEnv, fxVIP4in4, fxVIP6in6)
	w := fixtureWorld
	c4, c6 := fxAP(fxClient4, 41000), fxAP(fxClient6, 41000)

	t.Run("4in4", func(t *testing.T) {
		inner := packet.MustBuild(packet.IPv4{Src: fxClient4, Dst: fxVIP4in4, TOS: 0xb9, TTL: 9, Flags: packet.IPv4DontFragment,
			Payload: packet.TCP{SrcPort: c4.Port(), DstPort: 80, Flags: packet.TCPAck}})
		ret, out := fxRun(t, d.Program(), append(append(append([]byte{}, fxLBMAC...), fxRouterMAC...), append([]byte{0x08, 0x00}, inner...)...))
		if ret != fxTX {
			t.Fatalf("verdict %s", fxVerdict(ret))
		}
		_, b, _ := w.pick(w.vip(fxVIP4in4, 80, TCP), c4, fxAP(fxVIP4in4, 80))
		o := out[14:]
		check := func(what string, got, want any) {
			t.Helper()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s = %v, want %v", what, got, want)
			}
		}
		check("ethernet dst", net.HardwareAddr(out[0:6]).String(), b.NextHopMAC.String())
		check("ethernet src", net.HardwareAddr(out[6:12]).String(), b.SrcMAC.String())
		check("ethertype", fmt.Sprintf("%#04x", binary.BigEndian.Uint16(out[12:])), "0x0800")
		check("version/ihl", fmt.Sprintf("%#02x", o[0]), "0x45")
		check("tos", fmt.Sprintf("%#02x", o[1]), "0xb9")
		check("total length", binary.BigEndian.Uint16(o[2:]), 20+len(inner))
		check("id", binary.BigEndian.Uint16(o[4:]), 0)
		check("flags/offset", fmt.Sprintf("%#04x", binary.BigEndian.Uint16(o[6:])), "0x4000")
		check("ttl", o[8], 64)
		check("protocol", o[9], 4)
		check("source", netip.AddrFrom4([4]byte(o[12:16])), fxEncap4.Addr())
		check("destination", netip.AddrFrom4([4]byte(o[16:20])), b.Addr)
		if err := packet.VerifyIPv4HeaderChecksum(o); err != nil {
			t.Error(err)
		}
		if want := fxRouted(inner); !bytes.Equal(o[20:], want) {
			t.Errorf("inner packet is not the one sent, routed:\n%s", packet.DiffIP(want, o[20:]))
		}
	})
	t.Run("6in6", func(t *testing.T) {
		inner := packet.MustBuild(packet.IPv6{Src: fxClient6, Dst: fxVIP6in6, TrafficClass: 0xb9, FlowLabel: 0xfffff, HopLimit: 9,
			Payload: packet.TCP{SrcPort: c6.Port(), DstPort: 80, Flags: packet.TCPAck}})
		ret, out := fxRun(t, d.Program(), append(append(append([]byte{}, fxLBMAC...), fxRouterMAC...), append([]byte{0x86, 0xdd}, inner...)...))
		if ret != fxTX {
			t.Fatalf("verdict %s", fxVerdict(ret))
		}
		_, b, h := w.pick(w.vip(fxVIP6in6, 80, TCP), c6, fxAP(fxVIP6in6, 80))
		o := out[14:]
		vtf := binary.BigEndian.Uint32(o)
		if got := binary.BigEndian.Uint16(out[12:]); got != 0x86dd {
			t.Errorf("ethertype %#04x", got)
		}
		if vtf>>28 != 6 || uint8(vtf>>20) != 0xb9 || vtf&0xfffff != h&0xfffff {
			t.Errorf("version/class/label word %#08x, want version 6, class 0xb9, label %#05x", vtf, h&0xfffff)
		}
		if got := binary.BigEndian.Uint16(o[4:]); int(got) != len(inner) {
			t.Errorf("payload length %d, want %d", got, len(inner))
		}
		if o[6] != 41 || o[7] != 64 {
			t.Errorf("next header %d hop limit %d, want 41 and 64", o[6], o[7])
		}
		if s, dd := netip.AddrFrom16([16]byte(o[8:24])), netip.AddrFrom16([16]byte(o[24:40])); s != fxEncap6.Addr() || dd != b.Addr {
			t.Errorf("outer %s -> %s, want %s -> %s", s, dd, fxEncap6.Addr(), b.Addr)
		}
		if want := fxRouted(inner); !bytes.Equal(o[40:], want) {
			t.Errorf("inner packet is not the one sent, routed:\n%s", packet.DiffIP(want, o[40:]))
		}
	})
}

// fxTable is a table of m slots filled from ids by a seeded generator, so
// that every slot matters.
func fxTable(m int, ids []uint32, seed uint64) []uint32 {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	t := make([]uint32, m)
	for i := range t {
		t[i] = ids[r.IntN(len(ids))]
	}
	return t
}

// TestBackendChoice holds the program to the model (model.go): packets of
// every rule the model covers go through the program with
// BPF_PROG_TEST_RUN, and each must reach the backend (or get the verdict)
// that Decide, on the datapath's ModelState taken just before, says, and
// write the pin it says. Each case also checks that it exercised the rule it
// is named after. The table case sends 500 flows per family and protocol
// through a table of five backends and checks them against the test's own
// table too: this pins xdp.FlowHash and xdp.Slot to the program's.
func TestBackendChoice(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour})
	ids := []uint32{21, 22, 23, 24, 25}
	macs := map[string]uint32{}
	backend := func(id uint32, up bool) {
		t.Helper()
		mac := net.HardwareAddr{0x02, 0, 0, 0, 0x02, byte(id)}
		macs[mac.String()] = id
		if err := d.UpsertBackend(id, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 2, byte(id)}), IfIndex: 1, NextHopMAC: mac, SrcMAC: fxEgressMAC, Up: up}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		backend(id, true)
	}
	vip := func(k VIPKey, seed uint32, tables ...[]uint32) {
		t.Helper()
		if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: seed}); err != nil {
			t.Fatal(err)
		}
		for _, table := range tables {
			if err := d.SetTable(k, table); err != nil {
				t.Fatal(err)
			}
		}
	}
	model := func(t *testing.T) *ModelState {
		t.Helper()
		m, err := d.ModelState()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	frame := func(p Packet) []byte {
		switch {
		case p.ICMPError:
			return fxIn(fxICMPError(p.Dst.Addr(), p.Dst.Port(), p.Src, p.Proto, false), nil)
		case p.Proto == UDP:
			return fxIn(fxUDP(p.Src, p.Dst, []byte{1, 2, 3}), nil)
		case p.SYN:
			return fxIn(fxIP(p.Src, p.Dst, packet.TCPSyn, nil), nil)
		}
		return fxIn(fxIP(p.Src, p.Dst, packet.TCPAck, []byte("data")), nil)
	}
	// check runs p through the program and compares with m's decision,
	// which it returns.
	check := func(t *testing.T, m *ModelState, p Packet) Decision {
		t.Helper()
		dec := m.Decide(p)
		before, _ := fxCounters(t, d)
		ret, out := fxRun(t, d.Program(), frame(p))
		after, _ := fxCounters(t, d)
		moved := func(name string) uint64 { return after[name] - before[name] }
		what := fmt.Sprintf("%s -> %s/%s (SYN %v, ICMP error %v), model rule %s", p.Src, p.Dst, p.Proto, p.SYN, p.ICMPError, dec.Rule)
		switch {
		case dec.Forwarded():
			if ret != fxTX {
				t.Fatalf("%s: verdict %s, want XDP_TX to backend %d", what, fxVerdict(ret), dec.BackendID)
			}
			if got := macs[net.HardwareAddr(out[:6]).String()]; got != dec.BackendID {
				t.Errorf("%s: went to backend %d, the model says %d", what, got, dec.BackendID)
			}
		case dec.Rule == RuleNoBackend:
			if ret != fxDrop || moved("drop/no_backend") != 1 {
				t.Errorf("%s: verdict %s, drop/no_backend moved by %d; want a drop counted there", what, fxVerdict(ret), moved("drop/no_backend"))
			}
		case dec.Rule == RuleNotVIP:
			if ret != fxPass && moved("drop/no_service") != 1 {
				t.Errorf("%s: verdict %s; want XDP_PASS, or a drop counted no_service", what, fxVerdict(ret))
			}
		default:
			t.Fatalf("%s: unknown rule", what)
		}
		if got, want := moved("event/pin_created"), map[bool]uint64{true: 1}[dec.Pin != ""]; got != want {
			t.Errorf("%s: the program created %d pins; the model says pin %q", what, got, dec.Pin)
		}
		if dec.Pin != "" {
			want := dec.BackendID
			if id, ok, err := d.LookupFlow(p.Src, p.Dst, p.Proto); err != nil || !ok || id != want {
				t.Errorf("%s: pinned to %d (%v, %v), want %d", what, id, ok, err, want)
			}
		}
		return dec
	}
	wantRule := func(t *testing.T, dec Decision, rule, pin string) {
		t.Helper()
		if dec.Rule != rule || dec.Pin != pin {
			t.Errorf("model: rule %s, pin %q; the case is about rule %s, pin %q", dec.Rule, dec.Pin, rule, pin)
		}
	}

	r := rand.New(rand.NewPCG(1, 2))
	families := []struct {
		name   string
		base   string // VIP addresses: base + n
		client netip.Addr
		seed   uint32
		src    func() netip.Addr
	}{
		{"IPv4", "198.19.1.", fxClient4, 0x5eed0001, func() netip.Addr {
			return netip.AddrFrom4([4]byte{198, 18, byte(16 + r.IntN(200)), byte(r.IntN(256))})
		}},
		{"IPv6", "2001:db8:101::", fxClient6, 0xdeadbeef, func() netip.Addr {
			var b [16]byte
			copy(b[:], netip.MustParseAddr("2001:db8:77::").AsSlice())
			for j := 6; j < 16; j++ {
				b[j] = byte(r.IntN(256))
			}
			return netip.AddrFrom16(b)
		}},
	}
	// movedFlows returns n clients of VIP k whose slot names another
	// backend in table b than in a, the previous backend passing ok.
	movedFlows := func(t *testing.T, client netip.Addr, k VIPKey, seed uint32, a, b []uint32, n int, ok func(prev uint32) bool) []netip.AddrPort {
		t.Helper()
		var out []netip.AddrPort
		dst := netip.AddrPortFrom(k.Addr, k.Port)
		for port := uint16(20000); port < 60000 && len(out) < n; port++ {
			src := netip.AddrPortFrom(client, port)
			slot := Slot(FlowHash(src, dst, k.Proto, seed), len(a))
			if a[slot] != b[slot] && ok(a[slot]) {
				out = append(out, src)
			}
		}
		if len(out) < n {
			t.Fatalf("%d of %d flows whose slot moved", len(out), n)
		}
		return out
	}
	anyPrev := func(uint32) bool { return true }

	for fi, fam := range families {
		addr := func(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("%s%d", fam.base, n)) }
		t.Run(fam.name, func(t *testing.T) {
			t.Run("table", func(t *testing.T) {
				for _, proto := range []Proto{TCP, UDP} {
					k := VIPKey{Addr: addr(1), Port: 443, Proto: proto}
					seed := fam.seed + uint32(proto)
					table := fxTable(251, ids, uint64(fam.seed)+uint64(proto))
					vip(k, seed, table)
					m := model(t)
					if got := m.VIPs[k].Table; !slices.Equal(got, table) {
						t.Fatalf("%s: the model's table differs from the one set", k)
					}
					hits := map[uint32]int{}
					for range 500 {
						p := Packet{Src: fxAP(fam.src(), uint16(1024+r.IntN(64000))), Dst: fxAP(k.Addr, 443), Proto: proto}
						dec := check(t, m, p)
						wantRule(t, dec, RuleTable, "")
						if want := table[Slot(FlowHash(p.Src, p.Dst, proto, seed), 251)]; dec.BackendID != want {
							t.Errorf("%s -> %s: the model says backend %d, the table %d", p.Src, p.Dst, dec.BackendID, want)
						}
						hits[dec.BackendID]++
					}
					if len(hits) != len(ids) {
						t.Errorf("%s: flows reached %d backends, want all %d: %v", proto, len(hits), len(ids), hits)
					}
				}
			})
			t.Run("port-0 service", func(t *testing.T) {
				k := VIPKey{Addr: addr(2), Port: 0, Proto: TCP}
				vip(k, fam.seed+2, fxTable(31, ids, uint64(fi)+20))
				// An exact service of the same address takes its port.
				exact := VIPKey{Addr: addr(2), Port: 8080, Proto: TCP}
				vip(exact, fam.seed+3, fxFill(31, 25))
				m := model(t)
				for _, port := range []uint16{1, 80, 443, 8443, 65535} {
					dec := check(t, m, Packet{Src: fxAP(fam.client, 40000+port%1000), Dst: fxAP(k.Addr, port), Proto: TCP})
					wantRule(t, dec, RuleTable, "")
					if dec.VIP != k {
						t.Errorf("port %d: model found service %s, want %s", port, dec.VIP, k)
					}
				}
				dec := check(t, m, Packet{Src: fxAP(fam.client, 40000), Dst: fxAP(k.Addr, 8080), Proto: TCP})
				if dec.VIP != exact || dec.BackendID != 25 {
					t.Errorf("port 8080: model found %s backend %d, want %s backend 25", dec.VIP, dec.BackendID, exact)
				}
			})
			t.Run("transition", func(t *testing.T) {
				k := VIPKey{Addr: addr(3), Port: 80, Proto: TCP}
				seed := fam.seed + 4
				a, b := fxTable(31, ids, uint64(fi)+30), fxTable(31, ids[1:], uint64(fi)+31) // b drains backend 21
				vip(k, seed, a, b)
				flows := movedFlows(t, fam.client, k, seed, a, b, 6, anyPrev)
				dst := fxAP(k.Addr, k.Port)
				// A SYN takes the current table; the pin it writes keeps
				// the flow there.
				dec := check(t, model(t), Packet{Src: flows[0], Dst: dst, Proto: TCP, SYN: true})
				wantRule(t, dec, RuleTable, "create")
				if !dec.Transition || dec.PrevBackendID == dec.BackendID {
					t.Errorf("SYN: transition %v, previous %d, current %d", dec.Transition, dec.PrevBackendID, dec.BackendID)
				}
				dec = check(t, model(t), Packet{Src: flows[0], Dst: dst, Proto: TCP})
				wantRule(t, dec, RulePinned, "")
				// Any other packet stays on the previous backend.
				dec = check(t, model(t), Packet{Src: flows[1], Dst: dst, Proto: TCP})
				wantRule(t, dec, RulePrevious, "create")
				dec = check(t, model(t), Packet{Src: flows[1], Dst: dst, Proto: TCP})
				wantRule(t, dec, RulePinned, "")
				// An ICMP error follows the flow and pins nothing.
				dec = check(t, model(t), Packet{Src: flows[2], Dst: dst, Proto: TCP, ICMPError: true})
				wantRule(t, dec, RulePrevious, "")
				// A flow whose slot did not move: the table.
				for port := uint16(30000); port < 30100; port++ {
					src := fxAP(fam.client, port)
					if slot := Slot(FlowHash(src, dst, TCP, seed), 31); a[slot] == b[slot] {
						dec = check(t, model(t), Packet{Src: src, Dst: dst, Proto: TCP})
						wantRule(t, dec, RuleTable, "")
						break
					}
				}
			})
			t.Run("transition, previous backend down", func(t *testing.T) {
				k := VIPKey{Addr: addr(4), Port: 80, Proto: TCP}
				seed := fam.seed + 5
				down := uint32(26 + fi)
				backend(down, true)
				a := fxTable(31, append([]uint32{down}, ids...), uint64(fi)+40)
				b := fxTable(31, ids, uint64(fi)+41)
				vip(k, seed, a, b)
				backend(down, false)
				flows := movedFlows(t, fam.client, k, seed, a, b, 1, func(prev uint32) bool { return prev == down })
				dec := check(t, model(t), Packet{Src: flows[0], Dst: fxAP(k.Addr, k.Port), Proto: TCP})
				wantRule(t, dec, RuleTable, "create")
				if dec.PrevBackendID != down {
					t.Errorf("previous backend %d, want %d", dec.PrevBackendID, down)
				}
			})
			t.Run("pins", func(t *testing.T) {
				k := VIPKey{Addr: addr(5), Port: 80, Proto: TCP}
				seed := fam.seed + 6
				a, b := fxTable(31, ids, uint64(fi)+50), fxTable(31, ids[:4], uint64(fi)+51)
				vip(k, seed, a)
				dst := fxAP(k.Addr, k.Port)
				down := uint32(28 + fi)
				backend(down, false)
				pin := func(src netip.AddrPort, id uint32) {
					t.Helper()
					if err := d.PinFlow(Flow{Src: src, Dst: dst, Proto: TCP, BackendID: id}); err != nil {
						t.Fatal(err)
					}
				}
				// A pin to a backend that is up decides, whatever the table.
				src := fxAP(fam.client, 50001)
				pin(src, 23)
				dec := check(t, model(t), Packet{Src: src, Dst: dst, Proto: TCP, SYN: true})
				wantRule(t, dec, RulePinned, "")
				if dec.BackendID != 23 {
					t.Errorf("pinned flow: backend %d, want 23", dec.BackendID)
				}
				// Stale pins (backend down, backend gone) are passed over:
				// the table decides, and no pin is written outside a
				// transition.
				pin(fxAP(fam.client, 50002), down)
				pin(fxAP(fam.client, 50003), 99)
				for _, port := range []uint16{50002, 50003} {
					dec = check(t, model(t), Packet{Src: fxAP(fam.client, port), Dst: dst, Proto: TCP})
					wantRule(t, dec, RuleTable, "")
					if dec.StalePinID == 0 {
						t.Errorf("port %d: no stale pin seen", port)
					}
				}
				// In a transition, a stale pin of a flow whose slot moved
				// is replaced.
				vip(k, seed, b)
				flows := movedFlows(t, fam.client, k, seed, a, b, 2, anyPrev)
				pin(flows[0], down)
				pin(flows[1], 99)
				for _, src := range flows {
					dec = check(t, model(t), Packet{Src: src, Dst: dst, Proto: TCP})
					wantRule(t, dec, RulePrevious, "replace")
				}
			})
			t.Run("no backend", func(t *testing.T) {
				none := VIPKey{Addr: addr(6), Port: 80, Proto: TCP}
				vip(none, fam.seed+7) // no table
				missing := VIPKey{Addr: addr(6), Port: 81, Proto: TCP}
				vip(missing, fam.seed+8, fxFill(7, 98)) // names a backend without an entry
				m := model(t)
				wantRule(t, check(t, m, Packet{Src: fxAP(fam.client, 1), Dst: fxAP(none.Addr, 80), Proto: TCP}), RuleNoBackend, "")
				wantRule(t, check(t, m, Packet{Src: fxAP(fam.client, 1), Dst: fxAP(missing.Addr, 81), Proto: TCP}), RuleNoBackend, "")
			})
			t.Run("not a VIP", func(t *testing.T) {
				m := model(t)
				other := fxOther4
				if fam.client.Is6() {
					other = fxOther6
				}
				wantRule(t, check(t, m, Packet{Src: fxAP(fam.client, 1), Dst: fxAP(other, 80), Proto: TCP}), RuleNotVIP, "")
				// A VIP address, on a port without service.
				wantRule(t, check(t, m, Packet{Src: fxAP(fam.client, 1), Dst: fxAP(addr(1), 444), Proto: TCP}), RuleNotVIP, "")
			})
		})
	}
}

// TestVIPAndBackendStats checks the per-VIP and per-backend counters against
// the packets sent: packets, bytes (frame lengths) and TCP SYNs.
func TestVIPAndBackendStats(t *testing.T) {
	d := fxOpen(t, Options{})
	fixtureWorld.applyVIPs(t, d, fxNoEnv, fxVIP4Three, fxVIP6Three)
	w := fixtureWorld
	for _, vip := range []netip.Addr{fxVIP4Three, fxVIP6Three} {
		t.Run(vip.String(), func(t *testing.T) {
			v := w.vip(vip, 80, TCP)
			client := fxClient4
			if vip.Is6() {
				client = fxClient6
			}
			beBefore := map[uint32]Stats{}
			for _, id := range []uint32{11, 12, 13} {
				s, err := d.BackendStats(id)
				if err != nil {
					t.Fatal(err)
				}
				beBefore[id] = s
			}
			vipBefore, err := d.VIPStats(v.key)
			if err != nil {
				t.Fatal(err)
			}
			var want Stats
			wantBE := map[uint32]Stats{}
			for i := 0; i < 60; i++ {
				src := fxAP(client, uint16(30000+i))
				flags := packet.TCPAck
				if i%4 == 0 {
					flags = packet.TCPSyn
				} else if i%4 == 1 {
					flags = packet.TCPSyn | packet.TCPAck // not a new flow
				}
				in := fxIn(fxIP(src, fxAP(vip, 80), flags, make([]byte, i*7)), nil)
				ret, _ := fxRun(t, d.Program(), in)
				if ret != fxTX {
					t.Fatalf("verdict %s", fxVerdict(ret))
				}
				id, _, _ := w.pick(v, src, fxAP(vip, 80))
				s := wantBE[id]
				for _, p := range []*Stats{&want, &s} {
					p.Packets++
					p.Bytes += uint64(len(in))
					if flags == packet.TCPSyn {
						p.NewFlows++
					}
				}
				wantBE[id] = s
			}
			// Packets to the VIP that are dropped for having no service do not count.
			fxRun(t, d.Program(), fxIn(fxIP(fxAP(client, 1), fxAP(vip, 81), packet.TCPSyn, nil), nil))

			got, err := d.VIPStats(v.key)
			if err != nil {
				t.Fatal(err)
			}
			got = Stats{got.Packets - vipBefore.Packets, got.Bytes - vipBefore.Bytes, got.NewFlows - vipBefore.NewFlows}
			if got != want {
				t.Errorf("VIP stats %+v, want %+v", got, want)
			}
			for _, id := range []uint32{11, 12, 13} {
				s, err := d.BackendStats(id)
				if err != nil {
					t.Fatal(err)
				}
				b := beBefore[id]
				s = Stats{s.Packets - b.Packets, s.Bytes - b.Bytes, s.NewFlows - b.NewFlows}
				if s != wantBE[id] {
					t.Errorf("backend %d stats %+v, want %+v", id, s, wantBE[id])
				}
			}
		})
	}
}

// TestFrameShorterThanEthernet documents why no fixture has fewer than 14
// bytes: the kernel refuses such frames before any XDP program sees them
// (BPF_PROG_TEST_RUN here; drivers and bpf_xdp_adjust_head/tail likewise
// never leave less than an Ethernet header), so the program's own check is
// defensive only.
func TestFrameShorterThanEthernet(t *testing.T) {
	d := fxOpen(t, Options{})
	for _, n := range []int{1, 13} {
		if _, err := d.Program().Run(&ebpf.RunOptions{Data: make([]byte, n), DataOut: make([]byte, 64)}); err == nil {
			t.Errorf("a %d-byte frame ran: add a fixture for it", n)
		}
	}
}

// TestKnobs checks the load-time knobs: the TTL of the headers the program
// writes and the echo switch.
func TestKnobs(t *testing.T) {
	d := fxOpen(t, Options{TTL: 17, DisableEcho: true})
	fixtureWorld.applyVIPs(t, d, fxNoEnv, fxVIP4in4, fxVIP4L2, fxVIP6L2, fxVIP4MTU)
	w := fixtureWorld
	c4 := fxAP(fxClient4, 40001)

	ip := fxIP(c4, fxAP(fxVIP4in4, 80), packet.TCPAck, []byte("x"))
	_, b, h := w.pick(w.vip(fxVIP4in4, 80, TCP), c4, fxAP(fxVIP4in4, 80))
	want := fxIPIPOut(b, packet.MustBuild(ip), h, fxEncap4, fxEncap6, nil)
	want[14+8] = 17 // TTL
	binary.BigEndian.PutUint16(want[14+10:], 0)
	c := ^fxOnesSum(want[14 : 14+20])
	binary.BigEndian.PutUint16(want[14+10:], c)
	checkFixture(t, d, fixture{name: "ttl", in: fxIn(ip, nil), wantVerdict: fxTX, wantOut: want, wantCounter: "tx/dsr_ipip"})

	echo := packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 57, Payload: packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(1, 1)}}
	checkFixture(t, d, fixture{name: "echo disabled", in: fxIn(echo, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})
	echo6 := packet.IPv6{Src: fxClient6, Dst: fxVIP6L2, HopLimit: 57, Payload: packet.ICMPv6{Type: packet.ICMPv6EchoRequest, Rest: packet.EchoRest(1, 1)}}
	checkFixture(t, d, fixture{name: "echo6 disabled", in: fxIn(echo6, nil), wantVerdict: fxDrop, wantCounter: "drop/icmp"})

	big := fxIP(c4, fxAP(fxVIP4MTU, 80), packet.TCPAck, make([]byte, 1400))
	ret, out := fxRun(t, d.Program(), fxIn(big, nil))
	if ret != fxTX || out[14+8] != 17 {
		t.Errorf("too-big answer: verdict %s, TTL %d, want XDP_TX and 17", fxVerdict(ret), out[14+8])
	}
}

// fxOnesSum is the ones'-complement sum of b as big-endian words.
func fxOnesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// TestIPIPWithoutEncapSource: before SetEncapSource (or with one family
// unset) the program must not send IPIP packets from the unspecified address
// (0.0.0.0 or ::), which every backend drops as a martian.
func TestIPIPWithoutEncapSource(t *testing.T) {
	d := fxOpen(t, Options{})
	w := fixtureWorld
	w.applyVIPs(t, d, fxNoEnv, fxVIP4in4, fxVIP6in6)
	if err := d.SetEncapSource(netip.Prefix{}, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vip    netip.Addr
		client netip.Addr
	}{{fxVIP4in4, fxClient4}, {fxVIP6in6, fxClient6}} {
		in := fxIn(fxIP(fxAP(c.client, 40001), fxAP(c.vip, 80), packet.TCPAck, nil), nil)
		before, err := d.Counter("drop", "no_encap_source")
		if err != nil {
			t.Fatal(err)
		}
		ret, out := fxRun(t, d.Program(), in)
		after, _ := d.Counter("drop", "no_encap_source")
		if ret == fxDrop && after == before+1 {
			continue
		}
		t.Errorf("%s: verdict %s, drop/no_encap_source moved by %d; want a drop counted there", c.vip, fxVerdict(ret), after-before)
		if ret != fxTX && ret != fxRedirect {
			continue
		}
		var src netip.Addr
		if binary.BigEndian.Uint16(out[12:]) == packet.EtherTypeIPv4 {
			src = netip.AddrFrom4([4]byte(out[14+12 : 14+16]))
		} else {
			src = netip.AddrFrom16([16]byte(out[14+8 : 14+24]))
		}
		if src.IsUnspecified() {
			t.Errorf("%s: %s sent with outer source %s", c.vip, fxVerdict(ret), src)
		}
	}
}
