package xdp

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// The model: the program's choice of a backend, written once in Go. It is
// what explain shows as the "why", what the benchmark checks its outputs
// against, and what TestBackendChoice holds the program to. The flow hash and
// the slot are FlowHash and Slot (hash.go), the only Go copy of that
// arithmetic.
//
// The model covers what decides, not what makes the program fast: the
// direct-mapped VIP index and the VIP prefilter only find the same service
// sooner, and the pin filter only skips lookups of flows that have no pin. A
// model and a program that disagree mean one of those shortcuts (or the
// program, or the model) is wrong.

// Packet is a packet of a flow as the model sees it: the flow's addresses as
// it arrives (client to VIP), whether it is a TCP SYN without ACK, and
// whether it is an ICMP error about the flow (forwarded to the flow's
// backend like the flow's packets, but never pinned).
type Packet struct {
	Src, Dst  netip.AddrPort
	Proto     Proto
	SYN       bool
	ICMPError bool
}

// ModelVIP is a service as the program sees it.
type ModelVIP struct {
	Key  VIPKey
	Mode Mode
	Seed uint32
	// Table is the current Maglev table (backend ids by slot); empty when
	// the service has none yet.
	Table []uint32
	// Prev is the table before the last change, consulted while
	// InTransition (the grace period runs).
	Prev         []uint32
	InTransition bool
	// HasPins says flows of the service may be pinned: the program looks
	// pins up only then.
	HasPins bool
}

// ModelState is the datapath's state as the model needs it.
type ModelState struct {
	VIPs     map[VIPKey]ModelVIP
	Backends map[uint32]Backend // the backend entries that exist
	// Pin returns the backend a flow is pinned to, if it is; nil: no flow
	// is. Datapath.ModelState's reads the flow tables, and a lookup that
	// fails reads as no pin (Explain then shows a disagreement).
	Pin func(src, dst netip.AddrPort, proto Proto) (id uint32, ok bool)
	// PinFails says no new pin can be made: the flow table is full (the
	// program's per-CPU backoff after a failure is not modelled).
	PinFails bool
	// NATFlow returns the backend of a flow's NAT entry (snat services),
	// if it has one; nil: no flow has. Datapath.ModelState's reads the NAT
	// table.
	NATFlow func(src, dst netip.AddrPort, proto Proto) (id uint32, ok bool)
}

// The rules of a Decision.
const (
	// RuleNotVIP: no service matches the packet (exact address, port and
	// protocol, then the address's port-0 service). The program passes it
	// to the host, or drops it (drop/no_service) when the address is a VIP's.
	RuleNotVIP = "not-vip"
	// RulePinned: the flow is pinned to a backend that is up; the pin
	// decides.
	RulePinned = "pinned"
	// RuleTable: the current table's backend for the flow's slot.
	RuleTable = "table"
	// RulePrevious: during a transition, a packet other than a SYN of a
	// flow whose slot moved goes to the previous table's backend while it
	// is up (and the flow is pinned there).
	RulePrevious = "previous"
	// RuleNoBackend: the chosen id names no backend entry (or the service
	// has no table): the program drops the packet (drop/no_backend).
	RuleNoBackend = "no-backend"
	// RuleNATFlow: a snat service's flow has a NAT entry whose backend is
	// up: the entry decides (a new flow's backend is the table's, RuleTable).
	RuleNATFlow = "nat-flow"
	// RuleNATNoFlow: a TCP packet other than a SYN to a snat service, of
	// no NAT flow: the program drops it (drop/snat_no_flow).
	RuleNATNoFlow = "nat-no-flow"
	// RuleNATBackendLost: a TCP packet other than a SYN of a NAT flow whose
	// backend is down or gone: the program removes the flow and answers
	// with a RST (tx/snat_rst; a RST itself is dropped, drop/no_backend).
	RuleNATBackendLost = "nat-backend-lost"
	// RuleNATICMP: an ICMP error about a snat service's flow that arrives
	// at the VIP (the client's side): the program drops it (drop/icmp).
	RuleNATICMP = "nat-icmp"
)

// Decision is the model's decision for a packet.
type Decision struct {
	// VIP is the service that matched, when IsVIP.
	VIP   VIPKey
	IsVIP bool
	// Hash is the flow hash, Slot its slot in the current table of
	// TableSize slots.
	Hash, Slot uint32
	TableSize  int
	// Rule says why the packet goes where it goes (RuleNotVIP, ...).
	Rule string
	// BackendID is the backend the packet is sent to; for RuleNoBackend,
	// the id that names no usable backend (0: none).
	BackendID uint32
	// PrevBackendID is the previous table's backend for the flow's slot
	// while the service is in transition (0 otherwise).
	PrevBackendID uint32
	// Transition: the service is in transition and the flow's slot moved
	// (PrevBackendID is not the current table's backend): the transition
	// rule applied.
	Transition bool
	// StalePinID is the backend of a pin that was not followed because
	// that backend is down or gone (0: none).
	StalePinID uint32
	// DropsPin: the packet, a SYN, removes the stale pin it met (a new
	// connection of the same addresses and ports); a pin it makes is then
	// a new one ("create").
	DropsPin bool
	// Pin is the pin the program writes for the packet: "" (none),
	// "create" (a new pin, which fails if one exists) or "replace" (over a
	// stale pin). ICMP errors never pin.
	Pin string
}

// Forwarded reports whether the decision sends the packet to a backend.
func (d Decision) Forwarded() bool {
	return d.Rule == RulePinned || d.Rule == RuleTable || d.Rule == RulePrevious
}

// LookupVIP finds the service of a packet to dst as the program does: the
// exact key, then the port-0 service of the address.
func (s *ModelState) LookupVIP(dst netip.AddrPort, proto Proto) (ModelVIP, bool) {
	k := VIPKey{Addr: dst.Addr().Unmap(), Port: dst.Port(), Proto: proto}
	if v, ok := s.VIPs[k]; ok {
		return v, true
	}
	k.Port = 0
	v, ok := s.VIPs[k]
	return v, ok
}

// up is backend_lookup + backend_up of the program: the entry exists and is
// up.
func (s *ModelState) up(id uint32) bool {
	b, ok := s.Backends[id]
	return ok && b.Up
}

// slotOf is table_lookup of the program: a table without slots names no
// backend.
func slotOf(table []uint32, hash uint32) uint32 {
	if len(table) == 0 {
		return 0
	}
	return table[Slot(hash, len(table))]
}

// Decide is what the program decides for p: the service lookup of
// process_l4, then choose_backend of bpf/lb.h.
func (s *ModelState) Decide(p Packet) Decision {
	var d Decision
	v, ok := s.LookupVIP(p.Dst, p.Proto)
	if !ok {
		d.Rule = RuleNotVIP
		return d
	}
	d.VIP, d.IsVIP = v.Key, true
	d.Hash = FlowHash(p.Src, p.Dst, p.Proto, v.Seed)
	d.TableSize = len(v.Table)
	if len(v.Table) > 0 {
		d.Slot = Slot(d.Hash, len(v.Table))
	}
	if v.Mode == ModeSNAT {
		return s.decideNAT(p, v, d)
	}

	// A pin to a backend that is up decides; one to a backend down or
	// gone is passed over, and a new pin replaces it, or, for a SYN, it is
	// removed first.
	stale := false
	if v.HasPins && s.Pin != nil {
		if id, ok := s.Pin(p.Src, p.Dst, p.Proto); ok {
			if s.up(id) {
				d.Rule, d.BackendID = RulePinned, id
				return d
			}
			d.StalePinID = id
			if p.SYN {
				d.DropsPin = true
			} else {
				stale = true
			}
		}
	}
	pin := func() {
		if p.ICMPError {
			return
		}
		d.Pin = "create"
		if stale {
			d.Pin = "replace"
		}
	}

	cur := slotOf(v.Table, d.Hash)
	d.BackendID = cur
	if v.InTransition {
		prev := slotOf(v.Prev, d.Hash)
		d.PrevBackendID = prev
		if prev != 0 && prev != cur {
			// The slot moved: a SYN starts on the current table, any
			// other packet stays on the previous backend while it is up;
			// either way the flow is pinned.
			d.Transition = true
			if !p.SYN && s.up(prev) {
				d.Rule, d.BackendID = RulePrevious, prev
				pin()
				return d
			}
			pin()
			// A SYN whose pin cannot be made goes where its flow's next
			// packets, finding no pin, will go: the previous backend while
			// it is up. The handshake is never split.
			if p.SYN && !p.ICMPError && s.PinFails && s.up(prev) {
				d.Rule, d.BackendID = RulePrevious, prev
				return d
			}
		}
	}
	if _, ok := s.Backends[d.BackendID]; !ok || d.BackendID == 0 {
		d.Rule = RuleNoBackend
		return d
	}
	d.Rule = RuleTable
	return d
}

// decideNAT is Decide for a snat service: the flow's NAT entry while its
// backend is up, else a new flow on the table's backend (a TCP SYN or a UDP
// datagram), else a drop or a RST. SNAT writes no pin and knows no
// transition.
func (s *ModelState) decideNAT(p Packet, v ModelVIP, d Decision) Decision {
	if p.ICMPError {
		d.Rule = RuleNATICMP
		return d
	}
	tcpNotSYN := p.Proto == TCP && !p.SYN
	if s.NATFlow != nil {
		if id, ok := s.NATFlow(p.Src, p.Dst, p.Proto); ok {
			if s.up(id) {
				d.Rule, d.BackendID = RuleNATFlow, id
				return d
			}
			if tcpNotSYN {
				d.Rule = RuleNATBackendLost
				return d
			}
		}
	}
	if tcpNotSYN {
		d.Rule = RuleNATNoFlow
		return d
	}
	d.BackendID = slotOf(v.Table, d.Hash)
	if !s.up(d.BackendID) {
		d.Rule = RuleNoBackend
		return d
	}
	d.Rule = RuleTable
	return d
}

// ModelState takes a snapshot of the datapath's maps for the model: every
// service (from the vips map, with its tables read from maglev_tables),
// every backend entry, and a pin lookup in the live flow tables. It works as
// well on maps an earlier process pinned.
func (d *Datapath) ModelState() (*ModelState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &ModelState{VIPs: map[VIPKey]ModelVIP{}, Backends: map[uint32]Backend{}}
	now := uint64(d.nowMono())
	var (
		k  lbVipKey
		m  lbVipMeta
		it = d.objs.Vips.Iterate()
	)
	for it.Next(&k, &m) {
		key := vipKeyFrom(k)
		v := ModelVIP{
			Key: key, Mode: Mode(m.Mode), Seed: m.HashSeed,
			InTransition: m.TransitionEnd != 0 && now < m.TransitionEnd,
			HasPins:      m.Flags&uint8(lbXdplbVipFlagsVIP_F_HAS_PINS) != 0,
		}
		var err error
		if v.Table, err = d.readTable(m.TableIdx, m.TableHalf, m.TableSize); err != nil {
			return nil, fmt.Errorf("reading the table of %s: %w", key, err)
		}
		if v.InTransition {
			if v.Prev, err = d.readTable(m.PrevIdx, m.PrevHalf, m.PrevSize); err != nil {
				return nil, fmt.Errorf("reading the previous table of %s: %w", key, err)
			}
		}
		s.VIPs[key] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading VIPs: %w", err)
	}
	// The backend entries as written (the process is their only writer,
	// and Open read them back from the map): walking the array would cost
	// two syscalls per possible id, 65536 of them, with d.mu held.
	for id, st := range d.backends {
		if st.entry.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_VALID) != 0 {
			s.Backends[id] = backendFrom(st.entry)
		}
	}
	s.Pin = func(src, dst netip.AddrPort, proto Proto) (uint32, bool) {
		id, ok, err := d.LookupFlow(src, dst, proto)
		return id, ok && err == nil
	}
	s.NATFlow = func(src, dst netip.AddrPort, proto Proto) (uint32, bool) {
		f, ok := natFlow(d, src, dst, proto)
		return f.BackendID, ok
	}
	return s, nil
}

// readTable reads half of the inner map at idx of maglev_tables, of size
// slots (the program's view: a size of 0 is no table). d.mu is held.
func (d *Datapath) readTable(idx, half, size uint32) ([]uint32, error) {
	if size == 0 {
		return nil, nil
	}
	for _, st := range d.vips {
		for _, t := range []*innerTable{st.table, st.old} {
			if t != nil && t.idx == idx && t.size == size {
				return t.read(half), nil
			}
		}
	}
	// Not one this process has mapped: open it.
	var mid ebpf.MapID
	if err := d.objs.MaglevTables.Lookup(idx, &mid); err != nil {
		return nil, fmt.Errorf("table %d: %w", idx, err)
	}
	m, err := ebpf.NewMapFromID(mid)
	if err != nil {
		return nil, fmt.Errorf("table %d: %w", idx, err)
	}
	t, err := mapTable(m)
	if err != nil {
		return nil, fmt.Errorf("table %d: %w", idx, err)
	}
	defer t.close()
	if t.size != size {
		return nil, fmt.Errorf("table %d has %d slots, the VIP says %d", idx, t.size, size)
	}
	return t.read(half), nil
}
