package xdp

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// Flow is a pinned flow: the datapath keeps it on BackendID while that
// backend is up.
type Flow struct {
	Src, Dst  netip.AddrPort // client, VIP
	Proto     Proto
	BackendID uint32
	// Idle is how long ago the flow was last seen (to within a second).
	Idle time.Duration
}

func port(p uint16) uint16 { return bits.ReverseBytes16(p) }

// Flows calls fn for every pinned flow, IPv4 then IPv6, until fn returns false.
func (d *Datapath) Flows(fn func(Flow) bool) error {
	return d.walkFlows(func(f Flow, _ uint64) bool { return fn(f) })
}

// walkFlows is Flows with each flow's last-seen stamp as the map holds it.
func (d *Datapath) walkFlows(fn func(f Flow, lastSeen uint64) bool) error {
	now := d.nowMono()
	var k4 lbFlow4
	var v lbCtValue
	it := d.objs.Ct4.Iterate()
	for it.Next(&k4, &v) {
		var s, t [4]byte
		putLE32(s[:], k4.Saddr)
		putLE32(t[:], k4.Daddr)
		f := Flow{
			Src: netip.AddrPortFrom(netip.AddrFrom4(s), port(k4.Sport)), Dst: netip.AddrPortFrom(netip.AddrFrom4(t), port(k4.Dport)),
			Proto: Proto(k4.Proto), BackendID: v.BackendId, Idle: now - time.Duration(v.LastSeen),
		}
		if !fn(f, v.LastSeen) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading IPv4 flows: %w", err)
	}
	var k6 lbFlow6
	it = d.objs.Ct6.Iterate()
	for it.Next(&k6, &v) {
		f := Flow{
			Src: netip.AddrPortFrom(netip.AddrFrom16(k6.Saddr), port(k6.Sport)), Dst: netip.AddrPortFrom(netip.AddrFrom16(k6.Daddr), port(k6.Dport)),
			Proto: Proto(k6.Proto), BackendID: v.BackendId, Idle: now - time.Duration(v.LastSeen),
		}
		if !fn(f, v.LastSeen) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading IPv6 flows: %w", err)
	}
	return nil
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func (f Flow) key4() lbFlow4 {
	s, t := f.Src.Addr().As4(), f.Dst.Addr().As4()
	return lbFlow4{Saddr: leUint32(s[:]), Daddr: leUint32(t[:]), Sport: port(f.Src.Port()), Dport: port(f.Dst.Port()), Proto: uint8(f.Proto)}
}

func (f Flow) key6() lbFlow6 {
	return lbFlow6{Saddr: f.Src.Addr().As16(), Daddr: f.Dst.Addr().As16(), Sport: port(f.Src.Port()), Dport: port(f.Dst.Port()), Proto: uint8(f.Proto)}
}

// PinFlow pins a flow to a backend, as the program does during a transition,
// and marks its VIP as having pins. For tests and for restoring state.
func (d *Datapath) PinFlow(f Flow) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}
	st, ok := d.vips[k]
	if !ok {
		k.Port = 0
		if st, ok = d.vips[k]; !ok {
			return fmt.Errorf("pinning flow %s -> %s: no such VIP", f.Src, f.Dst)
		}
	}
	if flag := uint8(lbXdplbVipFlagsVIP_F_HAS_PINS); st.meta.Flags&flag == 0 {
		m := st.meta
		m.Flags |= flag
		if err := d.writeMeta(k, st, m); err != nil {
			return fmt.Errorf("pinning flow %s -> %s: %w", f.Src, f.Dst, err)
		}
	}
	v := lbCtValue{BackendId: f.BackendID, LastSeen: uint64(d.nowMono() - f.Idle)}
	var err error
	if f.Src.Addr().Is4() {
		err = d.objs.Ct4.Put(f.key4(), &v)
	} else {
		err = d.objs.Ct6.Put(f.key6(), &v)
	}
	if err != nil {
		return fmt.Errorf("pinning flow %s -> %s: %w", f.Src, f.Dst, err)
	}
	d.markPin(FlowHash(f.Src, f.Dst, f.Proto, st.meta.HashSeed))
	return nil
}

func (d *Datapath) deleteFlow(f Flow) error {
	var err error
	if f.Src.Addr().Is4() {
		err = d.objs.Ct4.Delete(f.key4())
	} else {
		err = d.objs.Ct6.Delete(f.key6())
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// expireFlow deletes a flow the walk found expired or stale, unless the
// program pinned it again since (a stale pin is replaced by the next packet
// of its flow): then it is left, and renewed is true. A flow pinned again
// between this lookup and the delete is still lost; that window is a
// syscall long, where the walk's is the whole table's.
func (d *Datapath) expireFlow(f Flow, lastSeen uint64) (renewed bool, err error) {
	var v lbCtValue
	if f.Src.Addr().Is4() {
		err = d.objs.Ct4.Lookup(f.key4(), &v)
	} else {
		err = d.objs.Ct6.Lookup(f.key6(), &v)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if v.BackendId != f.BackendID || v.LastSeen != lastSeen {
		return true, nil
	}
	return false, d.deleteFlow(f)
}

// FlowCounts returns the pinned flows of each family as the last Maintain
// left them.
func (d *Datapath) FlowCounts() (v4, v6 int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flows4, d.flows6
}

// MaintainResult says what Maintain did.
type MaintainResult struct {
	Expired, Stale int // pins removed for idleness, for a gone or down backend
	// Renewed counts the pins found expired or stale that the program made
	// again before they were removed: they stay (in Remaining).
	Renewed     int
	Remaining   int
	TablesFreed int // previous tables released after their grace period
}

// Maintain expires pins idle longer than idle or pointing to a backend that is
// gone or down, releases previous tables whose grace period ended, and clears
// the "has pins" flag of VIPs that have none left (so their packets skip the
// flow lookup). Call it periodically, e.g. every 10 s.
func (d *Datapath) Maintain(idle time.Duration) (MaintainResult, error) {
	var res MaintainResult
	d.mu.Lock()
	defer d.mu.Unlock()
	hasPins := map[VIPKey]bool{}
	type seenFlow struct {
		Flow
		lastSeen uint64
	}
	var del []seenFlow
	var hashes []uint32 // of the pins that stay
	remaining4 := 0
	d.clearPinFilter() // before the walk, so no pin made meanwhile loses its bit
	err := d.walkFlows(func(f Flow, lastSeen uint64) bool {
		b, ok := d.backends[f.BackendID]
		switch {
		case !ok || b.entry.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_UP) == 0:
			res.Stale++
			del = append(del, seenFlow{f, lastSeen})
		case f.Idle > idle:
			res.Expired++
			del = append(del, seenFlow{f, lastSeen})
		default:
			res.Remaining++
			if f.Src.Addr().Is4() {
				remaining4++
			}
			k := VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}
			if _, ok := d.vips[k]; !ok {
				k.Port = 0
			}
			hasPins[k] = true
			if st, ok := d.vips[k]; ok {
				hashes = append(hashes, FlowHash(f.Src, f.Dst, f.Proto, st.meta.HashSeed))
			}
		}
		return true
	})
	if err != nil {
		return res, err
	}
	if d.afterFlowWalk != nil {
		d.afterFlowWalk()
	}
	for _, f := range del {
		renewed, err := d.expireFlow(f.Flow, f.lastSeen)
		if err != nil {
			return res, fmt.Errorf("expiring flow %s -> %s: %w", f.Src, f.Dst, err)
		}
		if renewed {
			res.Renewed++
			res.Remaining++
			k := VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}
			if _, ok := d.vips[k]; !ok {
				k.Port = 0
			}
			hasPins[k] = true
		}
	}
	if err := d.switchPinFilter(hashes); err != nil {
		return res, err
	}
	d.flows4, d.flows6 = remaining4, res.Remaining-remaining4
	// A packet may still pin a flow in the last moments of a grace period:
	// leave a second's margin before calling a transition over.
	now := d.nowMono() - time.Second
	for k, st := range d.vips {
		m := st.meta
		if m.TransitionEnd != 0 && time.Duration(m.TransitionEnd) > now {
			continue
		}
		changed := false
		if m.PrevSize != 0 || m.TransitionEnd != 0 {
			m.PrevIdx, m.PrevHalf, m.PrevSize, m.TransitionEnd = 0, 0, 0, 0
			changed = true
		}
		if m.Flags&uint8(lbXdplbVipFlagsVIP_F_HAS_PINS) != 0 && !hasPins[k] {
			m.Flags &^= uint8(lbXdplbVipFlagsVIP_F_HAS_PINS)
			changed = true
		}
		if changed {
			if err := d.writeMeta(k, st, m); err != nil {
				return res, fmt.Errorf("updating VIP %s: %w", k, err)
			}
		}
		if st.old != nil {
			d.releaseTable(st.old)
			st.old = nil
			res.TablesFreed++
		}
	}
	if err := d.flushFreed(); err != nil {
		return res, err
	}
	return res, nil
}

// LookupFlow returns the backend a flow is pinned to, if it is.
func (d *Datapath) LookupFlow(src, dst netip.AddrPort, proto Proto) (uint32, bool, error) {
	f := Flow{Src: src, Dst: dst, Proto: proto}
	var v lbCtValue
	var err error
	if src.Addr().Is4() {
		err = d.objs.Ct4.Lookup(f.key4(), &v)
	} else {
		err = d.objs.Ct6.Lookup(f.key6(), &v)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("looking up flow %s -> %s: %w", src, dst, err)
	}
	return v.BackendId, true, nil
}
