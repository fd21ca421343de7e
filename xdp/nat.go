package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// SNAT in user space: the sources and ports the program allocates from
// (SetNAT), the NAT flows it made (NATFlows), and their expiry
// (MaintainNAT). All access to NAT state goes through this file and
// bpf/nat.h, so that moving NAT flows onto another table is a local change.

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
	old := natSources(d.natConfig)
	// The new sources' prefilter bits before the config that names them,
	// the old ones' cleared after: a reply never meets a config whose
	// source its filter bit hides.
	for _, a := range natSources(v) {
		if err := d.setFilterBit(a, true); err != nil {
			return fmt.Errorf("setting SNAT source %s: %w", a, err)
		}
	}
	if err := d.objs.NatConfigMap.Put(uint32(0), &v); err != nil {
		for _, a := range natSources(v) {
			_ = d.setFilterBit(a, false)
		}
		return fmt.Errorf("writing the SNAT config: %w", err)
	}
	for _, a := range old {
		if err := d.setFilterBit(a, false); err != nil {
			return fmt.Errorf("clearing SNAT source %s: %w", a, err)
		}
	}
	d.natConfig = v
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
	// Age is how long ago the flow was made, Idle how long ago a packet of
	// either direction was last seen (to within a second).
	Age, Idle time.Duration

	fwd, rev   lbNatKey
	lastSeen   uint64
	revMissing bool
}

func natAddr(w [4]uint32, fam uint8) netip.Addr {
	var b [16]byte
	for i := range 4 {
		putLE32(b[4*i:], w[i])
	}
	if fam == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func natState(proto Proto, fwd, rev uint64) string {
	if proto != TCP {
		return NATStateUDP
	}
	both := fwd | rev
	switch {
	case both&uint64(lbXdplbNatStateNAT_S_RST) != 0:
		return NATStateReset
	case both&uint64(lbXdplbNatStateNAT_S_FIN) != 0:
		return NATStateClosing
	case fwd&uint64(lbXdplbNatStateNAT_S_SEEN) != 0 && rev&uint64(lbXdplbNatStateNAT_S_SEEN) != 0:
		return NATStateEstablished
	}
	return NATStateSYNSent
}

// NATFlows calls fn for every NAT flow until fn returns false.
func (d *Datapath) NATFlows(fn func(NATFlow) bool) error {
	flows, _, err := d.natWalk()
	if err != nil {
		return err
	}
	for _, f := range flows {
		if !fn(f) {
			return nil
		}
	}
	return nil
}

// natWalk reads every NAT flow, and the reply entries of no flow.
func (d *Datapath) natWalk() ([]NATFlow, []lbNatKey, error) {
	now := uint64(d.nowMono())
	fwd := map[lbNatKey]lbNatValue{}
	rev := map[lbNatKey]lbNatValue{}
	var k lbNatKey
	var v lbNatValue
	it := d.objs.NatFlows.Iterate()
	for it.Next(&k, &v) {
		if k.Dir == uint8(lbXdplbNatDirNAT_DIR_FWD) {
			fwd[k] = v
		} else {
			rev[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading NAT flows: %w", err)
	}
	var flows []NATFlow
	for k, v := range fwd {
		rk := lbNatKey{Saddr: v.Daddr, Daddr: v.Saddr, Sport: v.Dport, Dport: v.Sport, Proto: k.Proto, Family: k.Family,
			Dir: uint8(lbXdplbNatDirNAT_DIR_REPLY)}
		r, ok := rev[rk]
		delete(rev, rk)
		last := max(v.LastSeen, r.LastSeen)
		f := NATFlow{
			Client:    netip.AddrPortFrom(natAddr(k.Saddr, k.Family), port(k.Sport)),
			VIP:       netip.AddrPortFrom(natAddr(k.Daddr, k.Family), port(k.Dport)),
			Source:    netip.AddrPortFrom(natAddr(v.Saddr, k.Family), port(v.Sport)),
			Backend:   netip.AddrPortFrom(natAddr(v.Daddr, k.Family), port(v.Dport)),
			Proto:     Proto(k.Proto),
			BackendID: v.BackendId,
			State:     natState(Proto(k.Proto), v.State, r.State),
			Age:       time.Duration(now - min(now, v.Created)),
			Idle:      time.Duration(now - min(now, last)),
			fwd:       k, rev: rk, lastSeen: last, revMissing: !ok,
		}
		flows = append(flows, f)
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
	var orphans []lbNatKey
	for k := range rev {
		orphans = append(orphans, k)
	}
	return flows, orphans, nil
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
// no flow. A flow seen again between the walk and its removal stays.
func (d *Datapath) MaintainNAT(t NATTimeouts) (NATMaintainResult, error) {
	res := NATMaintainResult{Expired: map[string]int{}}
	flows, orphans, err := d.natWalk()
	if err != nil {
		return res, err
	}
	var errs []error
	for _, f := range flows {
		limit, reason := t.TCPTransitory, NATExpiredTransitory
		switch f.State {
		case NATStateEstablished:
			limit, reason = t.TCPEstablished, NATExpiredEstablished
		case NATStateUDP:
			limit, reason = t.UDP, NATExpiredUDP
		}
		if f.Idle <= limit {
			res.Remaining++
			continue
		}
		var v lbNatValue
		if err := d.objs.NatFlows.Lookup(f.fwd, &v); err != nil {
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if v.LastSeen > f.lastSeen {
			res.Remaining++
			continue
		}
		if err := d.objs.NatFlows.Delete(f.fwd); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		if err := d.objs.NatFlows.Delete(f.rev); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		res.Expired[reason]++
	}
	for _, k := range orphans {
		// A reply entry whose forward entry is gone: a flow being made
		// right now has both within microseconds, so look again.
		var v lbNatValue
		if err := d.objs.NatFlows.Lookup(k, &v); err != nil {
			continue
		}
		if time.Duration(uint64(d.nowMono())-min(uint64(d.nowMono()), v.Created)) < time.Second {
			continue
		}
		if err := d.objs.NatFlows.Delete(k); err == nil {
			res.Expired[NATExpiredOrphan]++
		}
	}
	d.mu.Lock()
	for r, n := range res.Expired {
		d.natExpired[r] += uint64(n)
	}
	d.natFlows = res.Remaining
	d.mu.Unlock()
	if len(errs) > 0 {
		return res, fmt.Errorf("expiring NAT flows: %w", errors.Join(errs...))
	}
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
