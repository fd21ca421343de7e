package xdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// The SNAT cases of the datapath benchmark. They run on datapaths of their
// own (the suite's configuration plus SNAT services and sources), so that
// the NAT state they make touches no other case.

const (
	benchNATVIPs       = 16      // snat_new_flow walks 65536 source ports to each
	benchNATFlows      = 1 << 20 // snat_new_flow's flows; the SNAT datapath holds 1/8 more
	benchNATFloodFlows = 1 << 16 // MaxNATFlows of the flood datapath, which is filled
	benchNATSources    = 8
	benchNATPortLo     = 1024
	benchNATPortHi     = 65535
)

// Addresses of the SNAT cases: VIP i is 198.18.3.i:80 (the frames of
// snat_new_flow reach VIP i by a carry out of the source port); sources
// 198.18.254.1-8.
var (
	benchNATVIPBase = netip.MustParseAddr("198.18.3.0")
	benchNATClient  = netip.MustParseAddr("198.19.2.1")
	benchNATSrcBase = netip.MustParseAddr("198.18.254.1")
)

func (s *BenchSuite) natSources() []netip.Addr {
	var out []netip.Addr
	for i := range benchNATSources {
		out = append(out, benchAddr(benchNATSrcBase, uint32(i)))
	}
	return out
}

// natSeed is the hash seed of SNAT VIP i.
func natSeed(i int) uint32 {
	seed := uint32(1000 + i)
	return seed * 0x9E3779B1
}

func (s *BenchSuite) natVIP(i int) VIPKey {
	return VIPKey{Addr: benchAddr(benchNATVIPBase, uint32(i)), Port: benchPort, Proto: TCP}
}

// openNAT loads a datapath with the suite's configuration, the SNAT VIPs
// (over the backends and table of VIP benchVIPEstablished) and the SNAT
// sources.
func (s *BenchSuite) openNAT(maxFlows int) (*Datapath, error) {
	d, err := Open(Options{PinPath: NoPin, MaxVIPs: 256, MaxBackends: 1 << 14, MaxFlows: 1 << 10, MaxNATFlows: maxFlows, TransitionGrace: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	err = s.configure(d)
	est := s.vips[benchVIPEstablished]
	for i := range benchNATVIPs {
		if err == nil {
			err = d.UpsertVIP(s.natVIP(i), VIP{Mode: ModeSNAT, HashSeed: natSeed(i)})
		}
		if err == nil {
			err = d.SetTable(s.natVIP(i), est.table)
		}
	}
	if err == nil {
		err = d.SetNAT(NATConfig{Sources: s.natSources(), PortLo: benchNATPortLo, PortHi: benchNATPortHi})
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("bench: configuring the SNAT datapath: %w", err)
	}
	return d, nil
}

func (s *BenchSuite) natDP() (*Datapath, error) {
	if s.nat == nil {
		d, err := s.openNAT(benchNATFlows + benchNATFlows/8)
		if err != nil {
			return nil, err
		}
		s.nat = d
	}
	return s.nat, nil
}

// natFloodDP is a SNAT datapath whose NAT table is full: benchNATFloodFlows
// flows from benchNATClient's source ports to SNAT VIP 0 (all but the few
// whose buckets were full), and placeholders in every entry left (fillNAT).
// It returns a flow of the fill, which must go on during the flood.
func (s *BenchSuite) natFloodDP() (*Datapath, netip.AddrPort, error) {
	if s.natFlood != nil {
		return s.natFlood, s.natFloodFlow, nil
	}
	d, err := s.openNAT(benchNATFloodFlows)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	fill := BenchFrame{Data: benchTCPFrame(netip.AddrPortFrom(benchNATClient, 0), netip.AddrPortFrom(s.natVIP(0).Addr, benchPort), true),
		VaryOffset: benchOffDaddr + 2, VaryCount: benchNATFloodFlows}
	before, err := benchCounters(d)
	if err == nil {
		_, _, _, err = d.BenchRun(fill, benchNATFloodFlows)
	}
	var after map[string]uint64
	if err == nil {
		after, err = benchCounters(d)
	}
	var flow netip.AddrPort
	if err == nil {
		// At half the tables' room, a few keys find their buckets full
		// (as pins do: docs/architecture.md).
		if n := after["event/snat_flow_created"] - before["event/snat_flow_created"]; n < benchNATFloodFlows-benchNATFloodFlows/1000 {
			err = fmt.Errorf("filling the NAT table: %d flows made, want %d (at least %d)", n, benchNATFloodFlows, benchNATFloodFlows-benchNATFloodFlows/1000)
		}
		for p := uint16(0); err == nil && !flow.IsValid(); p++ {
			c := netip.AddrPortFrom(benchNATClient, p)
			if _, ok := natFlow(d, c, netip.AddrPortFrom(s.natVIP(0).Addr, benchPort), TCP); ok {
				flow = c
			}
		}
		fillNAT(d)
	}
	if err != nil {
		d.Close()
		return nil, netip.AddrPort{}, err
	}
	s.natFlood, s.natFloodFlow = d, flow
	return d, flow, nil
}

// natFlow reads the NAT flow of client -> vip from d.
func natFlow(d *Datapath, client, vip netip.AddrPort, proto Proto) (NATFlow, bool) {
	e, _, ok := d.natFind(client, vip, proto, false)
	if !ok {
		return NATFlow{}, false
	}
	return NATFlow{Client: client, VIP: vip, Proto: proto, BackendID: e.backendID, Source: e.toSrc, Backend: e.toDst}, true
}

// clearNAT removes every NAT entry of d (no program runs on its tables).
func clearNAT(d *Datapath) error {
	for _, t := range []*flowTable{d.nat4, d.nat6} {
		clear(t.mem)
	}
	return nil
}

// fillNAT takes every empty entry of d's nat4 table with a placeholder, a
// live entry of protocol 0 that no packet's key matches: the table is then
// full for every new flow, as no number of real flows makes it (a key's
// insert fails when its window of buckets is full, while other windows may
// have room). It returns the placeholders written.
func fillNAT(d *Datapath) int {
	t, n := d.nat4, 0
	for b := uint32(0); b <= t.mask; b++ {
		for w := 0; w < t.g.ways; w++ {
			p := t.state(b, w)
			v := atomic.LoadUint64(p)
			if uint32(v)&ftStateMask != ftEmpty {
				continue
			}
			// Key word 0 (in the same 8 bytes): the bucket, so that no two
			// placeholders are alike.
			atomic.StoreUint64(p, uint64(b)<<32|uint64(uint32(v)&ftGenMask+ftGenOne|ftLive))
			n++
		}
	}
	return n
}

// natTranslated is the IPv4 TCP frame pkt with its addresses and ports
// replaced by src and dst, its checksums updated incrementally (RFC 1624),
// as the program does: a varied bench frame carries stale checksums, which
// a translation keeps stale by as much. Its MACs are dmac and smac.
func natTranslated(pkt []byte, src, dst netip.AddrPort, dmac, smac net.HardwareAddr) []byte {
	out := withMACs(pkt, dmac, smac)
	ip, tcp := out[14:34], out[34:]
	var old, new [12]byte
	copy(old[:8], ip[12:20])
	copy(old[8:], tcp[0:4])
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(new[0:4], s4[:])
	copy(new[4:8], d4[:])
	binary.BigEndian.PutUint16(new[8:], src.Port())
	binary.BigEndian.PutUint16(new[10:], dst.Port())
	adjust := func(check []byte, old, new []byte) {
		sum := uint32(^binary.BigEndian.Uint16(check))
		for i := 0; i < len(old); i += 2 {
			sum += uint32(^binary.BigEndian.Uint16(old[i:])) + uint32(binary.BigEndian.Uint16(new[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(check, ^uint16(sum))
	}
	adjust(ip[10:12], old[:8], new[:8])
	adjust(tcp[16:18], old[:], new[:])
	copy(ip[12:20], new[:8])
	copy(tcp[0:4], new[8:])
	return out
}

func withMACs(frame []byte, dst, src net.HardwareAddr) []byte {
	out := slices.Clone(frame)
	copy(out[0:6], dst)
	copy(out[6:12], src)
	return out
}

// natForwardOut is what the program must send for a client's packet pkt of
// a NAT flow d holds: the packet from the flow's source to its backend.
func (s *BenchSuite) natForwardOut(d *Datapath, pkt []byte) ([]byte, error) {
	src, dst, proto, _ := benchParse(pkt)
	f, ok := natFlow(d, src, dst, proto)
	if !ok {
		return nil, fmt.Errorf("no NAT flow %s -> %s", src, dst)
	}
	k := VIPKey{dst.Addr(), dst.Port(), proto}
	var seed uint32
	for i := range benchNATVIPs {
		if s.natVIP(i) == k {
			seed = natSeed(i)
		}
	}
	h := FlowHash(src, dst, proto, seed)
	picked := false
	for i := range NATPortTries {
		a, p := NATPick(h, i, s.natSources(), benchNATPortLo, benchNATPortHi)
		picked = picked || f.Source == netip.AddrPortFrom(a, p)
	}
	if !picked {
		return nil, fmt.Errorf("NAT flow %s -> %s has source %s, which none of its %d attempts picks", src, dst, f.Source, NATPortTries)
	}
	b := s.backends[f.BackendID]
	return natTranslated(pkt, f.Source, f.Backend, b.NextHopMAC, b.SrcMAC), nil
}

func (s *BenchSuite) natCases() []*BenchCase {
	client := netip.AddrPortFrom(benchNATClient, benchSrcPort)
	vip0 := netip.AddrPortFrom(s.natVIP(0).Addr, benchPort)
	synFrame := benchTCPFrame(client, vip0, true)
	// ensure makes the one flow of snat_established and snat_reply (again,
	// after snat_new_flow emptied the table).
	ensure := func() (*Datapath, error) {
		d, err := s.natDP()
		if err != nil {
			return nil, err
		}
		if _, ok := natFlow(d, client, vip0, TCP); ok {
			return d, nil
		}
		if _, v, _, err := d.BenchRun(BenchFrame{Data: synFrame}, 1); err != nil || v != XDPTx {
			return nil, fmt.Errorf("making the NAT flow: verdict %d, %v", v, err)
		}
		return d, nil
	}
	established := &BenchCase{
		Name:   "snat_established",
		About:  "TCP ACK of one NAT flow to a SNAT VIP: service lookup, NAT lookup, addresses, ports and checksums rewritten, XDP_TX to the backend",
		Budget: 70 * time.Nanosecond,
		dp:     ensure, frame: BenchFrame{Data: benchTCPFrame(client, vip0, false)},
		verdict:  XDPTx,
		counters: map[string]uint64{"tx/snat": 1, "event/snat_flow_created": 0},
	}
	established.expect = func(pkt []byte) ([]byte, error) { return s.natForwardOut(s.nat, pkt) }
	// The reply frame needs the flow's source: made when the case is.
	reply := &BenchCase{
		Name:     "snat_reply",
		About:    "the backend's TCP ACK to the SNAT source of that flow: SNAT source check, NAT lookup, rewrite back, XDP_TX to the client's neighbour",
		Budget:   70 * time.Nanosecond,
		dp:       ensure,
		verdict:  XDPTx,
		counters: map[string]uint64{"tx/snat_reply": 1},
	}
	reply.expect = func(pkt []byte) ([]byte, error) {
		return natTranslated(pkt, vip0, client, benchClientMAC, benchLBMAC), nil
	}
	// In an empty table the flow takes its first pick; its backend is the
	// table's.
	h := FlowHash(client, vip0, TCP, natSeed(0))
	src, srcPort := NATPick(h, 0, s.natSources(), benchNATPortLo, benchNATPortHi)
	est := s.vips[benchVIPEstablished]
	be := s.backends[est.table[Slot(h, len(est.table))]]
	reply.frame = BenchFrame{Data: benchTCPFrame(netip.AddrPortFrom(be.Addr, benchPort), netip.AddrPortFrom(src, srcPort), false)}
	newFlow := &BenchCase{
		Name: "snat_new_flow",
		About: fmt.Sprintf("TCP SYNs of %d new flows (65536 source ports to each of %d SNAT VIPs), each a new NAT flow: "+
			"port allocation (claim of the reply key with BPF_NOEXIST) and both entries inserted; the table is emptied before each run", benchNATFlows, benchNATVIPs),
		Budget: 200 * time.Nanosecond,
		dp:     s.natDP,
		reset:  clearNAT,
		frame: BenchFrame{Data: benchTCPFrame(netip.AddrPortFrom(benchNATClient, 0), vip0, true),
			VaryOffset: benchOffDaddr + 2, VaryCount: benchNATFlows},
		verdict:  XDPTx,
		counters: map[string]uint64{"tx/snat": 1, "event/snat_flow_created": 1, "event/tcp_syn": 1},
	}
	newFlow.expect = func(pkt []byte) ([]byte, error) { return s.natForwardOut(s.nat, pkt) }
	// The flood: SYNs from every source of 198.18.0.0/15 to SNAT VIP 1 of
	// the full datapath. Between runs, a flow of the fill is checked to
	// translate still.
	flood := &BenchCase{
		Name: "snat_flood",
		About: fmt.Sprintf("TCP SYNs from 131072 sources to a SNAT VIP, NAT table full (%d flows): every packet a new flow that fails, dropped "+
			"and counted; an established flow of the table is checked to translate between runs", benchNATFloodFlows),
		Budget: 200 * time.Nanosecond,
		dp: func() (*Datapath, error) {
			d, fillFlow, err := s.natFloodDP()
			if err != nil {
				return nil, err
			}
			ack := benchTCPFrame(fillFlow, vip0, false)
			_, v, out, err := d.BenchRun(BenchFrame{Data: ack}, 1)
			if err != nil {
				return nil, err
			}
			want, err := s.natForwardOut(d, ack)
			if err != nil {
				return nil, err
			}
			if v != XDPTx || !bytes.Equal(out, want) {
				return nil, fmt.Errorf("an established NAT flow of the full table: verdict %d, output\n got %x\nwant %x", v, out, want)
			}
			return d, nil
		},
		frame: BenchFrame{Data: benchTCPFrame(netip.AddrPortFrom(benchFloodBase, benchSrcPort), netip.AddrPortFrom(s.natVIP(1).Addr, benchPort), true),
			VaryOffset: benchOffSaddr, VaryCount: benchFloodSrcs},
		verdict:  XDPDrop,
		expect:   func(pkt []byte) ([]byte, error) { return slices.Clone(pkt), nil },
		counters: map[string]uint64{"drop/snat_table_full": 1, "tx/snat": 0, "event/snat_flow_created": 0},
	}
	cs := []*BenchCase{established, reply, newFlow, flood}
	for _, c := range cs {
		c.suite = s
	}
	return cs
}
