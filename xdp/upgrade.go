package xdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
)

// Releases before the flow table kept pins in the hash maps ct4 and ct6,
// pinned beside the other maps. A datapath opened over such a pin directory
// copies their pins into pins4 and pins6 (the pin filter's bits and the
// VIPs' "has pins" flags are the earlier program's, and still hold), then
// removes the old maps' pins, so a restart into this release keeps every
// flow. Pins the earlier program makes between the copy and the attachment
// of this one are not copied (a moment's worth, during a transition only).

// copyOldPins copies the pins of ct4 and ct6 pinned under the pin path, if
// any, and removes those pins.
func (d *Datapath) copyOldPins() error {
	for _, old := range []struct {
		name string
		v6   bool
	}{{"ct4", false}, {"ct6", true}} {
		path := filepath.Join(d.opts.PinPath, old.name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return fmt.Errorf("opening the earlier release's %s: %w", old.name, err)
		}
		copied, lost, err := d.copyPins(m, old.v6)
		m.Close()
		if err != nil {
			return fmt.Errorf("copying the pins of the earlier release's %s: %w", old.name, err)
		}
		if lost > 0 {
			slog.Warn("pins of the earlier release not copied: their buckets are full", "map", old.name, "copied", copied, "lost", lost)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing the earlier release's %s: %w", old.name, err)
		}
	}
	return nil
}

// copyCount counts the entries of an earlier release's map copied into a
// flow table, and those lost because their buckets were full.
type copyCount struct{ copied, lost int }

// note counts an entry whose insert returned err, and returns err when it
// is neither of those.
func (c *copyCount) note(err error) error {
	switch {
	case err == nil:
		c.copied++
	case errors.Is(err, errFTExists): // copied before, by an open that failed later
	case errors.Is(err, ErrFull):
		c.lost++
	default:
		return err
	}
	return nil
}

func (d *Datapath) copyPins(m *ebpf.Map, v6 bool) (copied, lost int, err error) {
	var v lbCtValue
	var c copyCount
	defer func() { copied, lost = c.copied, c.lost }()
	put := func(f Flow) error {
		f.BackendID = v.BackendId
		return c.note(d.putPin(f, time.Duration(v.LastSeen), false))
	}
	if !v6 {
		var k lbFlow4
		it := m.Iterate()
		for it.Next(&k, &v) {
			var s, t [4]byte
			putLE32(s[:], k.Saddr)
			putLE32(t[:], k.Daddr)
			f := Flow{Src: netip.AddrPortFrom(netip.AddrFrom4(s), port(k.Sport)), Dst: netip.AddrPortFrom(netip.AddrFrom4(t), port(k.Dport)), Proto: Proto(k.Proto)}
			if err := put(f); err != nil {
				return copied, lost, err
			}
		}
		return copied, lost, it.Err()
	}
	var k lbFlow6
	it := m.Iterate()
	for it.Next(&k, &v) {
		f := Flow{Src: netip.AddrPortFrom(netip.AddrFrom16(k.Saddr), port(k.Sport)), Dst: netip.AddrPortFrom(netip.AddrFrom16(k.Daddr), port(k.Dport)), Proto: Proto(k.Proto)}
		if err := put(f); err != nil {
			return copied, lost, err
		}
	}
	return copied, lost, it.Err()
}

// Releases before NAT flows moved onto the flow table kept them in the hash
// map nat_flows. copyOldNAT copies its entries into nat4 and nat6, then
// removes its pin, so a restart into this release keeps every NAT flow
// (entries the earlier program makes between the copy and the attachment of
// this one are not copied: a moment's new flows).
func (d *Datapath) copyOldNAT() error {
	path := filepath.Join(d.opts.PinPath, "nat_flows")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return fmt.Errorf("opening the earlier release's nat_flows: %w", err)
	}
	var (
		k lbNatKey
		v lbNatValue
		c copyCount
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if err := c.note(d.natPut(natFromOld(k, v))); err != nil {
			m.Close()
			return fmt.Errorf("copying the NAT flows of the earlier release: %w", err)
		}
	}
	err = it.Err()
	m.Close()
	if err != nil {
		return fmt.Errorf("reading the earlier release's nat_flows: %w", err)
	}
	if c.lost > 0 {
		slog.Warn("NAT entries of the earlier release not copied: their buckets are full", "copied", c.copied, "lost", c.lost)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing the earlier release's nat_flows: %w", err)
	}
	return nil
}

func pinExists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

// markOldNAT sets the NAT filter bits of every forward entry of NAT tables
// pinned by a release before the filter, which set none: without them a
// SYN of such a flow would be refused while its CPU backs off from a full
// table.
func (d *Datapath) markOldNAT() {
	n := 0
	d.natEntries(func(e natEntry, _ natRef) {
		if !e.reply {
			_, _, hash := natKey(e.src, e.dst, e.proto, false)
			d.natFilter.mark(hash)
			n++
		}
	})
	if n > 0 {
		slog.Info("NAT filter built for the earlier release's flows", "flows", n)
	}
}

// natFromOld is the entry of an earlier release's nat_flows key and value.
func natFromOld(k lbNatKey, v lbNatValue) natEntry {
	addr := func(w [4]uint32) netip.Addr {
		if k.Family == 4 {
			return wordsAddr(w[:1])
		}
		return wordsAddr(w[:])
	}
	e := natEntry{
		reply: k.Dir == uint8(lbXdplbNatDirNAT_DIR_REPLY), proto: Proto(k.Proto),
		src: netip.AddrPortFrom(addr(k.Saddr), port(k.Sport)), dst: netip.AddrPortFrom(addr(k.Daddr), port(k.Dport)),
		toSrc: netip.AddrPortFrom(addr(v.Saddr), port(v.Sport)), toDst: netip.AddrPortFrom(addr(v.Daddr), port(v.Dport)),
		backendID: v.BackendId, bits: uint32(v.State), seen: uint32(v.LastSeen >> ftTickShift),
		aux: uint32(v.Created >> natCreatedShift),
	}
	if e.reply {
		e.aux = v.Ifindex
		var macs [12]byte
		copy(macs[:6], v.Dmac[:])
		copy(macs[6:], v.Smac[:])
		for i := range 3 {
			e.macs[i] = leUint32(macs[4*i:])
		}
	}
	return e
}
