package testnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Routed4 is the subnet of a host behind a router (AddRoutedHost): the
// router's side is .1, the host .10.
var Routed4 = netip.MustParsePrefix("198.18.1.0/24")

// AddRoutedHost adds a host named name behind router, a host of the LAN:
// its own namespace joined to the router's by a veth (the router's end is
// named after the host), 198.18.1.10/24 with a default route via
// 198.18.1.1 on the router's end. The router forwards; every other host of
// the LAN routes Routed4 via the router's LAN address, so DSR answers from
// the backends reach the host through it. Its namespace is deleted with the
// topology. The returned host's Port is the router's end.
func (t *Topology) AddRoutedHost(name string, router *Host) (*Host, error) {
	ns, err := newNamedNS("xt" + t.id + "-" + name)
	if err != nil {
		return nil, err
	}
	t.namespaces = append(t.namespaces, ns)
	for _, kv := range hostSysctls {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv4.conf.all.rp_filter", "0"}} {
		if err := router.NS.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	a4 := Routed4.Addr().As4()
	a4[3] = 10
	hostAddr := netip.AddrFrom4(a4)
	a4[3] = 1
	gw := netip.AddrFrom4(a4)
	h := &Host{Name: name, NS: ns, Link: hostLink, MAC: macFor(200, false), Port: name, IPv4: hostAddr}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: h.Port, HardwareAddr: macFor(200, true)},
		PeerName:         h.Link,
		PeerHardwareAddr: h.MAC,
		PeerNamespace:    netlink.NsFd(ns.handle),
	}
	if err := router.NS.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("adding veth %s (%s) / %s (%s): %w", h.Port, router.Name, h.Link, name, err)
	}
	rl, err := router.NS.nl.LinkByName(h.Port)
	if err != nil {
		return nil, err
	}
	h.PortIfIndex = rl.Attrs().Index
	hl, err := ns.nl.LinkByName(h.Link)
	if err != nil {
		return nil, err
	}
	h.IfIndex = hl.Attrs().Index
	if err := router.NS.Do(func() error { return disableOffloads(h.Port) }); err != nil {
		return nil, err
	}
	if err := ns.Do(func() error { return disableOffloads(h.Link) }); err != nil {
		return nil, err
	}
	if err := router.NS.nl.AddrAdd(rl, nlAddr(netip.PrefixFrom(gw, Routed4.Bits()))); err != nil {
		return nil, err
	}
	if err := ns.nl.AddrAdd(hl, nlAddr(netip.PrefixFrom(hostAddr, Routed4.Bits()))); err != nil {
		return nil, err
	}
	for _, l := range []struct {
		ns *NS
		l  netlink.Link
	}{{router.NS, rl}, {ns, hl}} {
		if err := l.ns.nl.LinkSetUp(l.l); err != nil {
			return nil, err
		}
	}
	if err := ns.nl.RouteAdd(&netlink.Route{LinkIndex: h.IfIndex, Gw: gw.AsSlice()}); err != nil {
		return nil, fmt.Errorf("adding %s's default route: %w", name, err)
	}
	dst := &net.IPNet{IP: Routed4.Addr().AsSlice(), Mask: net.CIDRMask(Routed4.Bits(), 32)}
	for _, o := range t.Hosts() {
		if o == router {
			continue
		}
		if err := o.NS.nl.RouteAdd(&netlink.Route{LinkIndex: o.IfIndex, Dst: dst, Gw: router.IPv4.AsSlice()}); err != nil {
			return nil, fmt.Errorf("adding %s's route to %v: %w", o.Name, Routed4, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := waitLink(ctx, router.NS, h.Port, false); err != nil {
		return nil, err
	}
	if err := waitLink(ctx, ns, h.Link, true); err != nil {
		return nil, err
	}
	return h, nil
}
