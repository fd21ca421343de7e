package xdp

import "net/netip"

// A packet to a VIP's service looks for a NAT flow first only when the
// VIP's meta carries VIP_F_SNAT_SOURCE (lb.h, process_l4): its address is
// a SNAT source, so the packet may be a backend's reply. Every other
// service's packets skip that check. The flag follows the SNAT config:
// writeMeta sets it from snatAddrs, and SetNAT flags the VIPs at a new
// source before the config names the source, and unflags those at a source
// it dropped after, so a reply never meets a config whose source its
// service hides.

// snatFlag returns a VIP meta's flags with VIP_F_SNAT_SOURCE as address a
// needs it.
func (d *Datapath) snatFlag(a netip.Addr, flags uint8) uint8 {
	const flag = uint8(lbXdplbVipFlagsVIP_F_SNAT_SOURCE)
	if d.snatAddrs[a.Unmap()] {
		return flags | flag
	}
	return flags &^ flag
}

// setSNATAddrs makes addrs the addresses whose VIPs carry the flag and
// rewrites the metas whose flag changes. Called with d.mu held.
func (d *Datapath) setSNATAddrs(addrs []netip.Addr) error {
	d.snatAddrs = map[netip.Addr]bool{}
	for _, a := range addrs {
		d.snatAddrs[a.Unmap()] = true
	}
	for k, st := range d.vips {
		if st.meta.Flags == d.snatFlag(k.Addr, st.meta.Flags) {
			continue
		}
		if err := d.writeMeta(k, st, st.meta); err != nil {
			return err
		}
	}
	return nil
}
