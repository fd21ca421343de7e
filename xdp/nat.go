package xdp

import (
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// SNAT in user space: the sources and ports the program allocates from
// (SetNAT), the NAT flows it made (NATFlows), and their expiry
// (MaintainNAT). All access to NAT state goes through this file and
// bpf/nat.h.

// NATMaxSources is the number of SNAT sources of each family.
const NATMaxSources = 8

// NATConfig is what the program allocates new NAT flows' sources from.
type NATConfig struct {
	// Sources are the SNAT addresses, at most NATMaxSources of each family.
	// A flow takes one of its family's, chosen by its flow hash.
	Sources []netip.Addr
	// PortLo and PortHi bound the ports the appliance owns (inclusive).
	PortLo, PortHi uint16
}

// NATPick is the source and port the program tries for a new flow of hash
// h (FlowHash of the client's packet with the service's seed) at attempt i
// (0..NATPortTries-1) among sources (of the flow's family, in the order
// SetNAT was given them). It mirrors nat_pick of bpf/nat.h: the hash is
// mixed first, because its high bits chose the flow's Maglev slot and so
// are shared by the flows of one backend.
func NATPick(h uint32, i int, sources []netip.Addr, lo, hi uint16) (netip.Addr, uint16) {
	x := h
	x ^= x >> 16
	x *= 0x85EBCA6B
	x ^= x >> 13
	x *= 0xC2B2AE35
	x ^= x >> 16
	n := uint32(len(sources))
	s := (x + uint32(i)) % n
	rng := uint64(hi) - uint64(lo) + 1
	p := uint64(lo) + (uint64(x+uint32(i)*0x9E3779B1)*rng)>>32
	return sources[s&(NATMaxSources-1)], uint16(p)
}

// NATPortTries is how many (source, port) pairs a new flow tries.
const NATPortTries = 8

// SetNAT replaces the SNAT sources and port range. Packets to the sources
// are then looked at by the program (their replies translated back; others
// passed to the host). Flows already made keep their source and port.
func (d *Datapath) SetNAT(c NATConfig) error {
	var v lbNatConfig
	if len(c.Sources) > 0 && (c.PortLo == 0 || c.PortHi < c.PortLo) {
		return fmt.Errorf("SNAT port range %d-%d: want 1-65535, low to high", c.PortLo, c.PortHi)
	}
	v.PortLo, v.PortHi = c.PortLo, c.PortHi
	seen := map[netip.Addr]bool{}
	for _, a := range c.Sources {
		a = a.Unmap()
		if !a.IsValid() || seen[a] {
			return fmt.Errorf("SNAT source %s: invalid or given twice", a)
		}
		seen[a] = true
		if a.Is4() {
			if v.N4 == NATMaxSources {
				return fmt.Errorf("SNAT source %s: at most %d IPv4 sources", a, NATMaxSources)
			}
			b := a.As4()
			v.Src4[v.N4] = leUint32(b[:])
			v.N4++
		} else {
			if v.N6 == NATMaxSources {
				return fmt.Errorf("SNAT source %s: at most %d IPv6 sources", a, NATMaxSources)
			}
			b := a.As16()
			for w := range 4 {
				v.Src6[v.N6][w] = leUint32(b[4*w:])
			}
			v.N6++
		}
		v.Filter |= 1 << (FilterBit(a) & 63)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v.FilterHalf = d.natConfig.FilterHalf // MaintainNAT's
	old := natSources(d.natConfig)
	// The new sources' prefilter bits before the config that names them,
	// the old ones' cleared after: a reply never meets a config whose
	// source its filter bit hides.
	for _, a := range natSources(v) {
		if err := d.setFilterBit(a, true); err != nil {
			return fmt.Errorf("setting SNAT source %s: %w", a, err)
		}
	}
	// Likewise the VIPs at a new source carry VIP_F_SNAT_SOURCE before
	// the config names it, and those at an old one lose it after.
	if err := d.setSNATAddrs(append(natSources(v), old...)); err != nil {
		return fmt.Errorf("flagging the VIPs at SNAT sources: %w", err)
	}
	if err := d.objs.NatConfigMap.Put(uint32(0), &v); err != nil {
		for _, a := range natSources(v) {
			_ = d.setFilterBit(a, false)
		}
		_ = d.setSNATAddrs(old)
		return fmt.Errorf("writing the SNAT config: %w", err)
	}
	for _, a := range old {
		if err := d.setFilterBit(a, false); err != nil {
			return fmt.Errorf("clearing SNAT source %s: %w", a, err)
		}
	}
	d.natConfig = v
	if err := d.setSNATAddrs(natSources(v)); err != nil {
		return fmt.Errorf("flagging the VIPs at SNAT sources: %w", err)
	}
	return nil
}

// NAT returns the SNAT config in use.
func (d *Datapath) NAT() NATConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	return NATConfig{Sources: natSources(d.natConfig), PortLo: d.natConfig.PortLo, PortHi: d.natConfig.PortHi}
}

func natSources(v lbNatConfig) []netip.Addr {
	var out []netip.Addr
	for i := range min(int(v.N4), NATMaxSources) {
		var b [4]byte
		putLE32(b[:], v.Src4[i])
		out = append(out, netip.AddrFrom4(b))
	}
	for i := range min(int(v.N6), NATMaxSources) {
		var b [16]byte
		for w := range 4 {
			putLE32(b[4*w:], v.Src6[i][w])
		}
		out = append(out, netip.AddrFrom16(b))
	}
	return out
}

// recoverNAT reads the SNAT config a previous instance left and counts its
// sources in the prefilter (called by recover, with the filter being built).
func (d *Datapath) recoverNAT() error {
	if err := d.objs.NatConfigMap.Lookup(uint32(0), &d.natConfig); err != nil {
		return fmt.Errorf("reading the SNAT config: %w", err)
	}
	for _, a := range natSources(d.natConfig) {
		d.filter[FilterBit(a)]++
	}
	return nil
}

// NAT flow states, as NATFlow.State names them.
const (
	NATStateSYNSent     = "syn_sent"    // TCP, no answer from the client after the SYN yet (half-open)
	NATStateEstablished = "established" // TCP, both sides seen after the handshake
	NATStateClosing     = "closing"     // TCP, a FIN seen
	NATStateReset       = "reset"       // TCP, a RST seen
	NATStateUDP         = "udp"
)

// NATFlow is a translated flow: the client's packets to VIP leave from
// Source to Backend; the backend's replies to Source leave from VIP to the
// client.
type NATFlow struct {
	Client, VIP, Source, Backend netip.AddrPort
	Proto                        Proto
	BackendID                    uint32
	State                        string
	// Age is how long ago the flow was made (to within a second), Idle how
	// long ago a packet of either direction was last seen (to within the
	// program's touch interval, NAT_TOUCH_NS: a second).
	Age, Idle time.Duration

	fwd, rev natRef
	hasRev   bool
}

// NAT flows in the flow tables nat4 and nat6 (struct nat4, nat6 in
// bpf/structs.h): an entry per direction, whose key is the packet's tuple
// as it arrives (addresses, then the ports as one word), whose tag is the
// protocol (plus natTagReply in a reply entry) and whose value is what the
// packet becomes: its addresses, its ports as one word, the backend id, the
// state bits, the seen stamp, then a word that is the creation stamp
// (forward) or the client side's interface (reply), then the client side's
// MACs (reply). nat6's value is struct nat_val; nat4's holds its words 0,
// 4 and 8-15.
var (
	nat4Geom = ftGeom{kw: 3, vw: 10, stride: 14, ways: 2, bucket: 128}
	nat6Geom = ftGeom{kw: 9, vw: 16, stride: 30, ways: 2, bucket: 256}
)

const (
	natHashSeed     = 0x27d4eb2f // NAT_HASH_SEED
	natTagReply     = 0x80       // NAT_TAG_REPLY
	natCreatedShift = 30         // NAT_CREATED_SHIFT
)

// natEntry is one direction of a NAT flow.
type natEntry struct {
	reply        bool
	proto        Proto
	src, dst     netip.AddrPort // the packet as it arrives
	toSrc, toDst netip.AddrPort // what it becomes
	backendID    uint32
	bits         uint32 // enum xdplb_nat_state
	seen         uint32 // ticks (ftTickShift)
	aux          uint32 // forward: creation stamp (natCreatedShift); reply: interface index
	macs         [3]uint32
}

// natRef is where an entry was found: its table and place.
type natRef struct {
	t   *flowTable
	ref ftRef
}

func (d *Datapath) natTable(v6 bool) *flowTable {
	if v6 {
		return d.nat6
	}
	return d.nat4
}

func addrWords(a netip.Addr) []uint32 {
	if a.Is4() {
		b := a.As4()
		return []uint32{leUint32(b[:])}
	}
	b := a.As16()
	return []uint32{leUint32(b[0:]), leUint32(b[4:]), leUint32(b[8:]), leUint32(b[12:])}
}

func wordsAddr(w []uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		putLE32(b[4*i:], x)
	}
	if len(w) == 1 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func portsWord(src, dst uint16) uint32 { return uint32(port(src)) | uint32(port(dst))<<16 }

// natKey is the key, tag and hash in its table of the entry of a packet
// from src to dst in direction reply, as nat_fill_key and nat_hash make them.
func natKey(src, dst netip.AddrPort, proto Proto, reply bool) (key []uint32, tag, hash uint32) {
	key = append(addrWords(src.Addr()), addrWords(dst.Addr())...)
	key = append(key, portsWord(src.Port(), dst.Port()))
	tag, seed := uint32(proto), uint32(natHashSeed)
	if reply {
		tag |= natTagReply
		seed++
	}
	return key, tag, FlowHash(src, dst, proto, seed)
}

// value is e's value words in its table.
func (e natEntry) value() []uint32 {
	w := append(addrWords(e.toSrc.Addr()), addrWords(e.toDst.Addr())...)
	w = append(w, portsWord(e.toSrc.Port(), e.toDst.Port()), e.backendID, e.bits, e.seen, e.aux)
	return append(w, e.macs[:]...)
}

// natFrom is the entry of a table's tag and words (key, value).
func natFrom(v6 bool, tag uint32, w []uint32) natEntry {
	n := 1
	if v6 {
		n = 4
	}
	ap := func(a []uint32, p uint32) (netip.AddrPort, netip.AddrPort) {
		return netip.AddrPortFrom(wordsAddr(a[:n]), port(uint16(p))), netip.AddrPortFrom(wordsAddr(a[n:2*n]), port(uint16(p>>16)))
	}
	e := natEntry{reply: tag&natTagReply != 0, proto: Proto(tag &^ natTagReply)}
	e.src, e.dst = ap(w, w[2*n])
	v := w[2*n+1:]
	e.toSrc, e.toDst = ap(v, v[2*n])
	e.backendID, e.bits, e.seen, e.aux = v[2*n+1], v[2*n+2], v[2*n+3], v[2*n+4]
	copy(e.macs[:], v[2*n+5:])
	return e
}

// natFind looks the entry of a packet from src to dst up.
func (d *Datapath) natFind(src, dst netip.AddrPort, proto Proto, reply bool) (natEntry, natRef, bool) {
	t := d.natTable(!src.Addr().Is4())
	key, tag, hash := natKey(src, dst, proto, reply)
	r, ok := t.find(hash, key, tag)
	if !ok {
		return natEntry{}, natRef{}, false
	}
	val := make([]uint32, t.g.vw)
	if !t.value(r, val) {
		return natEntry{}, natRef{}, false
	}
	return natFrom(t.g.kw == 9, tag, append(key, val...)), natRef{t, r}, true
}

// natPut inserts e (which must not be there) into its table, and a forward
// entry's bit into the NAT filter after it, as the program does.
func (d *Datapath) natPut(e natEntry) error {
	t := d.natTable(!e.src.Addr().Is4())
	key, tag, hash := natKey(e.src, e.dst, e.proto, e.reply)
	if err := t.insert(hash, key, tag, e.value(), false); err != nil {
		return err
	}
	if !e.reply {
		d.natFilter.mark(hash)
	}
	return nil
}

// delete removes the entry r names if it is unchanged since it was found.
func (r natRef) delete() bool { return r.t != nil && r.t.delete(r.ref) }

// natEntries calls fn with every entry of both tables and where it is.
func (d *Datapath) natEntries(fn func(natEntry, natRef)) {
	for _, t := range []*flowTable{d.nat4, d.nat6} {
		t.walk(func(r ftRef, tag uint32, w []uint32) bool {
			e := natFrom(t.g.kw == 9, tag, w)
			_, _, hash := natKey(e.src, e.dst, e.proto, e.reply)
			r.home = hash & t.mask
			fn(e, natRef{t, r})
			return true
		})
	}
}

func natState(proto Proto, fwd, rev uint32) string {
	if proto != TCP {
		return NATStateUDP
	}
	both := fwd | rev
	switch {
	case both&uint32(lbXdplbNatStateNAT_S_RST) != 0:
		return NATStateReset
	case both&uint32(lbXdplbNatStateNAT_S_FIN) != 0:
		return NATStateClosing
	case fwd&uint32(lbXdplbNatStateNAT_S_SEEN) != 0 && rev&uint32(lbXdplbNatStateNAT_S_SEEN) != 0:
		return NATStateEstablished
	}
	return NATStateSYNSent
}

// NATFlows calls fn for every NAT flow until fn returns false.
func (d *Datapath) NATFlows(fn func(NATFlow) bool) error {
	flows, _ := d.natWalk()
	for _, f := range flows {
		if !fn(f) {
			return nil
		}
	}
	return nil
}

// natWalk reads every NAT flow, and the reply entries of no flow.
func (d *Datapath) natWalk() ([]NATFlow, []natRef) {
	now := d.nowMono()
	type rkey struct {
		src, dst netip.AddrPort
		proto    Proto
	}
	type found struct {
		e natEntry
		r natRef
	}
	var fwd []found
	rev := map[rkey]found{}
	d.natEntries(func(e natEntry, r natRef) {
		if e.reply {
			rev[rkey{e.src, e.dst, e.proto}] = found{e, r}
		} else {
			fwd = append(fwd, found{e, r})
		}
	})
	var flows []NATFlow
	for _, f := range fwd {
		e := f.e
		rk := rkey{e.toDst, e.toSrc, e.proto}
		r, ok := rev[rk]
		delete(rev, rk)
		idle := idleSince(now, e.seen)
		if ok {
			idle = min(idle, idleSince(now, r.e.seen))
		}
		created := time.Duration(uint64(e.aux) << natCreatedShift)
		flows = append(flows, NATFlow{
			Client: e.src, VIP: e.dst, Source: e.toSrc, Backend: e.toDst,
			Proto: e.proto, BackendID: e.backendID,
			State: natState(e.proto, e.bits, r.e.bits),
			Age:   max(0, now-created),
			Idle:  idle,
			fwd:   f.r, rev: r.r, hasRev: ok,
		})
	}
	sort.Slice(flows, func(i, j int) bool {
		a, b := flows[i], flows[j]
		if a.VIP != b.VIP {
			return a.VIP.Addr().Less(b.VIP.Addr()) || a.VIP.Addr() == b.VIP.Addr() && a.VIP.Port() < b.VIP.Port()
		}
		if a.Client.Addr() != b.Client.Addr() {
			return a.Client.Addr().Less(b.Client.Addr())
		}
		return a.Client.Port() < b.Client.Port()
	})
	var orphans []natRef
	for _, r := range rev {
		if idleSince(now, r.e.seen) > time.Second {
			orphans = append(orphans, r.r)
		}
	}
	return flows, orphans
}

// NATTimeouts are how long NAT flows may stay idle, by state.
type NATTimeouts struct {
	// TCPEstablished applies to established TCP flows, TCPTransitory to
	// half-open (SYN seen, no answer) and closing (FIN or RST) ones, UDP to
	// UDP flows.
	TCPEstablished, TCPTransitory, UDP time.Duration
}

// Expiration reasons, as MaintainNAT and NATStats name them.
const (
	NATExpiredEstablished = "tcp_established_idle"
	NATExpiredTransitory  = "tcp_transitory_idle"
	NATExpiredUDP         = "udp_idle"
	NATExpiredOrphan      = "orphan"
)

// NATExpireReasons are the reasons flows expire for, in a fixed order.
var NATExpireReasons = []string{NATExpiredEstablished, NATExpiredTransitory, NATExpiredUDP, NATExpiredOrphan}

// NATMaintainResult says what MaintainNAT did.
type NATMaintainResult struct {
	Expired   map[string]int // flows removed, by reason
	Remaining int            // flows left
}

// MaintainNAT removes NAT flows idle longer than their state's timeout
// (both entries, the forward one first), and reply entries that belong to
// no flow (after a second: a flow being made has both within
// microseconds). A flow whose forward entry was touched between the walk
// and its removal stays: the removal is a compare-and-swap of the state
// word the walk read (flowtable.h). It rebuilds the NAT filter from the
// flows that remain (one call at a time).
func (d *Datapath) MaintainNAT(t NATTimeouts) (NATMaintainResult, error) {
	d.natMaint.Lock()
	defer d.natMaint.Unlock()
	res := NATMaintainResult{Expired: map[string]int{}}
	d.clearNATFilter() // before the walk, so no flow made meanwhile loses its bit
	flows, orphans := d.natWalk()
	var hashes []uint32
	for _, f := range flows {
		limit, reason := t.TCPTransitory, NATExpiredTransitory
		switch f.State {
		case NATStateEstablished:
			limit, reason = t.TCPEstablished, NATExpiredEstablished
		case NATStateUDP:
			limit, reason = t.UDP, NATExpiredUDP
		}
		if f.Idle <= limit || !f.fwd.delete() {
			res.Remaining++
			_, _, hash := natKey(f.Client, f.VIP, f.Proto, false)
			hashes = append(hashes, hash)
			continue
		}
		if f.hasRev && !f.rev.delete() {
			// Touched since the walk (a late reply): its flow is gone
			// all the same.
			if _, r, ok := d.natFind(f.Backend, f.Source, f.Proto, true); ok {
				r.delete()
			}
		}
		res.Expired[reason]++
	}
	for _, r := range orphans {
		if r.delete() {
			res.Expired[NATExpiredOrphan]++
		}
	}
	if err := d.switchNATFilter(hashes); err != nil {
		return res, err
	}
	d.mu.Lock()
	for r, n := range res.Expired {
		d.natExpired[r] += uint64(n)
	}
	d.natFlows = res.Remaining
	d.mu.Unlock()
	return res, nil
}

// NATSourceStats are the counters of one SNAT source.
type NATSourceStats struct {
	Source netip.Addr
	// Flows made with it, and new flows dropped because no port toward
	// their backend was free.
	Flows, AllocFailures uint64
}

// NATStats are the NAT table's use and counters.
type NATStats struct {
	// Flows is the flows after the last MaintainNAT; Capacity the flows
	// the table holds (two entries each).
	Flows, Capacity int
	Sources         []NATSourceStats
	// Expired counts flows removed by MaintainNAT since this process
	// started, by reason (NATExpireReasons).
	Expired map[string]uint64
}

// NATStats reads the NAT counters.
func (d *Datapath) NATStats() (NATStats, error) {
	d.mu.Lock()
	cfg := d.natConfig
	s := NATStats{Flows: d.natFlows, Capacity: d.opts.MaxNATFlows, Expired: map[string]uint64{}}
	for _, r := range NATExpireReasons {
		s.Expired[r] = d.natExpired[r]
	}
	d.mu.Unlock()
	var perCPU []lbNatSrcStats
	read := func(idx uint32, a netip.Addr) error {
		if err := d.objs.NatSourceStats.Lookup(idx, &perCPU); err != nil {
			return fmt.Errorf("reading counters of SNAT source %s: %w", a, err)
		}
		st := NATSourceStats{Source: a}
		for _, v := range perCPU {
			st.Flows += v.Flows
			st.AllocFailures += v.AllocFail
		}
		s.Sources = append(s.Sources, st)
		return nil
	}
	srcs := natSources(cfg)
	for i, a := range srcs {
		idx := uint32(i)
		if !a.Is4() {
			idx = NATMaxSources + uint32(i-int(cfg.N4))
		}
		if err := read(idx, a); err != nil {
			return s, err
		}
	}
	return s, nil
}
