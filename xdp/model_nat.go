package xdp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// The frame model of SNAT (docs/architecture.md, "SNAT"): a packet of a snat
// service follows its NAT flow or makes one (a source and port of the
// config's, the first of NATPortTries pairs that no live flow to the same
// backend address and port holds), leaves translated toward the backend;
// the backend's reply to the source and port leaves translated toward the
// client, the way the flow's first frame came; an ICMP error to a source
// about a flow's packet goes to the client with its quote translated back;
// a TCP packet of a flow whose backend is lost is answered with a RST. The
// model keeps its own NAT flows (FrameModel.nat), never the program's.

// snat is the program's way with a packet of a snat service (p, its flow as
// the model sees it, to service v): the flow's NAT entry while its backend
// is up (ModelState.Decide, with the model's NAT flows), else a new flow on
// a TCP SYN or a UDP datagram, else a drop or a RST.
func (r *frameRun) snat(f *mflow, p Packet, v ModelVIP) string {
	if f.first { // fragments are not translated
		return cDropNATUnsupp
	}
	k := mnatKey{p.Src, p.Dst, p.Proto, false}
	fwd, had := r.m.nat[k]
	d := r.m.State.Decide(p)
	if d.Rule == RuleNATICMP { // an error from the client's side
		return cDropICMP
	}
	// An IPv6 extension header (an atomic fragment's) moves the transport
	// header: not translated, and the flow is neither made, nor removed,
	// nor answered.
	if f.atomic {
		return cDropNATUnsupp
	}
	// A flow whose backend is down or gone is removed by its next packet,
	// whatever becomes of the packet.
	if had && d.Rule != RuleNATFlow {
		r.event(evNATBackendLost)
		delete(r.m.nat, k)
		delete(r.m.nat, mnatKey{fwd.toDst, fwd.toSrc, p.Proto, true})
	}
	switch d.Rule {
	case RuleNATNoFlow:
		return cDropNATNoFlow
	case RuleNATBackendLost:
		return r.natRST(f)
	case RuleNATFlow:
	case RuleTable:
		var c string
		if fwd, c = r.natCreate(f, p, d.BackendID, d.Hash); c != "" {
			return c
		}
	default:
		return cDropNoBackend
	}
	r.out.BackendID = d.BackendID
	if f.syn {
		r.event(evNewFlow)
	}
	out := bytes.Clone(r.in)
	if c := natRewrite(out, f, fwd.toSrc, fwd.toDst); c != "" {
		return c
	}
	b := r.m.State.Backends[d.BackendID]
	copy(out[0:6], b.NextHopMAC)
	copy(out[6:12], b.SrcMAC)
	r.sent = out
	return r.xmit(f, b, cTxSNAT, cRedirectSNAT)
}

// natSources are the SNAT sources of a family, in the order given.
func (m *FrameModel) natSources(v4 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range m.NAT.Sources {
		if a.Unmap().Is4() == v4 {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// natCreate makes the NAT flow of p toward backend id (p's flow hash is
// hash): the first of the NATPortTries (source, port) pairs (NATPick) whose
// reply key no live flow holds, each pair taken counted as a retry. It
// returns the forward entry, or the drop counter.
func (r *frameRun) natCreate(f *mflow, p Packet, id, hash uint32) (mnatVal, string) {
	srcs := r.m.natSources(f.family == 4)
	b := r.m.State.Backends[id]
	// No source of the family, or a backend of the other family: SNAT does
	// not translate between families.
	if len(srcs) == 0 || r.m.NAT.PortHi < r.m.NAT.PortLo || b.Addr.Unmap().Is4() != (f.family == 4) {
		return mnatVal{}, cDropNATNoSource
	}
	port := b.Port
	if port == 0 {
		port = p.Dst.Port()
	}
	to := netip.AddrPortFrom(b.Addr.Unmap(), port)
	for i := range NATPortTries {
		a, sport := NATPick(hash, i, srcs, r.m.NAT.PortLo, r.m.NAT.PortHi)
		src := netip.AddrPortFrom(a, sport)
		rk := mnatKey{to, src, p.Proto, true}
		if _, taken := r.m.nat[rk]; taken {
			r.event(evNATPortRetry)
			continue
		}
		fwd := mnatVal{toSrc: src, toDst: to, backendID: id}
		rv := mnatVal{toSrc: p.Dst, toDst: p.Src, backendID: id, ifindex: r.ingress}
		copy(rv.dmac[:], r.in[6:12]) // back to where the frame came from
		copy(rv.smac[:], r.in[0:6])
		r.m.nat[mnatKey{p.Src, p.Dst, p.Proto, false}] = fwd
		r.m.nat[rk] = rv
		r.event(evNATCreated)
		return fwd, ""
	}
	return mnatVal{}, cDropNATNoPort
}

// natReply translates a packet to a SNAT source that is the reply of a NAT
// flow back to the flow's client: "" when it belongs to no flow.
func (r *frameRun) natReply(f *mflow) string {
	v, ok := r.m.nat[mnatKey{netip.AddrPortFrom(f.src, f.sport), netip.AddrPortFrom(f.dst, f.dport), Proto(f.proto), true}]
	if !ok {
		return ""
	}
	if f.first {
		return cDropNATUnsupp
	}
	out := bytes.Clone(r.in)
	if c := natRewrite(out, f, v.toSrc, v.toDst); c != "" {
		return c
	}
	copy(out[0:6], v.dmac[:])
	copy(out[6:12], v.smac[:])
	r.sent = out
	r.out.BackendID = v.backendID
	return r.xmitTo(v.ifindex, cTxSNATReply, cRedirectSNATRep)
}

// csumDiff is the one's complement sum of the 16-bit words of new minus
// those of old (RFC 1624: ~m + m' for each word).
func csumDiff(old, new []byte) uint64 {
	var d uint64
	for i := 0; i+1 < len(old); i += 2 {
		d += uint64(^be16(old[i:])) + uint64(be16(new[i:]))
	}
	return d
}

// csumAdjust is checksum hc updated for changes whose csumDiff is d (RFC
// 1624, equation 3: HC' = ~(~HC + ~m + m')).
func csumAdjust(hc uint16, d uint64) uint16 {
	s := uint64(^hc) + d
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// natRewrite writes new addresses and ports (src, dst) into frame out, a
// packet of TCP or UDP flow f, and updates the IPv4 header checksum and the
// transport checksum (its pseudo-header and ports) incrementally. An IPv4
// UDP datagram without a checksum keeps none, and a UDP checksum that comes
// out 0 is sent as 0xffff (RFC 768). A packet with an extension header (an
// atomic fragment's) is not translated: it returns the drop counter.
func natRewrite(out []byte, f *mflow, src, dst netip.AddrPort) string {
	ip := out[f.l2:]
	var d uint64
	var l4 []byte
	if f.family == 4 {
		s, t := src.Addr().As4(), dst.Addr().As4()
		d = csumDiff(ip[12:16], s[:]) + csumDiff(ip[16:20], t[:])
		binary.BigEndian.PutUint16(ip[10:], csumAdjust(be16(ip[10:]), d))
		copy(ip[12:16], s[:])
		copy(ip[16:20], t[:])
		l4 = ip[20:]
	} else {
		if f.atomic {
			return cDropNATUnsupp
		}
		s, t := src.Addr().As16(), dst.Addr().As16()
		d = csumDiff(ip[8:24], s[:]) + csumDiff(ip[24:40], t[:])
		copy(ip[8:24], s[:])
		copy(ip[24:40], t[:])
		l4 = ip[40:]
	}
	var ports [4]byte
	binary.BigEndian.PutUint16(ports[0:], src.Port())
	binary.BigEndian.PutUint16(ports[2:], dst.Port())
	d += csumDiff(l4[0:4], ports[:])
	copy(l4[0:4], ports[:])
	if f.proto == 17 {
		ck := l4[6:8]
		if f.family == 4 && be16(ck) == 0 {
			return ""
		}
		c := csumAdjust(be16(ck), d)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(ck, c)
		return ""
	}
	binary.BigEndian.PutUint16(l4[16:], csumAdjust(be16(l4[16:]), d))
	return ""
}

// natRST answers the client's TCP packet f, of a flow whose backend is
// lost: a RST packet carries the RST flag itself and is dropped; any other
// is answered from the VIP, back where it came from (MACs swapped), with a
// RST of RFC 9293 3.10.7.1: to a segment with an ACK, sequence number its
// acknowledgment; to one without, sequence 0 and RST|ACK acknowledging what
// it carried (its data, plus one for a SYN and for a FIN). The RST is a bare
// IP and TCP header: TTL or hop limit the configured one, IPv4 ID 0 and DF,
// TOS or traffic class and flow label kept, window 0, no options.
func (r *frameRun) natRST(f *mflow) string {
	l3 := 20
	if f.family == 6 {
		l3 = 40
	}
	tcp := f.l2 + l3 // where the TCP header is (no extension header: snat)
	t := r.in[tcp:]
	if t[13]&0x04 != 0 {
		return cDropNoBackend
	}
	doff := uint32(t[12]>>4) * 4
	n := uint32(f.l3len) - uint32(tcp-f.l2) - doff
	if t[13]&0x02 != 0 { // SYN
		n++
	}
	if t[13]&0x01 != 0 { // FIN
		n++
	}
	th := make([]byte, 20)
	binary.BigEndian.PutUint16(th[0:], f.dport)
	binary.BigEndian.PutUint16(th[2:], f.sport)
	if t[13]&0x10 != 0 { // ACK
		copy(th[4:8], t[8:12])
		th[12], th[13] = 0x50, 0x04
	} else {
		binary.BigEndian.PutUint32(th[8:], binary.BigEndian.Uint32(t[4:])+n)
		th[12], th[13] = 0x50, 0x14
	}
	out := append(bytes.Clone(r.in[:f.l2+l3]), th...)
	swapMACs(out)
	ip := out[f.l2:]
	pseudo := append(append([]byte{}, f.dst.AsSlice()...), f.src.AsSlice()...)
	pseudo = append(pseudo, 0, 6, 0, 20)
	if f.family == 4 {
		copy(ip[12:16], f.dst.AsSlice())
		copy(ip[16:20], f.src.AsSlice())
		binary.BigEndian.PutUint16(ip[2:], 40)
		binary.BigEndian.PutUint16(ip[4:], 0)
		binary.BigEndian.PutUint16(ip[6:], 0x4000)
		ip[8] = r.m.TTL
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], ^modelSum(0, ip[:20]))
	} else {
		copy(ip[8:24], f.dst.AsSlice())
		copy(ip[24:40], f.src.AsSlice())
		binary.BigEndian.PutUint16(ip[4:], 20)
		ip[7] = r.m.TTL
	}
	tcpOut := out[f.l2+l3:]
	binary.BigEndian.PutUint16(tcpOut[16:], ^modelSum(uint32(modelSum(0, pseudo)), tcpOut))
	r.sent = out
	return cTxSNATRST
}

// natICMP translates an ICMP error to a SNAT source (f; l4 is the ICMP
// message) that quotes a packet of a NAT flow (from the source and port to
// the backend's address and port) for the flow's client: the quote becomes
// the client's packet to the VIP (addresses, ports, the quoted IPv4 header
// checksum, and the quoted transport checksum when the message holds it:
// an IPv4 UDP one that is 0 stays 0, one that comes out 0 is 0xffff), the
// error goes to the client, from the VIP when the backend sent it, from
// whoever did otherwise, with every checksum it carries updated
// incrementally; the MTU of a "fragmentation needed" or "packet too big"
// stays (SNAT changes no packet's size). It goes back the way the flow's
// first frame came. "" when the message is no such error, or its quote
// names no flow (the host's business).
func (r *frameRun) natICMP(f *mflow, l4 []byte) string {
	hl := 40
	if f.family == 4 {
		hl = 20
	}
	if len(l4) < 8+hl+4 {
		return ""
	}
	typ := l4[0]
	if f.family == 4 && typ != 3 && typ != 11 && typ != 12 || f.family == 6 && (typ < 1 || typ > 4) {
		return ""
	}
	q := l4[8:]
	var qsrc, qdst netip.Addr
	var qproto uint8
	if f.family == 4 {
		if q[0] != 0x45 {
			return ""
		}
		qsrc, qdst, qproto = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), q[9]
	} else {
		if q[0]>>4 != 6 {
			return ""
		}
		qsrc, qdst, qproto = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), q[6]
	}
	if qsrc != f.dst || qproto != 6 && qproto != 17 {
		return ""
	}
	// The quoted packet went from the source to the backend: the backend's
	// reply, the other way, is the flow's reply entry.
	v, ok := r.m.nat[mnatKey{netip.AddrPortFrom(qdst, be16(q[hl+2:])), netip.AddrPortFrom(qsrc, be16(q[hl:])), Proto(qproto), true}]
	if !ok {
		return ""
	}
	vip, client := v.toSrc, v.toDst
	src := f.src
	if src == qdst {
		src = vip.Addr()
	}
	out := bytes.Clone(r.in)
	ip := out[f.l2:]
	ic := ip[hl:]
	qo := ic[8:]
	var dmsg, din uint64
	if f.family == 4 {
		s, c, vv := src.As4(), client.Addr().As4(), vip.Addr().As4()
		d := csumDiff(ip[12:16], s[:]) + csumDiff(ip[16:20], c[:])
		binary.BigEndian.PutUint16(ip[10:], csumAdjust(be16(ip[10:]), d))
		copy(ip[12:16], s[:])
		copy(ip[16:20], c[:])
		// ICMPv4's checksum covers the message alone: the quote's
		// addresses and its header checksum.
		din = csumDiff(qo[12:16], c[:]) + csumDiff(qo[16:20], vv[:])
		old := be16(qo[10:])
		nw := csumAdjust(old, din)
		binary.BigEndian.PutUint16(qo[10:], nw)
		dmsg = din + uint64(^old) + uint64(nw)
		copy(qo[12:16], c[:])
		copy(qo[16:20], vv[:])
	} else {
		s, c, vv := src.As16(), client.Addr().As16(), vip.Addr().As16()
		// ICMPv6's covers the pseudo-header too.
		dmsg = csumDiff(ip[8:24], s[:]) + csumDiff(ip[24:40], c[:])
		copy(ip[8:24], s[:])
		copy(ip[24:40], c[:])
		din = csumDiff(qo[8:24], c[:]) + csumDiff(qo[24:40], vv[:])
		dmsg += din
		copy(qo[8:24], c[:])
		copy(qo[24:40], vv[:])
	}
	var ports [4]byte
	binary.BigEndian.PutUint16(ports[0:], client.Port())
	binary.BigEndian.PutUint16(ports[2:], vip.Port())
	dp := csumDiff(qo[hl:hl+4], ports[:])
	ck, need := hl+16, 18
	if qproto == 17 {
		ck, need = hl+6, 8
	}
	if len(l4) >= 8+hl+need && (be16(qo[ck:]) != 0 || qproto != 17 || f.family == 6) {
		old := be16(qo[ck:])
		nw := csumAdjust(old, din+dp)
		if qproto == 17 && nw == 0 {
			nw = 0xffff
		}
		binary.BigEndian.PutUint16(qo[ck:], nw)
		dmsg += uint64(^old) + uint64(nw)
	}
	copy(qo[hl:hl+4], ports[:])
	dmsg += dp
	binary.BigEndian.PutUint16(ic[2:], csumAdjust(be16(ic[2:]), dmsg))
	copy(out[0:6], v.dmac[:])
	copy(out[6:12], v.smac[:])
	r.sent = out
	r.out.BackendID = v.backendID
	return r.xmitTo(v.ifindex, cTxSNATICMP, cRedirectSNATICMP)
}
