package xdp

import (
	"fmt"
	"math/bits"
	"net/netip"
	"time"
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
	return d.walkFlows(func(f Flow, _ pinEntry) bool { return fn(f) })
}

// pinEntry is where walkFlows found a pin, for expireFlow.
type pinEntry struct {
	ref  ftRef
	v6   bool
	seen uint32 // the entry's timestamp (ns >> ftTickShift, modulo 2^32)
}

// walkFlows is Flows with where each pin is and its timestamp.
func (d *Datapath) walkFlows(fn func(f Flow, e pinEntry) bool) error {
	now := d.nowMono()
	for _, v6 := range []bool{false, true} {
		t := d.pinTable(v6)
		more := true
		t.walk(func(r ftRef, tag uint32, words []uint32) bool {
			f, hash, seen := pinFrom(v6, tag, words)
			f.Idle = idleSince(now, seen)
			r.home = hash & t.mask
			more = fn(f, pinEntry{ref: r, v6: v6, seen: seen})
			return more
		})
		if !more {
			break
		}
	}
	return nil
}

// PinFlow pins a flow to a backend, as the program does during a transition
// (replacing a pin it may have), and marks its VIP as having pins. For tests
// and for restoring state.
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
	if err := d.putPin(f, d.nowMono()-f.Idle, true); err != nil {
		return fmt.Errorf("pinning flow %s -> %s: %w", f.Src, f.Dst, err)
	}
	d.pinFilter.mark(FlowHash(f.Src, f.Dst, f.Proto, st.meta.HashSeed))
	return nil
}

// putPin writes f's pin, last seen at seen, into its table; with replace,
// over a pin the flow may have. ErrFull: the flow's buckets are full.
func (d *Datapath) putPin(f Flow, seen time.Duration, replace bool) error {
	key, tag, hash := pinKey(f)
	return d.pinTable(!f.Src.Addr().Is4()).insert(hash, key, tag, []uint32{f.BackendID, uint32(seen >> ftTickShift)}, replace)
}

// expireFlow deletes a pin the walk found expired or stale, unless it
// changed since (the program touched it, or replaced a stale pin): then it
// is left, and renewed is true. The delete is a compare-and-swap of the
// entry's state word as the walk read it, so no pin renewed before the
// delete is lost.
func (d *Datapath) expireFlow(e pinEntry) (renewed bool, err error) {
	t := d.pinTable(e.v6)
	if t.delete(e.ref) {
		return false, nil
	}
	return t.live(e.ref), nil
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
		e pinEntry
	}
	var del []seenFlow
	var hashes []uint32 // of the pins that stay
	remaining4 := 0
	d.clearPinFilter() // before the walk, so no pin made meanwhile loses its bit
	err := d.walkFlows(func(f Flow, e pinEntry) bool {
		b, ok := d.backends[f.BackendID]
		switch {
		case !ok || b.entry.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_UP) == 0:
			res.Stale++
			del = append(del, seenFlow{f, e})
		case f.Idle > idle:
			res.Expired++
			del = append(del, seenFlow{f, e})
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
		renewed, err := d.expireFlow(f.e)
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
	key, tag, hash := pinKey(Flow{Src: src, Dst: dst, Proto: proto})
	t := d.pinTable(!src.Addr().Is4())
	for range 3 { // an entry that changed while it was read is read again
		r, ok := t.find(hash, key, tag)
		if !ok {
			return 0, false, nil
		}
		val := make([]uint32, t.g.vw)
		if t.value(r, val) {
			return val[0], true, nil
		}
	}
	return 0, false, fmt.Errorf("looking up flow %s -> %s: the entry kept changing", src, dst)
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}
