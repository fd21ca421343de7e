package testnet

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// NeighborOf returns h's neighbour entry for addr on its interface, if it
// has one; it fails t when the entries cannot be read.
func NeighborOf(t testing.TB, h *Host, addr netip.Addr) (netlink.Neigh, bool) {
	t.Helper()
	fam := netlink.FAMILY_V4
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	list, err := h.NS.Netlink().NeighList(h.IfIndex, fam)
	if err != nil {
		t.Fatalf("listing the neighbours of %s: %v", h.Name, err)
	}
	for _, n := range list {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr {
			return n, true
		}
	}
	return netlink.Neigh{}, false
}

// UsableMAC is the MAC of a neighbour entry the kernel would send to, or ""
// for none: missing, incomplete or failed.
func UsableMAC(n netlink.Neigh, ok bool) string {
	if !ok || len(n.HardwareAddr) == 0 || n.State == netlink.NUD_NONE ||
		n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 {
		return ""
	}
	return n.HardwareAddr.String()
}
