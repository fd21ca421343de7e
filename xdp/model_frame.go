package xdp

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// The frame model: what the program does with a whole frame, written from the
// rules of docs/architecture.md (parsing, the VIP prefilter as it shows,
// fragments, ICMP, forwarding, counters), around the model of the choice of a
// backend (ModelState.Decide). The differential fuzzing (FuzzCampaign) runs
// frames through the program and through this model and compares the
// verdict, the output frame and the counter that moved.
//
// It is written from the rules, not translated from bpf/lb.h: where the two
// disagree, one of them is wrong, and the rule decides which. The model
// keeps what the program keeps between packets (the pins it makes, the first
// fragments it remembers, the NAT flows of snat services) so that a sequence
// of frames can be checked, but not the clock: transitions are running or
// not for the whole run, remembered fragments never time out, NAT flows never
// expire, and the flow table never fills (the caller sizes it for the run).

// Verdict counters and events of the frame model, as "action/reason" (the
// names of xdp/counters.go).
const (
	cPassNotIP        = "pass/not_ip"
	cPassNotVIP       = "pass/not_vip"
	cPassTruncated    = "pass/truncated"
	cPassBadL3        = "pass/bad_ip_header"
	cPassVLANStacked  = "pass/vlan_stacked"
	cPassNDP          = "pass/ndp"
	cDropFragment     = "drop/fragment"
	cDropFragUnknown  = "drop/fragment_unknown"
	cDropIPOptions    = "drop/ip_options"
	cDropIPv6Ext      = "drop/ipv6_extension_header"
	cDropProtocol     = "drop/protocol"
	cDropBadL3        = "drop/bad_ip_header"
	cDropTruncated    = "drop/truncated"
	cDropBadL4        = "drop/bad_tcp_header"
	cDropNoService    = "drop/no_service"
	cDropNoBackend    = "drop/no_backend"
	cDropTooBigNoDF   = "drop/too_big_df_clear"
	cDropICMP         = "drop/icmp"
	cDropRedirect     = "drop/redirect_failed"
	cDropUnsupported  = "drop/unsupported_mode"
	cDropNoEncapSrc   = "drop/no_encap_source"
	cDropNATNoSource  = "drop/snat_no_source"
	cDropNATNoFlow    = "drop/snat_no_flow"
	cDropNATUnsupp    = "drop/snat_unsupported"
	cDropNATNoPort    = "drop/snat_no_port"
	cPassNATNoFlow    = "pass/snat_no_flow"
	cTxSNAT           = "tx/snat"
	cRedirectSNAT     = "redirect/snat"
	cTxSNATReply      = "tx/snat_reply"
	cRedirectSNATRep  = "redirect/snat_reply"
	cTxSNATRST        = "tx/snat_rst"
	cTxSNATICMP       = "tx/snat_icmp_error"
	cRedirectSNATICMP = "redirect/snat_icmp_error"
	cTxL2             = "tx/dsr_l2"
	cRedirectL2       = "redirect/dsr_l2"
	cTxIPIP           = "tx/dsr_ipip"
	cRedirectIPIP     = "redirect/dsr_ipip"
	cTxEcho           = "tx/icmp_echo_reply"
	cTxTooBig         = "tx/icmp_too_big"
	cTxTimeExceeded   = "tx/icmp_time_exceeded"
	cTxICMPError      = "tx/icmp_error_to_backend"
	cRedirectICMPErr  = "redirect/icmp_error_to_backend"
	evPinCreated      = "event/pin_created"
	evPinHit          = "event/pin_hit"
	evPinStale        = "event/pin_stale"
	evPinFull         = "event/pin_table_full"
	evVLAN            = "event/vlan_tagged"
	evNewFlow         = "event/tcp_syn"
	evFragmentFirst   = "event/fragment_first"
	evFragmentFollows = "event/fragment_followed"
	evNATCreated      = "event/snat_flow_created"
	evNATPortRetry    = "event/snat_port_retry"
	evNATBackendLost  = "event/snat_backend_lost"
)

// Known program bugs: rules the program is known to break. The model
// follows the rule; with FrameModel.KnownBugs it predicts what the program
// does instead (a rule the program breaks appends its name to
// FrameOutcome.Bugs and, with KnownBugs, takes the program's way), so that a
// campaign can look past them for other differences. Every frame that meets
// one is marked in FrameOutcome.Bugs either way. None is known now. The
// three the fuzzing found (an ICMP error's quote read up to the end of the
// frame rather than of the IP packet; time exceeded and too big quoting 28
// or 48 bytes of a shorter packet; a RST to a SNAT client built from an
// IPv6 atomic fragment's fragment header, snat-rst-atomic-fragment) are
// fixed, and TestFixedProgramBugs keeps their reproducers.

// FlowKey names a flow as the program pins it: the client's side, as the
// packets arrive.
type FlowKey struct {
	Src, Dst netip.AddrPort
	Proto    Proto
}

// fragKey names a fragmented datagram: source, destination, IPv4 ID or IPv6
// fragment identification, protocol.
type fragKey struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

// fragEntry is where the first fragment of a datagram went.
type fragEntry struct {
	backend      uint32
	hash         uint32
	sport, dport uint16
}

// FrameModel is the datapath as the frame model sees it: services and
// backends (State, whose Pin the model answers from Pins), the pins and
// remembered first fragments so far, and the settings and knobs.
type FrameModel struct {
	State *ModelState
	// Pins are the pinned flows: those written before the run and those
	// the model's packets made.
	Pins map[FlowKey]uint32
	// Encap4 and Encap6 are the IPIP outer sources (SetEncapSource); an
	// invalid prefix is none.
	Encap4, Encap6 netip.Prefix
	// TxPorts are the interfaces a redirect can reach.
	TxPorts map[int]bool
	// TTL of the headers the program writes; Echo: echo requests to a VIP
	// address are answered (Options.TTL, Options.DisableEcho).
	TTL  uint8
	Echo bool
	// KnownBugs: predict what the program does where it is known to break
	// a rule (the Bug... constants) instead of what the rule says.
	KnownBugs bool
	// NAT is the SNAT config (Datapath.SetNAT): the sources and the port
	// range new NAT flows take their source and port from.
	NAT NATConfig
	// MaxFlows sizes each family's flow table as Options.MaxFlows does (0:
	// unbounded). A new pin fails when the buckets its key may live in
	// are full: the model keeps tables of the program's geometry (which
	// hold about 2 MaxFlows pins). The program's per-CPU backoff after a
	// failure is not modelled (it depends on the clock): a pin replacing a
	// stale one in a full table succeeds here, and so would a pin whose
	// buckets have room after another's failed (tables of at most ftProbe
	// buckets, MaxFlows ≤ 4, have no such pin: every key may live in
	// every bucket).
	MaxFlows int

	frags   map[fragKey]fragEntry
	filter  map[uint32]bool
	vipAddr map[netip.Addr]bool
	tables  [2]*flowTable // IPv4, IPv6 pins (with MaxFlows), filled at the first Run
	added   []FlowKey     // AddPin's keys, in order
	// nat holds both entries of every NAT flow the model's frames made,
	// keyed as the program keys them (the packet as it arrives, and its
	// direction). The model's NAT tables never fill: the caller sizes the
	// program's (Options.MaxNATFlows) far beyond the flows of a run, so
	// snat_table_full and the backoff after it are not modelled.
	nat    map[mnatKey]mnatVal
	natSrc map[netip.Addr]bool // the SNAT sources, from NAT
}

// mnatKey is the key of a NAT entry: a packet's tuple as it arrives, and its
// direction (the client's packets, or the backend's replies).
type mnatKey struct {
	src, dst netip.AddrPort
	proto    Proto
	reply    bool
}

// mnatVal is what a packet of a NAT entry becomes: its new source and
// destination, and the flow's backend; a reply entry also keeps where the
// flow's first frame came from (the MACs to send back with, and the
// interface).
type mnatVal struct {
	toSrc, toDst netip.AddrPort
	backendID    uint32
	dmac, smac   [6]byte
	ifindex      int
}

// AddPin pins a flow before the first Run, as Datapath.PinFlow does: pins
// written in the same order take the same places in the tables.
func (m *FrameModel) AddPin(k FlowKey, id uint32) {
	m.Pins[k] = id
	m.added = append(m.added, k)
}

// table is the model's flow table of a's family, or nil (unbounded).
func (m *FrameModel) table(a netip.Addr) *flowTable {
	if a.Is4() {
		return m.tables[0]
	}
	return m.tables[1]
}

// pinTables fills the tables with the pins there are, AddPin's first.
func (m *FrameModel) pinTables() {
	if m.MaxFlows <= 0 {
		return
	}
	m.tables[0] = newFlowTable(ftBuckets(m.MaxFlows, pin4Geom), pin4Geom)
	m.tables[1] = newFlowTable(ftBuckets(m.MaxFlows, pin6Geom), pin6Geom)
	put := func(k FlowKey) {
		f := Flow{Src: k.Src, Dst: k.Dst, Proto: k.Proto, BackendID: m.Pins[k]}
		key, tag, hash := pinKey(f)
		_ = m.table(k.Src.Addr()).insert(hash, key, tag, []uint32{f.BackendID, 0}, true)
	}
	for _, k := range m.added {
		put(k)
	}
	for _, k := range slices.SortedFunc(maps.Keys(m.Pins), func(a, b FlowKey) int {
		return strings.Compare(a.Src.String()+a.Dst.String()+a.Proto.String(), b.Src.String()+b.Dst.String()+b.Proto.String())
	}) {
		put(k)
	}
}

// pinFails says whether a new pin of k would fail: its buckets are full.
func (m *FrameModel) pinFails(k FlowKey) bool {
	t := m.table(k.Src.Addr())
	if t == nil {
		return false
	}
	_, _, hash := pinKey(Flow{Src: k.Src, Dst: k.Dst, Proto: k.Proto})
	return !t.room(hash)
}

// NewFrameModel returns a frame model over s (whose Pin and NATFlow it
// replaces by lookups in the model's pins and NAT flows) with no pins, no
// fragments and no NAT flows yet.
func NewFrameModel(s *ModelState) *FrameModel {
	m := &FrameModel{State: s, Pins: map[FlowKey]uint32{}, TxPorts: map[int]bool{}, TTL: 64, Echo: true,
		frags: map[fragKey]fragEntry{}, nat: map[mnatKey]mnatVal{}}
	s.Pin = func(src, dst netip.AddrPort, proto Proto) (uint32, bool) {
		id, ok := m.Pins[FlowKey{src, dst, proto}]
		return id, ok
	}
	s.NATFlow = func(src, dst netip.AddrPort, proto Proto) (uint32, bool) {
		v, ok := m.nat[mnatKey{src, dst, proto, false}]
		return v.backendID, ok
	}
	return m
}

// FrameOutcome is what the program does with a frame.
type FrameOutcome struct {
	// Verdict is the XDP action (XDPDrop, XDPPass, XDPTx, XDPRedirect).
	Verdict uint32
	// Counter is the verdict counter that moves, "action/reason".
	Counter string
	// Events are the event counters that move, once each, in order.
	Events []string
	// Out is the frame passed or sent (nil when dropped).
	Out []byte
	// BackendID is the backend chosen for the frame (0: none, or dropped).
	BackendID uint32
	// Bugs are the known program bugs (Bug...) the frame met: where the
	// program and the rule differ for it.
	Bugs []string
}

// frameRun is one frame through the model.
type frameRun struct {
	m       *FrameModel
	in      []byte
	ingress int
	out     FrameOutcome
	sent    []byte
}

// mflow is what the model knows of the packet it forwards; for an ICMP error
// about a VIP flow, the flow is the quoted one, seen from the client.
type mflow struct {
	family       int
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	syn          bool
	rst          bool // TCP: the RST flag
	atomic       bool // IPv6: an atomic fragment (a fragment header, offset 0, no more)
	icmpErr      bool
	tos, ttl     uint8
	df           bool
	l3len        int // IP total length of the packet forwarded
	l2           int // bytes of Ethernet header and tag
	first        bool
	fragID       uint32
}

// Run runs a frame, arriving on interface ingress, through the model and
// updates the model's pins and fragments as the program would its maps.
// The services of State are read once, at the first Run.
func (m *FrameModel) Run(frame []byte, ingress int) FrameOutcome {
	if m.filter == nil {
		m.filter, m.vipAddr = map[uint32]bool{}, map[netip.Addr]bool{}
		for k := range m.State.VIPs {
			m.filter[FilterBit(k.Addr)] = true
			m.vipAddr[k.Addr] = true
		}
		// SNAT sources set their prefilter bits too.
		m.natSrc = map[netip.Addr]bool{}
		for _, a := range m.NAT.Sources {
			m.filter[FilterBit(a.Unmap())] = true
			m.natSrc[a.Unmap()] = true
		}
		m.pinTables()
	}
	r := &frameRun{m: m, in: frame, ingress: ingress}
	r.out.Counter = r.process()
	// The verdict follows from the counter.
	action, _, _ := strings.Cut(r.out.Counter, "/")
	switch action {
	case "pass":
		r.out.Verdict = XDPPass
		r.out.Out = bytes.Clone(frame) // passed untouched
	case "drop":
		r.out.Verdict, r.out.BackendID = XDPDrop, 0
	case "tx":
		r.out.Verdict, r.out.Out = XDPTx, r.sent
	default:
		r.out.Verdict, r.out.Out = XDPRedirect, r.sent
	}
	return r.out
}

func (r *frameRun) event(e string) { r.out.Events = append(r.out.Events, e) }

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

func isTagged(ethertype uint16) bool { return ethertype == 0x8100 || ethertype == 0x88a8 }

// process is the frame's way through the rules; it returns the verdict
// counter.
func (r *frameRun) process() string {
	b := r.in
	if len(b) < 14 {
		return cPassTruncated
	}
	l2, et := 14, be16(b[12:])
	if isTagged(et) {
		// One 802.1Q or 802.1ad tag is read; a second is not handled.
		if len(b) < 18 {
			return cPassTruncated
		}
		l2, et = 18, be16(b[16:])
		if isTagged(et) {
			return cPassVLANStacked
		}
		r.event(evVLAN)
	}
	switch et {
	case 0x0800:
		return r.ipv4(l2)
	case 0x86dd:
		return r.ipv6(l2)
	}
	return cPassNotIP
}

// forVIP picks the drop reason for a packet to a VIP address and the pass
// reason for any other.
func (r *frameRun) forVIP(dst netip.Addr, drop, pass string) string {
	if r.m.vipAddr[dst] {
		return drop
	}
	return pass
}

func (r *frameRun) ipv4(l2 int) string {
	ip := r.in[l2:]
	if len(ip) < 20 {
		return cPassTruncated
	}
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	// The prefilter: an address whose bit is clear is no VIP, and its
	// packets are passed unread.
	if !r.m.filter[FilterBit(dst)] {
		return cPassNotVIP
	}
	ihl, tot := int(ip[0]&0xf)*4, int(be16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < 20 || tot < ihl || tot > len(ip) {
		return r.forVIP(dst, cDropBadL3, cPassBadL3)
	}
	if ihl != 20 {
		return r.forVIP(dst, cDropIPOptions, cPassNotVIP)
	}
	f := mflow{
		family: 4, src: netip.AddrFrom4([4]byte(ip[12:16])), dst: dst, proto: ip[9],
		tos: ip[1], ttl: ip[8], df: ip[6]&0x40 != 0, l3len: tot, l2: l2,
	}
	frag := be16(ip[6:])
	if frag&0x3fff != 0 { // more fragments, or an offset
		if f.proto != 6 && f.proto != 17 {
			return r.forVIP(dst, cDropFragment, cPassNotVIP)
		}
		f.fragID = uint32(be16(ip[4:]))
		if frag&0x1fff != 0 {
			return r.follow(&f)
		}
		f.first = true
	}
	return r.l4(&f, ip[20:tot])
}

// ipv6Ext are the extension headers the program does not walk.
var ipv6Ext = map[uint8]bool{0: true, 43: true, 44: true, 60: true, 51: true, 135: true, 139: true, 140: true}

func (r *frameRun) ipv6(l2 int) string {
	ip := r.in[l2:]
	if len(ip) < 40 {
		return cPassTruncated
	}
	dst := netip.AddrFrom16([16]byte(ip[24:40]))
	if !r.m.filter[FilterBit(dst)] {
		return cPassNotVIP
	}
	plen := int(be16(ip[4:]))
	if ip[0]>>4 != 6 || 40+plen > len(ip) {
		return r.forVIP(dst, cDropBadL3, cPassBadL3)
	}
	f := mflow{
		family: 6, src: netip.AddrFrom16([16]byte(ip[8:24])), dst: dst, proto: ip[6],
		tos: ip[0]<<4 | ip[1]>>4, ttl: ip[7], df: true, l3len: 40 + plen, l2: l2,
	}
	payload := ip[40 : 40+plen]
	if f.proto == 44 { // a fragment header first
		if len(payload) < 8 {
			return r.forVIP(dst, cDropTruncated, cPassNotVIP)
		}
		f.proto = payload[0]
		off := be16(payload[2:])
		f.fragID = binary.LittleEndian.Uint32(payload[4:])
		payload = payload[8:]
		if f.proto != 6 && f.proto != 17 {
			return r.forVIP(dst, cDropFragment, cPassNotVIP)
		}
		if off&0xfff8 != 0 {
			return r.follow(&f)
		}
		f.first = off&1 != 0 // offset 0 and no more: an atomic fragment, an ordinary packet
		f.atomic = !f.first
	}
	if ipv6Ext[f.proto] {
		return r.forVIP(dst, cDropIPv6Ext, cPassNotVIP)
	}
	return r.l4(&f, payload)
}

// l4 handles the transport header (l4 is the bytes the IP header declares).
func (r *frameRun) l4(f *mflow, l4 []byte) string {
	switch {
	case f.proto == 6:
		if len(l4) < 20 {
			return r.forVIP(f.dst, cDropTruncated, cPassNotVIP)
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return r.forVIP(f.dst, cDropBadL4, cPassNotVIP)
		}
		f.sport, f.dport = be16(l4), be16(l4[2:])
		f.syn = l4[13]&0x02 != 0 && l4[13]&0x10 == 0
		f.rst = l4[13]&0x04 != 0
	case f.proto == 17:
		if len(l4) < 8 {
			return r.forVIP(f.dst, cDropTruncated, cPassNotVIP)
		}
		f.sport, f.dport = be16(l4), be16(l4[2:])
	case f.family == 4 && f.proto == 1, f.family == 6 && f.proto == 58:
		// An error to a SNAT source about a NAT flow goes to its client,
		// also when the source is a VIP address; any other ICMP to an
		// address that is no VIP is the host's.
		if r.m.natSrc[f.dst] {
			if c := r.natICMP(f, l4); c != "" {
				return c
			}
		}
		if !r.m.vipAddr[f.dst] {
			return cPassNotVIP
		}
		if len(l4) < 8 {
			return cDropTruncated
		}
		if f.family == 6 && l4[0] >= 133 && l4[0] <= 137 {
			return cPassNDP // neighbour discovery is the announcer's
		}
		return r.icmp(f, l4)
	default:
		return r.forVIP(f.dst, cDropProtocol, cPassNotVIP)
	}
	// A packet to a SNAT source: the reply of a NAT flow is translated back
	// to its client; one of no flow goes on (the host's own traffic, or a
	// VIP at the same address), and is passed as snat_no_flow when no
	// service takes it.
	pass := cPassNotVIP
	if r.m.natSrc[f.dst] {
		if c := r.natReply(f); c != "" {
			return c
		}
		pass = cPassNATNoFlow
	}
	if _, ok := r.m.State.LookupVIP(netip.AddrPortFrom(f.dst, f.dport), Proto(f.proto)); !ok {
		return r.forVIP(f.dst, cDropNoService, pass)
	}
	return r.forward(f)
}

// icmp handles ICMP to a VIP address: echo answered, errors about a VIP flow
// forwarded to the flow's backend, the rest dropped.
func (r *frameRun) icmp(f *mflow, l4 []byte) string {
	typ := l4[0]
	echo, reply := uint8(8), uint8(0)
	if f.family == 6 {
		echo, reply = 128, 129
	}
	if typ == echo {
		if !r.m.Echo {
			return cDropICMP
		}
		return r.echoReply(f, reply)
	}
	var isErr bool
	if f.family == 4 {
		isErr = typ == 3 || typ == 11 || typ == 12
	} else {
		isErr = typ >= 1 && typ <= 4
	}
	if !isErr {
		return cDropICMP
	}
	// The quote is what the ICMP message carries, within its IP packet.
	counter, e := r.quoted(f, l4[8:])
	if counter != "" {
		return counter
	}
	return r.forward(&e)
}

// quoted reads the packet an ICMP error about f quotes (q, from the end of
// the ICMP header): the flow it names, or the counter of a quote that names
// none. The quoted packet went from the VIP to a client: its header must be
// there to be read, name the VIP as its source and carry TCP or UDP, and its
// ports must be there to find the flow and its service.
func (r *frameRun) quoted(f *mflow, q []byte) (string, mflow) {
	var qsrc, qdst netip.Addr
	var qproto uint8
	var hl int
	if f.family == 4 {
		if len(q) < 20 {
			return cDropTruncated, mflow{}
		}
		qsrc, qdst = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))
		if q[0] != 0x45 || qsrc != f.dst || (q[9] != 6 && q[9] != 17) {
			return cDropICMP, mflow{}
		}
		qproto, hl = q[9], 20
	} else {
		if len(q) < 40 {
			return cDropTruncated, mflow{}
		}
		qsrc, qdst = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40]))
		if q[0]>>4 != 6 || qsrc != f.dst || (q[6] != 6 && q[6] != 17) {
			return cDropICMP, mflow{}
		}
		qproto, hl = q[6], 40
	}
	if len(q) < hl+4 {
		return cDropTruncated, mflow{}
	}
	e := *f
	e.src, e.dst, e.proto = qdst, qsrc, qproto
	e.sport, e.dport = be16(q[hl+2:]), be16(q[hl:])
	e.icmpErr, e.df, e.syn, e.first = true, true, false, false
	if _, ok := r.m.State.LookupVIP(netip.AddrPortFrom(e.dst, e.dport), Proto(e.proto)); !ok {
		return cDropICMP, mflow{}
	}
	return "", e
}

// echoReply answers an echo request: addresses and MACs swapped, TTL or hop
// limit set, the type changed and the ICMP checksum updated for it.
func (r *frameRun) echoReply(f *mflow, reply uint8) string {
	out := bytes.Clone(r.in)
	swapMACs(out)
	ip := out[f.l2:]
	if f.family == 4 {
		copy(ip[12:16], r.in[f.l2+16:f.l2+20])
		copy(ip[16:20], r.in[f.l2+12:f.l2+16])
		ip[8] = r.m.TTL
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], ^modelSum(0, ip[:20]))
		icmpRetype(ip[20:], reply)
	} else {
		copy(ip[8:24], r.in[f.l2+24:f.l2+40])
		copy(ip[24:40], r.in[f.l2+8:f.l2+24])
		ip[7] = r.m.TTL
		// The pseudo-header's sum does not change when source and
		// destination swap.
		icmpRetype(ip[40:], reply)
	}
	r.sent = out
	return cTxEcho
}

func swapMACs(b []byte) {
	var t [6]byte
	copy(t[:], b[0:6])
	copy(b[0:6], b[6:12])
	copy(b[6:12], t[:])
}

// icmpRetype sets the type of the ICMP message ic and updates its checksum
// incrementally (RFC 1624, equation 3).
func icmpRetype(ic []byte, typ uint8) {
	old := be16(ic)
	ic[0] = typ
	binary.BigEndian.PutUint16(ic[2:], csumUpdate(be16(ic[2:]), old, be16(ic)))
}

// csumUpdate is RFC 1624's HC' = ~(~HC + ~m + m').
func csumUpdate(hc, m, m2 uint16) uint16 {
	s := uint32(^hc) + uint32(^m) + uint32(m2)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}

// modelSum adds b as big-endian 16-bit words to acc, end-around carry.
func modelSum(acc uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(be16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// follow sends a later fragment where the first fragment of its datagram
// went; one whose first was not seen is dropped when it is for a VIP
// address.
func (r *frameRun) follow(f *mflow) string {
	e, ok := r.m.frags[fragKey{f.src, f.dst, f.fragID, f.proto}]
	if !ok {
		return r.forVIP(f.dst, cDropFragUnknown, cPassNotVIP)
	}
	f.sport, f.dport = e.sport, e.dport
	v, ok := r.m.State.LookupVIP(netip.AddrPortFrom(f.dst, f.dport), Proto(f.proto))
	if !ok {
		return r.forVIP(f.dst, cDropNoService, cPassNotVIP)
	}
	// Like a pin, a remembered backend that is down (or gone) is not used;
	// the rest of the datagram is of no use elsewhere.
	if !r.m.State.up(e.backend) {
		return cDropNoBackend
	}
	r.event(evFragmentFollows)
	return r.send(f, v, e.backend, e.hash)
}

// forward balances a packet of a flow to a VIP: the backend as
// ModelState.Decide chooses it (and the pin it makes), then the send.
func (r *frameRun) forward(f *mflow) string {
	p := Packet{
		Src: netip.AddrPortFrom(f.src, f.sport), Dst: netip.AddrPortFrom(f.dst, f.dport),
		Proto: Proto(f.proto), SYN: f.syn, ICMPError: f.icmpErr,
	}
	if v, ok := r.m.State.LookupVIP(p.Dst, p.Proto); ok && v.Mode == ModeSNAT {
		return r.snat(f, p, v)
	}
	// A new pin fails when its buckets are full; Decide then sends a SYN
	// where the flow's next packets will go.
	k := FlowKey{p.Src, p.Dst, p.Proto}
	r.m.State.PinFails = r.m.pinFails(k)
	d := r.m.State.Decide(p)
	if d.Rule == RulePinned {
		r.event(evPinHit)
	}
	// A stale pin: StalePinID, or a pin to id 0 (no backend), which only
	// shows as a pin to replace or to remove.
	if d.StalePinID != 0 || d.DropsPin || (d.Rule != RulePinned && d.Pin == "replace") {
		r.event(evPinStale)
	}
	if d.DropsPin {
		// A SYN removes the stale pin; then it goes as a flow without one
		// (a pin it makes fits where the stale one was).
		delete(r.m.Pins, k)
		if t := r.m.table(p.Src.Addr()); t != nil {
			key, tag, hash := pinKey(Flow{Src: k.Src, Dst: k.Dst, Proto: k.Proto})
			if ref, ok := t.find(hash, key, tag); ok {
				ref.home = hash & t.mask
				t.delete(ref)
			}
		}
		r.m.State.PinFails = r.m.pinFails(k)
		d = r.m.State.Decide(p)
	}
	if d.Pin != "" {
		_, exists := r.m.Pins[k]
		switch {
		case exists && d.Pin == "create": // pinned by another CPU first
		case !exists && r.m.State.PinFails:
			r.event(evPinFull)
		default:
			if t := r.m.table(p.Src.Addr()); t != nil {
				key, tag, hash := pinKey(Flow{Src: k.Src, Dst: k.Dst, Proto: k.Proto})
				_ = t.insert(hash, key, tag, []uint32{d.BackendID, 0}, true)
			}
			r.m.Pins[k] = d.BackendID
			r.event(evPinCreated)
		}
	}
	if !d.Forwarded() {
		return cDropNoBackend
	}
	v := r.m.State.VIPs[d.VIP]
	if f.first {
		r.m.frags[fragKey{f.src, f.dst, f.fragID, f.proto}] = fragEntry{d.BackendID, d.Hash, f.sport, f.dport}
		r.event(evFragmentFirst)
	}
	return r.send(f, v, d.BackendID, d.Hash)
}

// send sends the packet to backend id by the VIP's mode.
func (r *frameRun) send(f *mflow, v ModelVIP, id, hash uint32) string {
	r.out.BackendID = id
	if f.syn {
		r.event(evNewFlow)
	}
	b := r.m.State.Backends[id]
	switch v.Mode {
	case ModeDSRL2:
		out := bytes.Clone(r.in)
		copy(out[0:6], b.NextHopMAC)
		copy(out[6:12], b.SrcMAC)
		r.sent = out
		return r.xmit(f, b, cTxL2, cRedirectL2)
	case ModeDSRIPIP:
		return r.ipip(f, b, hash)
	}
	return cDropUnsupported
}

// xmit is XDP_TX when the backend is behind the interface the frame came in
// on, else a redirect, which needs the interface in the tx ports.
func (r *frameRun) xmit(f *mflow, b Backend, tx, redirect string) string {
	if f.icmpErr {
		tx, redirect = cTxICMPError, cRedirectICMPErr
	}
	return r.xmitTo(b.IfIndex, tx, redirect)
}

// xmitTo is XDP_TX when ifindex is the interface the frame came in on, else
// a redirect, which needs the interface in the tx ports.
func (r *frameRun) xmitTo(ifindex int, tx, redirect string) string {
	if ifindex == r.ingress {
		return tx
	}
	if r.m.TxPorts[ifindex] {
		return redirect
	}
	return cDropRedirect
}

// ipip encapsulates the packet toward backend b, or answers the client
// when it cannot go (too big, TTL 1).
func (r *frameRun) ipip(f *mflow, b Backend, hash uint32) string {
	outer := 40
	if b.Addr.Is4() {
		outer = 20
	}
	if b.MTU != 0 && f.l3len+outer > b.MTU {
		if f.icmpErr {
			return cDropICMP // no ICMP about ICMP errors
		}
		if !f.df {
			return cDropTooBigNoDF // XDP cannot fragment
		}
		r.sent = r.icmpBack(f, true, uint32(b.MTU-outer))
		return cTxTooBig
	}
	if f.ttl <= 1 {
		if f.icmpErr {
			return cDropICMP
		}
		r.sent = r.icmpBack(f, false, 0)
		return cTxTimeExceeded
	}
	src := r.m.Encap6
	if b.Addr.Is4() {
		src = r.m.Encap4
	}
	if !src.IsValid() {
		return cDropNoEncapSrc
	}
	// Encapsulation routes the packet: its TTL or hop limit goes down by
	// one (the IPv4 header checksum updated incrementally).
	inner := bytes.Clone(r.in[f.l2:])
	if f.family == 4 {
		old := be16(inner[8:])
		inner[8]--
		binary.BigEndian.PutUint16(inner[10:], csumUpdate(be16(inner[10:]), old, be16(inner[8:])))
	} else {
		inner[7]--
	}
	innerProto := uint8(41)
	if f.family == 4 {
		innerProto = 4
	}
	var hdr []byte
	if b.Addr.Is4() {
		hdr = make([]byte, 20)
		hdr[0], hdr[1] = 0x45, f.tos
		binary.BigEndian.PutUint16(hdr[2:], uint16(f.l3len+20))
		binary.BigEndian.PutUint16(hdr[6:], 0x4000) // DF
		hdr[8], hdr[9] = r.m.TTL, innerProto
		s := spreadSource(src, hash)
		copy(hdr[12:16], s.AsSlice())
		copy(hdr[16:20], b.Addr.AsSlice())
		binary.BigEndian.PutUint16(hdr[10:], ^modelSum(0, hdr))
	} else {
		hdr = make([]byte, 40)
		binary.BigEndian.PutUint32(hdr, 6<<28|uint32(f.tos)<<20|hash&0xfffff)
		binary.BigEndian.PutUint16(hdr[4:], uint16(f.l3len))
		hdr[6], hdr[7] = innerProto, r.m.TTL
		s := spreadSource(src, hash)
		copy(hdr[8:24], s.AsSlice())
		copy(hdr[24:40], b.Addr.AsSlice())
	}
	out := r.l2Header(f, b.NextHopMAC, b.SrcMAC, b.Addr.Is4())
	out = append(append(out, hdr...), inner...)
	r.sent = out
	return r.xmit(f, b, cTxIPIP, cRedirectIPIP)
}

// spreadSource is the outer source from prefix p for a flow of hash h: the
// prefix's host bits (at most the last 32) replaced by the hash's low bits.
func spreadSource(p netip.Prefix, h uint32) netip.Addr {
	host := p.Addr().BitLen() - p.Bits()
	if host <= 0 {
		return p.Addr()
	}
	mask := uint32(1)<<host - 1
	if host >= 32 {
		mask = 0xffffffff
	}
	a := p.Addr().AsSlice()
	w := binary.BigEndian.Uint32(a[len(a)-4:])
	binary.BigEndian.PutUint32(a[len(a)-4:], w&^mask|h&mask)
	s, _ := netip.AddrFromSlice(a)
	return s
}

// l2Header is an Ethernet header (with the frame's VLAN tag, if it had one)
// for an IPv4 or IPv6 packet.
func (r *frameRun) l2Header(f *mflow, dst, src net.HardwareAddr, v4 bool) []byte {
	h := make([]byte, f.l2)
	copy(h[0:6], dst)
	copy(h[6:12], src)
	copy(h[12:f.l2], r.in[12:f.l2])
	et := uint16(0x86dd)
	if v4 {
		et = 0x0800
	}
	binary.BigEndian.PutUint16(h[f.l2-2:], et)
	return h
}

// icmpBack is the ICMP error that answers the client from the VIP, back out
// the way the frame came: "fragmentation needed" / "packet too big" with the
// MTU the client can use, or "time exceeded"; it quotes the packet's IP
// header and 8 bytes.
func (r *frameRun) icmpBack(f *mflow, tooBig bool, mtu uint32) []byte {
	out := r.l2Header(f, r.in[6:12], r.in[0:6], f.family == 4)
	// The quote: the IP header and 8 bytes, or the whole packet when it is
	// shorter (RFC 792, RFC 4443).
	hdr := 40
	if f.family == 4 {
		hdr = 20
	}
	quote := r.in[f.l2 : f.l2+min(f.l3len, hdr+8)]
	if f.family == 4 {
		ip := make([]byte, 20)
		ip[0], ip[1] = 0x45, 0xc0
		binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(quote)))
		ip[8], ip[9] = r.m.TTL, 1
		copy(ip[12:16], f.dst.AsSlice())
		copy(ip[16:20], f.src.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], ^modelSum(0, ip))
		ic := make([]byte, 8, 8+len(quote))
		if tooBig {
			ic[0], ic[1] = 3, 4
			binary.BigEndian.PutUint16(ic[6:], uint16(mtu))
		} else {
			ic[0] = 11
		}
		ic = append(ic, quote...)
		binary.BigEndian.PutUint16(ic[2:], ^modelSum(0, ic))
		return append(append(out, ip...), ic...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(8+len(quote)))
	ip[6], ip[7] = 58, r.m.TTL
	copy(ip[8:24], f.dst.AsSlice())
	copy(ip[24:40], f.src.AsSlice())
	ic := make([]byte, 8, 8+len(quote))
	if tooBig {
		ic[0] = 2
		binary.BigEndian.PutUint32(ic[4:], mtu)
	} else {
		ic[0] = 3
	}
	ic = append(ic, quote...)
	pseudo := make([]byte, 40)
	copy(pseudo, ip[8:40])
	binary.BigEndian.PutUint32(pseudo[32:], uint32(8+len(quote)))
	pseudo[39] = 58
	binary.BigEndian.PutUint16(ic[2:], ^modelSum(uint32(modelSum(0, pseudo)), ic))
	return append(append(out, ip...), ic...)
}
