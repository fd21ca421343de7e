package xdp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NextHop is how the datapath reaches an address without a FIB lookup per
// packet: out of which interface, from which MAC, to which neighbour.
type NextHop struct {
	IfIndex   int
	Interface string
	SrcMAC    net.HardwareAddr // the interface's
	MAC       net.HardwareAddr // the neighbour's: the address itself or its gateway
	Via       netip.Addr       // the neighbour's address
	MTU       int              // route MTU if set, else the interface's
}

// usable neighbour states: the MAC is known.
const neighUsable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// ResolveNextHop finds the route to addr and the MAC of its next hop, asking
// the kernel to resolve the neighbour (ARP/NDP) when it is not known yet, and
// waiting until it is or ctx ends.
func ResolveNextHop(ctx context.Context, addr netip.Addr) (NextHop, error) {
	addr = addr.Unmap()
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return NextHop{}, fmt.Errorf("route to %s: %w", addr, err)
	}
	if len(routes) == 0 {
		return NextHop{}, fmt.Errorf("route to %s: none", addr)
	}
	rt := routes[0]
	link, err := netlink.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return NextHop{}, fmt.Errorf("route to %s: interface %d: %w", addr, rt.LinkIndex, err)
	}
	nh := NextHop{
		IfIndex:   rt.LinkIndex,
		Interface: link.Attrs().Name,
		SrcMAC:    link.Attrs().HardwareAddr,
		MTU:       link.Attrs().MTU,
		Via:       addr,
	}
	if rt.MTU > 0 {
		nh.MTU = rt.MTU
	}
	if rt.Gw != nil {
		if gw, ok := netip.AddrFromSlice(rt.Gw); ok {
			nh.Via = gw.Unmap()
		}
	}
	if len(nh.SrcMAC) != 6 {
		return NextHop{}, fmt.Errorf("route to %s: interface %s has no Ethernet address", addr, nh.Interface)
	}
	for attempt := 0; ; attempt++ {
		if mac := neighborMAC(nh.IfIndex, nh.Via); mac != nil {
			nh.MAC = mac
			return nh, nil
		}
		if attempt%20 == 0 { // ask again every second
			if err := Probe(nh.IfIndex, nh.Via); err != nil {
				return NextHop{}, fmt.Errorf("resolving %s on %s: %w", nh.Via, nh.Interface, err)
			}
		}
		select {
		case <-ctx.Done():
			return NextHop{}, fmt.Errorf("resolving %s on %s: %w", nh.Via, nh.Interface, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func neighborMAC(ifindex int, ip netip.Addr) net.HardwareAddr {
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(ifindex, fam)
	if err != nil {
		return nil
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip && n.State&neighUsable != 0 && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr
		}
	}
	return nil
}

// Probe asks the kernel to (re)resolve ip on ifindex, as traffic through the
// stack would: XDP-forwarded traffic does not keep neighbour entries fresh,
// so the daemon probes its next hops periodically.
func Probe(ifindex int, ip netip.Addr) error {
	fam := unix.AF_INET
	if ip.Is6() {
		fam = unix.AF_INET6
	}
	err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: ifindex,
		Family:    fam,
		IP:        ip.AsSlice(),
		State:     netlink.NUD_NONE,
		Flags:     netlink.NTF_USE,
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// NeighborUpdate is a neighbour whose MAC the kernel learned or changed.
type NeighborUpdate struct {
	IfIndex int
	IP      netip.Addr
	MAC     net.HardwareAddr
}

// WatchNeighbors calls fn for every neighbour entry that becomes usable or
// changes its MAC, until ctx ends. Deleted or failed entries are not
// reported: the datapath keeps the last MAC it had rather than blackholing.
func WatchNeighbors(ctx context.Context, fn func(NeighborUpdate)) error {
	ch := make(chan netlink.NeighUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	errs := make(chan error, 1)
	err := netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribing to neighbour updates: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return fmt.Errorf("neighbour updates: %w", err)
		case u, ok := <-ch:
			if !ok {
				return errors.New("neighbour updates: subscription closed")
			}
			if u.Type != unix.RTM_NEWNEIGH || u.State&neighUsable == 0 || len(u.HardwareAddr) != 6 {
				continue
			}
			ip, ok := netip.AddrFromSlice(u.IP)
			if !ok {
				continue
			}
			fn(NeighborUpdate{IfIndex: u.LinkIndex, IP: ip.Unmap(), MAC: u.HardwareAddr})
		}
	}
}

// WatchRoutes calls fn when the kernel adds, changes or removes a route,
// until ctx ends: a backend's next hop (interface, gateway, MTU) may then be
// another. fn runs on the watching goroutine; it should only take note.
func WatchRoutes(ctx context.Context, fn func()) error {
	ch := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	errs := make(chan error, 1)
	err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribing to route updates: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return fmt.Errorf("route updates: %w", err)
		case _, ok := <-ch:
			if !ok {
				return errors.New("route updates: subscription closed")
			}
			fn()
		}
	}
}
