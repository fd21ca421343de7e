package dpfuzz

import (
	"encoding/binary"
	"net/netip"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/xdp"
)

// Frames makes frames for a configuration: valid TCP and UDP to its
// services and to other ports and addresses, fragments (first, later,
// unknown), ICMP (echo, errors quoting VIP flows, neighbour discovery,
// others), odd headers (IPv4 options, IPv6 extension headers, other
// protocols and EtherTypes), VLAN tags (one or two), and mutations of all of
// these (cut short, bytes flipped, lengths wrong, padding). With SNAT
// sources, also the packets of the SNAT flows it made before (the client's
// again, and the backend's replies to the source and port the flow took,
// as far as the generator can tell), replies of no flow, and ICMP errors to
// a source quoting a flow's translated packet or no flow's.
type Frames struct {
	s   *Source
	cfg *Config
	// flows are the client's flows to snat services the frames began, the
	// last 32.
	flows []flow
}

// flow is a client's flow to a service.
type flow struct {
	src, dst netip.AddrPort
	proto    xdp.Proto
}

// NewFrames makes frames for cfg from s.
func NewFrames(s *Source, cfg *Config) *Frames { return &Frames{s: s, cfg: cfg} }

// target is a destination for a frame: an address and port of a service,
// or near one.
func (g *Frames) target() (dst netip.AddrPort, proto xdp.Proto) {
	s := g.s
	v := Pick(s, g.cfg.VIPs...)
	port := v.Key.Port
	if port == 0 || s.Chance(10) {
		port = Pick[uint16](s, 80, 53, 22, 443, s.U16())
	}
	proto = v.Key.Proto
	if s.Chance(10) {
		proto = Pick(s, xdp.TCP, xdp.UDP)
	}
	return netip.AddrPortFrom(v.Key.Addr, port), proto
}

func (g *Frames) client(v4 bool) netip.AddrPort {
	if v4 {
		return netip.AddrPortFrom(Pick(g.s, client4...), Pick(g.s, clientPorts...))
	}
	return netip.AddrPortFrom(Pick(g.s, client6...), Pick(g.s, clientPorts...))
}

func (g *Frames) payload() []byte {
	s := g.s
	switch n := s.N(10); {
	case n < 7:
		return s.Bytes(s.N(40))
	case n < 9:
		return s.Bytes(s.N(300))
	default:
		return make([]byte, 1200+s.N(400))
	}
}

func (g *Frames) ttl() uint8 {
	switch n := g.s.N(10); {
	case n < 7:
		return 64
	case n < 8:
		return 1
	case n < 9:
		return 2
	}
	return g.s.Byte()
}

func (g *Frames) tos() uint8 {
	if g.s.Chance(60) {
		return 0
	}
	return g.s.Byte()
}

// transport is a TCP or UDP header and payload from src to dst.
func (g *Frames) transport(src, dst netip.AddrPort, proto xdp.Proto) packet.Layer {
	s := g.s
	if proto == xdp.UDP {
		// Now and then without a checksum (none, over IPv4; over IPv6 a
		// zero checksum is invalid, and gopacket reads it as none).
		return packet.UDP{SrcPort: src.Port(), DstPort: dst.Port(), Payload: g.payload(), NoChecksum: src.Addr().Is4() && s.Chance(5)}
	}
	flags := Pick(s, packet.TCPSyn, packet.TCPAck, packet.TCPSyn|packet.TCPAck, packet.TCPAck|packet.TCPPsh,
		packet.TCPFin|packet.TCPAck, packet.TCPRst, 0, packet.TCPFlags(s.U16()&0x1ff))
	return packet.TCP{SrcPort: src.Port(), DstPort: dst.Port(), Seq: s.U32(), Ack: s.U32(), Flags: flags, Window: 512, Payload: g.payload()}
}

// ip is an IP header from src to dst around l.
func (g *Frames) ip(src, dst netip.Addr, l packet.Layer) packet.Layer {
	s := g.s
	if dst.Is4() {
		ip := packet.IPv4{Src: src, Dst: dst, TOS: g.tos(), ID: s.U16(), TTL: g.ttl(), Payload: l}
		if s.Chance(70) {
			ip.Flags = packet.IPv4DontFragment
		}
		return ip
	}
	return packet.IPv6{Src: src, Dst: dst, TrafficClass: g.tos(), FlowLabel: s.U32() & 0xfffff, HopLimit: g.ttl(), Payload: l}
}

// Frame is the next frame; it is at least an Ethernet header long.
func (g *Frames) Frame() []byte {
	ip := g.ipPacket()
	f := g.ether(ip)
	return g.mutate(f)
}

// ipPacket is an IP packet (or, rarely, another EtherType's payload, with
// the EtherType in its first two bytes after a 0xff marker).
func (g *Frames) ipPacket() []byte {
	s := g.s
	if len(g.cfg.NAT.Sources) > 0 && s.Chance(20) && (len(g.flows) > 0 || s.Chance(20)) {
		return g.natFrame()
	}
	dst, proto := g.target()
	src := g.client(dst.Addr().Is4())
	var l packet.Layer
	switch n := s.N(100); {
	case n < 40: // a packet of a flow to a service
		syn := false
		var again *flow
		if len(g.flows) > 0 && s.Chance(40) { // an SNAT flow's, again
			f := Pick(s, g.flows...)
			src, dst, proto, again = f.src, f.dst, f.proto, &f
		} else if i, ok := g.cfg.lookup(dst, proto); ok && g.cfg.VIPs[i].Mode == xdp.ModeSNAT && s.Chance(60) {
			// A flow begins: a TCP one with a SYN.
			g.flows = append(g.flows, flow{src, dst, proto})
			if len(g.flows) > 32 {
				g.flows = g.flows[1:]
			}
			syn = true
		}
		tl := g.transport(src, dst, proto)
		if t, ok := tl.(packet.TCP); ok && syn {
			t.Flags = packet.TCPSyn
			tl = t
		}
		if again != nil {
			if from, to, _, ok := g.translatedOf(*again); ok {
				tl = g.zeroSum(tl, from, to)
			}
		}
		l = g.ip(src.Addr(), dst.Addr(), tl)
	case n < 52:
		return g.fragment(src, dst, proto)
	case n < 64:
		l = g.icmpError(src, dst, proto)
	case n < 72:
		l = g.icmp(src.Addr(), dst.Addr())
	case n < 82: // not a VIP: another address, or a filter twin
		other := other4
		if !dst.Addr().Is4() {
			other = other6
		}
		if s.Chance(50) {
			other = twin(dst.Addr())
		}
		d := netip.AddrPortFrom(other, dst.Port())
		if s.Chance(70) {
			l = g.ip(src.Addr(), other, g.transport(src, d, proto))
		} else {
			l = g.icmp(src.Addr(), other)
		}
	case n < 92:
		l = g.odd(src, dst, proto)
	default:
		b := packet.MustBuild(g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)))
		for range 1 + s.N(4) {
			b[s.N(len(b))] = s.Byte()
		}
		return b
	}
	b, err := packet.Build(l)
	if err != nil {
		return packet.MustBuild(g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)))
	}
	return b
}

// fragment is a first or later fragment of a datagram to dst.
func (g *Frames) fragment(src, dst netip.AddrPort, proto xdp.Proto) []byte {
	s := g.s
	id := Pick[uint32](s, 1, 2, 3, 0x4d2)
	first := s.Chance(50)
	p := uint8(proto)
	if s.Chance(8) {
		p = Pick[uint8](s, 1, 58, 47)
	}
	if dst.Addr().Is4() {
		if first {
			ip := g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)).(packet.IPv4)
			ip.Flags, ip.ID = packet.IPv4MoreFragments, uint16(id)
			if p != uint8(proto) {
				ip.Protocol = p
			}
			return packet.MustBuild(ip)
		}
		ip := packet.IPv4{Src: src.Addr(), Dst: dst.Addr(), TOS: g.tos(), ID: uint16(id), TTL: g.ttl(), Protocol: p,
			FragmentOffset: Pick[uint16](s, 1, 185, 1+uint16(s.N(8190))), Payload: packet.Raw(g.payload())}
		if s.Chance(50) {
			ip.Flags = packet.IPv4MoreFragments
		}
		return packet.MustBuild(ip)
	}
	// IPv6: a fragment header spliced in after the fixed header.
	var whole, rest []byte
	var off uint16
	more := s.Chance(50)
	if first {
		whole = packet.MustBuild(g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)))
		rest, more = whole[40:], s.Chance(90)
	} else {
		whole = packet.MustBuild(g.ip(src.Addr(), dst.Addr(), packet.UDP{SrcPort: 1, DstPort: 2}))
		rest, off = g.payload(), Pick[uint16](s, 1, 185, 1+uint16(s.N(8190)))
	}
	fh := make([]byte, 8)
	fh[0] = p
	m := off << 3
	if more {
		m |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], m)
	binary.BigEndian.PutUint32(fh[4:], id)
	out := append(append(append([]byte{}, whole[:40]...), fh...), rest...)
	out[6] = 44
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

// icmpError is an ICMP error from a router to the VIP quoting a packet the
// VIP's backend sent to the client (sometimes not quite).
func (g *Frames) icmpError(client, vip netip.AddrPort, proto xdp.Proto) packet.Layer {
	s := g.s
	qsrc := vip.Addr()
	if s.Chance(8) {
		qsrc = client.Addr()
	}
	quoted := g.ip(qsrc, client.Addr(), g.transport(vip, client, proto))
	if s.Chance(5) {
		if ip, ok := quoted.(packet.IPv4); ok {
			ip.Options = []byte{1, 1, 1, 1}
			quoted = ip
		}
	}
	q := packet.MustBuild(quoted)
	if vip.Addr().Is4() {
		n := min(len(q), Pick(s, 28, 28, 28, 20, 23, 26, 64))
		m := packet.ICMPv4{Type: Pick[uint8](s, 3, 3, 11, 12, 5), Code: Pick[uint8](s, 4, 0, 1), Rest: packet.FragNeededRest(1200), Body: q[:n]}
		return packet.IPv4{Src: router4, Dst: vip.Addr(), TOS: g.tos(), TTL: g.ttl(), Payload: m}
	}
	n := min(len(q), Pick(s, 48, 48, 48, 40, 43, 46, 72))
	m := packet.ICMPv6{Type: Pick[uint8](s, 2, 2, 1, 3, 4, 5), Rest: packet.PacketTooBigRest(1280), Body: q[:n]}
	return packet.IPv6{Src: router6, Dst: vip.Addr(), TrafficClass: g.tos(), HopLimit: g.ttl(), Payload: m}
}

// icmp is an echo request, a neighbour discovery message or another ICMP
// message to dst.
func (g *Frames) icmp(src, dst netip.Addr) packet.Layer {
	s := g.s
	if dst.Is4() {
		typ := Pick[uint8](s, 8, 8, 8, 0, 13, s.Byte())
		m := packet.ICMPv4{Type: typ, Rest: packet.EchoRest(s.U16(), s.U16()), Body: g.payload(), BadChecksum: s.Chance(5)}
		return packet.IPv4{Src: src, Dst: dst, TOS: g.tos(), TTL: g.ttl(), Payload: m}
	}
	typ := Pick[uint8](s, 128, 128, 128, 129, 133, 134, 135, 136, 137, 130, s.Byte())
	m := packet.ICMPv6{Type: typ, Rest: packet.EchoRest(s.U16(), s.U16()), Body: g.payload(), BadChecksum: s.Chance(5)}
	return packet.IPv6{Src: src, Dst: dst, TrafficClass: g.tos(), HopLimit: g.ttl(), Payload: m}
}

// odd is a packet with headers the program does not handle: IPv4 options,
// IPv6 extension headers, other protocols.
func (g *Frames) odd(src, dst netip.AddrPort, proto xdp.Proto) packet.Layer {
	s := g.s
	if dst.Addr().Is4() {
		ip := g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)).(packet.IPv4)
		if s.Chance(50) {
			ip.Options = s.Bytes(4 * (1 + s.N(10)))
		} else {
			ip.Protocol, ip.Payload = Pick[uint8](s, 47, 132, 0, 58, 41, 4), packet.Raw(g.payload())
		}
		return ip
	}
	ip := g.ip(src.Addr(), dst.Addr(), g.transport(src, dst, proto)).(packet.IPv6)
	switch s.N(3) {
	case 0:
		ip.ExtHeaders = []packet.IPv6ExtHeader{packet.HopByHopHeader([]byte{1, 2, 0, 0})}
	case 1:
		ip.ExtHeaders = []packet.IPv6ExtHeader{packet.DstOptsHeader([]byte{1, 0})}
	default:
		ip.NextHeader, ip.Payload = Pick[uint8](s, 59, 47, 132, 1, 51, 135), packet.Raw(g.payload())
	}
	return ip
}

// ether puts ip in an Ethernet frame to the appliance, with a tag or two
// now and then, or makes a frame of another EtherType.
func (g *Frames) ether(ip []byte) []byte {
	s := g.s
	e := packet.Ethernet{Dst: lbMAC, Src: routerMAC, Payload: packet.RawIP(ip)}
	if s.Chance(4) {
		e.EtherType, e.Payload = Pick[uint16](s, 0x0806, 0x88cc, 0x8847, 0x0800, 0x86dd), packet.Raw(s.Bytes(s.N(80)))
	}
	tags := 0
	switch n := s.N(20); {
	case n < 3:
		tags = 1
	case n < 4:
		tags = 2
	}
	if tags > 0 {
		e.VLAN = &packet.VLAN{TPID: Pick[uint16](s, 0x8100, 0x88a8), ID: s.U16() & 0xfff, Priority: uint8(s.N(8))}
	}
	f, err := packet.Build(e)
	if err != nil {
		f = packet.MustBuild(packet.Ethernet{Dst: lbMAC, Src: routerMAC, EtherType: 0x0806})
	}
	if tags == 2 && len(f) >= 16 {
		tag := []byte{0x81, 0x00, byte(s.N(16)), s.Byte()}
		f = append(append(append([]byte{}, f[:16]...), tag...), f[16:]...)
	}
	return f
}

// mutate changes a frame now and then: cut short, bytes flipped, a length
// field wrong, padding after the packet.
func (g *Frames) mutate(f []byte) []byte {
	s := g.s
	l2 := 14
	if et := binary.BigEndian.Uint16(f[12:]); (et == 0x8100 || et == 0x88a8) && len(f) >= 18 {
		l2 = 18
	}
	if s.Chance(10) {
		f = append(f, s.Bytes(1+s.N(24))...)
	}
	if s.Chance(6) && len(f) >= l2+6 {
		switch f[l2] >> 4 {
		case 4:
			binary.BigEndian.PutUint16(f[l2+2:], binary.BigEndian.Uint16(f[l2+2:])+uint16(int16(s.N(9)-4)))
		case 6:
			binary.BigEndian.PutUint16(f[l2+4:], binary.BigEndian.Uint16(f[l2+4:])+uint16(int16(s.N(9)-4)))
		}
	}
	if s.Chance(4) && len(f) > l2 {
		f[l2] = Pick(s, 0x46, 0x44, 0x4f, 0x65, 0x55, s.Byte())
	}
	if s.Chance(8) {
		for range 1 + s.N(3) {
			i := 12 + s.N(min(len(f), 110)-12)
			f[i] ^= 1 << s.N(8)
		}
	}
	if s.Chance(8) {
		f = f[:14+s.N(len(f)-13)]
	}
	return f
}

// twins are, for each VIP address of the pools, an address that is no VIP
// but sets the same bit of the program's prefilter.
var twins = func() map[netip.Addr]netip.Addr {
	m := map[netip.Addr]netip.Addr{}
	isVIP := func(c netip.Addr) bool {
		for _, v := range append(append([]netip.Addr{}, vip4Pool...), vip6Pool...) {
			if v == c {
				return true
			}
		}
		return false
	}
	for _, a := range append(append([]netip.Addr{}, vip4Pool...), vip6Pool...) {
		bit := xdp.FilterBit(a)
		limit := uint32(1 << 17) // 198.18.0.0/15
		if a.Is6() {
			limit = 1 << 31
		}
		m[a] = other4
		if a.Is6() {
			m[a] = other6
		}
		for i := uint32(1); i < limit; i++ {
			var c netip.Addr
			if a.Is4() {
				c = netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
			} else {
				c = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
			}
			if xdp.FilterBit(c) == bit && !isVIP(c) {
				m[a] = c
				break
			}
		}
	}
	return m
}()

func twin(a netip.Addr) netip.Addr { return twins[a] }

// natFrame is a packet to a SNAT source: a backend's reply to a flow the
// frames began (to the source and port the generator expects it took), or
// to no flow; or an ICMP error quoting a packet to a backend from such a
// source and port.
func (g *Frames) natFrame() []byte {
	s := g.s
	src, to, proto, f, ok := g.translated()
	if !ok || s.Chance(20) { // no flow's
		ok = false
		a := Pick(s, g.cfg.NAT.Sources...)
		port := g.cfg.NAT.PortLo + uint16(s.N(int(g.cfg.NAT.PortHi-g.cfg.NAT.PortLo)+1))
		if s.Chance(20) {
			port = s.U16()
		}
		src = netip.AddrPortFrom(a, port)
		b := Pick(s, g.cfg.Backends...)
		bport := Pick(s, b.Port, 80, 53, s.U16())
		if b.Addr.Is4() != a.Is4() {
			b.Addr = other6
			if a.Is4() {
				b.Addr = other4
			}
		}
		to, proto = netip.AddrPortFrom(b.Addr, bport), Pick(s, xdp.TCP, xdp.UDP)
	}
	if s.Chance(70) {
		l := g.transport(to, src, proto)
		if ok {
			l = g.zeroSum(l, f.dst, f.src) // as it leaves: from the VIP to the client
		}
		return packet.MustBuild(g.ip(to.Addr(), src.Addr(), l))
	}
	// An ICMP error about the packet to the backend: from the backend
	// (port unreachable) or from a router on the way.
	q := packet.MustBuild(g.ip(src.Addr(), to.Addr(), g.transport(src, to, proto)))
	from := to.Addr()
	if s.Chance(40) {
		from = router6
		if from.Is4() != src.Addr().Is4() {
			from = router4
		}
	}
	if src.Addr().Is4() {
		n := min(len(q), Pick(s, 28, 28, 48, 64, 20, 24, 26, 36, 100))
		m := packet.ICMPv4{Type: Pick[uint8](s, 3, 3, 11, 12, 5), Code: Pick[uint8](s, 3, 4, 0, 1), Rest: packet.FragNeededRest(1200), Body: q[:n]}
		return packet.MustBuild(packet.IPv4{Src: from, Dst: src.Addr(), TOS: g.tos(), TTL: g.ttl(), Payload: m})
	}
	n := min(len(q), Pick(s, 48, 48, 68, 100, 40, 44, 46, 56, 120))
	m := packet.ICMPv6{Type: Pick[uint8](s, 1, 2, 1, 3, 4, 5, 128), Code: Pick[uint8](s, 4, 0, 1), Rest: packet.PacketTooBigRest(1280), Body: q[:n]}
	return packet.MustBuild(packet.IPv6{Src: from, Dst: src.Addr(), TrafficClass: g.tos(), HopLimit: g.ttl(), Payload: m})
}

// translated is a flow the frames began (f), as it leaves toward its
// backend (translatedOf).
func (g *Frames) translated() (src, to netip.AddrPort, proto xdp.Proto, f flow, ok bool) {
	if len(g.flows) == 0 {
		return src, to, proto, f, false
	}
	f = Pick(g.s, g.flows...)
	src, to, proto, ok = g.translatedOf(f)
	return src, to, proto, f, ok
}

// translatedOf is flow f as it leaves toward its backend: the source and
// port it took (the first try of xdp.NATPick, now and then a later one) and
// the backend's address and port, by the configuration's current table.
func (g *Frames) translatedOf(f flow) (src, to netip.AddrPort, proto xdp.Proto, ok bool) {
	s := g.s
	i, ok := g.cfg.lookup(f.dst, f.proto)
	if !ok || len(g.cfg.VIPs[i].Tables) == 0 {
		return src, to, proto, false
	}
	v := g.cfg.VIPs[i]
	t := v.Tables[len(v.Tables)-1]
	h := xdp.FlowHash(f.src, f.dst, f.proto, v.Seed)
	id := t[xdp.Slot(h, len(t))]
	var srcs []netip.Addr
	for _, a := range g.cfg.NAT.Sources {
		if a.Is4() == f.src.Addr().Is4() {
			srcs = append(srcs, a)
		}
	}
	if len(srcs) == 0 {
		return src, to, proto, false
	}
	for _, b := range g.cfg.Backends {
		if b.ID != id || b.Addr.Is4() != f.src.Addr().Is4() {
			continue
		}
		port := b.Port
		if port == 0 {
			port = f.dst.Port()
		}
		a, sport := xdp.NATPick(h, Pick(s, 0, 0, 0, 1, 2, 7), srcs, g.cfg.NAT.PortLo, g.cfg.NAT.PortHi)
		return netip.AddrPortFrom(a, sport), netip.AddrPortFrom(b.Addr, port), f.proto, true
	}
	return src, to, proto, false
}

// zeroSum sets, now and then, the first two bytes of a UDP datagram's
// payload so that the datagram, once translated to go from src to dst,
// sums to 0xffff: its checksum computes to 0, sent as 0xffff.
func (g *Frames) zeroSum(l packet.Layer, src, dst netip.AddrPort) packet.Layer {
	u, ok := l.(packet.UDP)
	if !ok || len(u.Payload) < 2 || u.NoChecksum || !g.s.Chance(20) {
		return l
	}
	u.Payload = append([]byte{0, 0}, u.Payload[2:]...)
	n := 8 + len(u.Payload)
	b := append(append([]byte{}, src.Addr().AsSlice()...), dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, 17)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, 0, 0)
	b = append(b, u.Payload...)
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(u.Payload, ^uint16(sum))
	return u
}
