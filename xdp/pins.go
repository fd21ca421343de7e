package xdp

import (
	"net/netip"
	"time"
)

// Pins in the flow tables pins4 and pins6 (struct pin4, pin6 in
// bpf/structs.h): the key is the client's side of the flow as seen arriving
// (addresses, then the ports as one word) with the protocol as the tag; the
// value is the backend id and a timestamp.

var (
	pin4Geom = ftGeom{kw: 3, vw: 2, stride: 6, ways: 2, bucket: 64}
	pin6Geom = ftGeom{kw: 9, vw: 2, stride: 14, ways: 2, bucket: 128}
)

const (
	// ftTickShift mirrors FT_TICK_SHIFT: timestamps count 2^20 ns.
	ftTickShift = 20
	// pinHashSeed mirrors PIN_HASH_SEED: a pin's place in its table is
	// FlowHash with this seed.
	pinHashSeed = 0x5bd1e995
)

func (d *Datapath) pinTable(v6 bool) *flowTable {
	if v6 {
		return d.pins6
	}
	return d.pins4
}

// pinKey is f's key in its table, its tag and its hash there.
func pinKey(f Flow) (key []uint32, tag, hash uint32) {
	key = append(addrWords(f.Src.Addr()), addrWords(f.Dst.Addr())...)
	key = append(key, portsWord(f.Src.Port(), f.Dst.Port()))
	return key, uint32(f.Proto), FlowHash(f.Src, f.Dst, f.Proto, pinHashSeed)
}

// pinFrom is the pin of an entry's tag and words (key, value): the flow
// (without Idle), its hash in the table and its timestamp.
func pinFrom(v6 bool, tag uint32, w []uint32) (f Flow, hash, seen uint32) {
	n := 3
	if v6 {
		n = 9
	}
	sport, dport := port(uint16(w[n-1])), port(uint16(w[n-1]>>16))
	a := (n - 1) / 2 // words of an address
	f.Src, f.Dst = netip.AddrPortFrom(wordsAddr(w[:a]), sport), netip.AddrPortFrom(wordsAddr(w[a:2*a]), dport)
	f.Proto, f.BackendID = Proto(tag), w[n]
	return f, FlowHash(f.Src, f.Dst, f.Proto, pinHashSeed), w[n+1]
}

// idleSince is how long ago a pin stamped seen was last seen, at now: 0 for
// a stamp after now (the program stamped it after now was read). Stamps
// count modulo 2^32 ticks, so idle times up to 2^31 ticks (26 days) read
// right.
func idleSince(now time.Duration, seen uint32) time.Duration {
	d := int32(uint32(now>>ftTickShift) - seen)
	if d < 0 {
		return 0
	}
	return time.Duration(d) << ftTickShift
}

// mapPins maps the flow tables: the pins' and the NAT flows'.
func (d *Datapath) mapPins() error {
	var err error
	if d.pins4, err = mapFlowTable(d.objs.Pins4, pin4Geom); err != nil {
		return err
	}
	if d.pins6, err = mapFlowTable(d.objs.Pins6, pin6Geom); err != nil {
		return err
	}
	if d.nat4, err = mapFlowTable(d.objs.Nat4, nat4Geom); err != nil {
		return err
	}
	d.nat6, err = mapFlowTable(d.objs.Nat6, nat6Geom)
	return err
}

func (d *Datapath) unmapPins() {
	d.pins4.unmap()
	d.pins6.unmap()
	d.nat4.unmap()
	d.nat6.unmap()
}

// pinRoom says whether a new pin of f would find room in its table.
func (d *Datapath) pinRoom(f Flow) bool {
	_, _, hash := pinKey(f)
	return d.pinTable(!f.Src.Addr().Is4()).room(hash)
}
