package testnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The addresses of a topology.
var (
	// LAN4 and LAN6 are the prefixes of the LAN every host sits on.
	LAN4 = netip.MustParsePrefix("198.18.0.0/24")
	LAN6 = netip.MustParsePrefix("2001:db8::/64")
	// VIPs4 and VIPs6 hold the VIPs; the client routes them via the load
	// balancer.
	VIPs4 = netip.MustParsePrefix("198.18.100.0/24")
	VIPs6 = netip.MustParsePrefix("2001:db8:100::/64")
)

// Host octets on the LAN: 198.18.0.N and 2001:db8::N (N written in decimal
// digits, so .11 is ::11).
const (
	lbOctet       = 2
	clientOctet   = 10
	firstBackend  = 11
	maxBackends   = 100
	hostLink      = "eth0"
	bridgeName    = "br0"
	readyTimeout  = 10 * time.Second
	defaultNumBEs = 3
)

// TopologyConfig configures NewTopology.
type TopologyConfig struct {
	// Backends is the number of backends, 3 when zero, at most 100.
	Backends int
}

// Host is one machine of a topology: a namespace with one veth into the
// switch.
type Host struct {
	// Name is "client", "lb" or "b1", "b2", ….
	Name string
	NS   *NS
	// Link is the host's interface inside NS ("eth0"), IfIndex its index
	// there and MAC its address.
	Link    string
	IfIndex int
	MAC     net.HardwareAddr
	// IPv4 and IPv6 are the host's LAN addresses (/24 and /64).
	IPv4, IPv6 netip.Addr
	// Port is the veth peer in the switch namespace, enslaved to the
	// bridge, and PortIfIndex its index there.
	Port        string
	PortIfIndex int
}

// Dial connects from inside the host's namespace (see NS.Dial).
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.NS.Dial(ctx, network, addr)
}

// Listen listens inside the host's namespace (see NS.Listen).
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	return h.NS.Listen(network, addr)
}

// ListenPacket listens inside the host's namespace (see NS.ListenPacket).
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	return h.NS.ListenPacket(network, addr)
}

// Topology is a LAN of hosts around a bridge in a switch namespace.
type Topology struct {
	// Switch holds the bridge and the switch side of every host's veth.
	Switch *NS
	// Bridge is the bridge's name in Switch.
	Bridge   string
	Client   *Host
	LB       *Host
	Backends []*Host

	id         string // the random part of the namespaces' names
	namespaces []*NS  // every namespace created, for Close
	xdpPass    *ebpf.Program
	xdpLinks   []link.Link
}

// Hosts returns the client, the load balancer and the backends, in that order.
func (t *Topology) Hosts() []*Host {
	return append([]*Host{t.Client, t.LB}, t.Backends...)
}

// NewTestTopology builds a topology for t, after RequirePrivileged, and closes
// it in t.Cleanup.
func NewTestTopology(t testing.TB, cfg TopologyConfig) *Topology {
	t.Helper()
	RequirePrivileged(t)
	topo, err := NewTopology(cfg)
	if err != nil {
		t.Fatalf("building test topology: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("closing test topology: %v", err)
		}
	})
	return topo
}

// NewTopology builds the LAN 198.18.0.0/24, 2001:db8::/64: a switch
// namespace holding a bridge, and one namespace per host (client .10, lb .2,
// backends .11, .12, …; the same numbers in IPv6) with a veth whose other end
// is a port of the bridge. Everything is up and every address usable when it
// returns. The client routes VIPs4 and VIPs6 via the load balancer, which
// forwards (bpf_fib_lookup needs forwarding on). Backends have rp_filter off,
// accept_local on and arp_ignore/arp_announce set as DSR backends need, and
// get VIPs on lo from AddVIPToBackends. Nobody sends or accepts ICMP
// redirects, and IPv6 does no duplicate address detection.
//
// Two veth pitfalls of this kernel are handled so that XDP on a host's eth0
// behaves as on a real NIC:
//   - XDP_TX or a redirect onto a veth reaches the peer only if the peer runs an
//     XDP program: every switch port runs one that returns XDP_PASS.
//   - A veth sender leaves TCP/UDP checksums partial (checksum offload), so a
//     frame that XDP forwards arrives with a bad checksum and is dropped:
//     transmit checksum offload is off on every veth, and so are TSO, GSO and
//     GRO, so that XDP sees frames of at most one MTU.
func NewTopology(cfg TopologyConfig) (_ *Topology, err error) {
	n := cfg.Backends
	if n == 0 {
		n = defaultNumBEs
	}
	if n < 0 || n > maxBackends {
		return nil, fmt.Errorf("topology: %d backends, want 1 to %d", cfg.Backends, maxBackends)
	}
	t := &Topology{Bridge: bridgeName}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("building topology: %w", err), t.Close())
		}
	}()

	id := randomHex(2)
	t.id = id
	if t.Switch, err = newNamedNS("xt" + id + "-sw"); err != nil {
		return t, err
	}
	t.namespaces = append(t.namespaces, t.Switch)
	// The switch has no IP stack to speak of: no IPv6 on its ports means no
	// DAD, router or MLD chatter from it on the LAN.
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	} {
		if err := t.Switch.Sysctl(kv[0], kv[1]); err != nil {
			return t, err
		}
	}
	noSnooping := false
	// A fixed MAC keeps the bridge from taking the lowest of its ports'.
	br := &netlink.Bridge{
		LinkAttrs:         netlink.LinkAttrs{Name: bridgeName, HardwareAddr: net.HardwareAddr{0x02, 0x78, 0x6c, 0xfe, 0x00, 0x00}},
		MulticastSnooping: &noSnooping,
	}
	if err := t.Switch.nl.LinkAdd(br); err != nil {
		return t, fmt.Errorf("adding bridge: %w", err)
	}
	brLink, err := t.Switch.nl.LinkByName(bridgeName)
	if err != nil {
		return t, fmt.Errorf("finding bridge: %w", err)
	}
	if err := t.Switch.nl.LinkSetUp(brLink); err != nil {
		return t, fmt.Errorf("bringing bridge up: %w", err)
	}

	if t.xdpPass, err = newPassProgram(); err != nil {
		return t, fmt.Errorf("loading XDP pass program: %w", err)
	}

	if t.Client, err = t.addHost(id, "client", clientOctet, brLink.Attrs().Index); err != nil {
		return t, err
	}
	if t.LB, err = t.addHost(id, "lb", lbOctet, brLink.Attrs().Index); err != nil {
		return t, err
	}
	for i := range n {
		b, err := t.addHost(id, "b"+strconv.Itoa(i+1), firstBackend+i, brLink.Attrs().Index)
		if err != nil {
			return t, err
		}
		t.Backends = append(t.Backends, b)
	}

	if err := t.configureRoles(); err != nil {
		return t, err
	}
	if err := t.waitReady(); err != nil {
		return t, err
	}
	return t, nil
}

// hostSysctls apply to every host namespace before its veth exists, so that
// the interface inherits them from "default".
var hostSysctls = [][2]string{
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	{"net.ipv6.conf.all.accept_ra", "0"},
	{"net.ipv6.conf.default.accept_ra", "0"},
	{"net.ipv6.conf.default.router_solicitations", "0"},
	{"net.ipv6.conf.all.accept_redirects", "0"},
	{"net.ipv6.conf.default.accept_redirects", "0"},
	// A new namespace may copy IPv4 settings from the root namespace
	// (net.core.devconf_inherit_init_net), so set what matters.
	{"net.ipv4.ip_forward", "0"},
	{"net.ipv6.conf.all.forwarding", "0"},
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv4.conf.all.accept_redirects", "0"},
	{"net.ipv4.conf.default.accept_redirects", "0"},
	{"net.ipv4.conf.all.send_redirects", "0"},
	{"net.ipv4.conf.default.send_redirects", "0"},
}

// macFor returns the MAC address of a host (port=false) or of its switch port:
// 02:78:6c:00:00:N and 02:78:6c:ff:00:N for the host with octet N.
func macFor(octet int, port bool) net.HardwareAddr {
	mac := net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x00, byte(octet)}
	if port {
		mac[3] = 0xff
	}
	return mac
}

func lanAddrs(octet int) (netip.Addr, netip.Addr) {
	a4 := LAN4.Addr().As4()
	a4[3] = byte(octet)
	a6 := netip.MustParseAddr("2001:db8::" + strconv.Itoa(octet))
	return netip.AddrFrom4(a4), a6
}

func (t *Topology) addHost(id, name string, octet, bridgeIndex int) (*Host, error) {
	ns, err := newNamedNS("xt" + id + "-" + name)
	if err != nil {
		return nil, err
	}
	t.namespaces = append(t.namespaces, ns)
	h := &Host{Name: name, NS: ns, Link: hostLink, MAC: macFor(octet, false), Port: name}
	h.IPv4, h.IPv6 = lanAddrs(octet)
	for _, kv := range hostSysctls {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return h, err
		}
	}

	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: h.Port, HardwareAddr: macFor(octet, true), MasterIndex: bridgeIndex},
		PeerName:         h.Link,
		PeerHardwareAddr: h.MAC,
		PeerNamespace:    netlink.NsFd(ns.handle),
	}
	if err := t.Switch.nl.LinkAdd(veth); err != nil {
		return h, fmt.Errorf("adding veth %s (switch) / %s (%s): %w", h.Port, h.Link, ns.Name, err)
	}
	port, err := t.Switch.nl.LinkByName(h.Port)
	if err != nil {
		return h, fmt.Errorf("finding switch port %s: %w", h.Port, err)
	}
	h.PortIfIndex = port.Attrs().Index
	if port.Attrs().MasterIndex != bridgeIndex {
		if err := t.Switch.nl.LinkSetMasterByIndex(port, bridgeIndex); err != nil {
			return h, fmt.Errorf("adding %s to the bridge: %w", h.Port, err)
		}
	}
	hl, err := ns.nl.LinkByName(h.Link)
	if err != nil {
		return h, fmt.Errorf("finding %s in %s: %w", h.Link, ns.Name, err)
	}
	h.IfIndex = hl.Attrs().Index

	err = t.Switch.Do(func() error {
		if err := disableOffloads(h.Port); err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: t.xdpPass, Interface: h.PortIfIndex})
		if err != nil {
			return fmt.Errorf("attaching XDP pass program to switch port %s: %w", h.Port, err)
		}
		t.xdpLinks = append(t.xdpLinks, l)
		return nil
	})
	if err != nil {
		return h, err
	}
	if err := ns.Do(func() error { return disableOffloads(h.Link) }); err != nil {
		return h, fmt.Errorf("in %s: %w", ns.Name, err)
	}
	if err := t.Switch.nl.LinkSetUp(port); err != nil {
		return h, fmt.Errorf("bringing switch port %s up: %w", h.Port, err)
	}
	if err := ns.nl.LinkSetUp(hl); err != nil {
		return h, fmt.Errorf("bringing %s up in %s: %w", h.Link, ns.Name, err)
	}
	for _, a := range []netip.Addr{h.IPv4, h.IPv6} {
		bits := LAN4.Bits()
		if a.Is6() {
			bits = LAN6.Bits()
		}
		if err := ns.nl.AddrAdd(hl, nlAddr(netip.PrefixFrom(a, bits))); err != nil {
			return h, fmt.Errorf("adding %v to %s in %s: %w", a, h.Link, ns.Name, err)
		}
	}
	return h, nil
}

// nlAddr is an address for netlink, without duplicate address detection.
func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Flags: unix.IFA_F_NODAD,
	}
}

// configureRoles sets what differs between client, load balancer and backends.
func (t *Topology) configureRoles() error {
	// The load balancer forwards: bpf_fib_lookup needs it, and packets it
	// passes to the kernel are routed on.
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
	} {
		if err := t.LB.NS.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	// Backends answer DSR traffic for VIPs on lo: accept it whatever the
	// source, and neither answer ARP for the VIPs on eth0 nor use them as
	// ARP source.
	for _, b := range t.Backends {
		for _, kv := range [][2]string{
			{"net.ipv4.conf." + hostLink + ".rp_filter", "0"},
			{"net.ipv4.conf.lo.rp_filter", "0"},
			{"net.ipv4.conf.all.accept_local", "1"},
			{"net.ipv4.conf." + hostLink + ".accept_local", "1"},
			{"net.ipv4.conf.all.arp_ignore", "1"},
			{"net.ipv4.conf.all.arp_announce", "2"},
		} {
			if err := b.NS.Sysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
	}
	// The client reaches VIPs via the load balancer.
	link, err := t.Client.NS.nl.LinkByIndex(t.Client.IfIndex)
	if err != nil {
		return fmt.Errorf("finding client link: %w", err)
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{{VIPs4, t.LB.IPv4}, {VIPs6, t.LB.IPv6}} {
		route := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())},
			Gw:        r.gw.AsSlice(),
		}
		if err := t.Client.NS.nl.RouteAdd(route); err != nil {
			return fmt.Errorf("adding client route %v via %v: %w", r.dst, r.gw, err)
		}
	}
	return nil
}

// waitReady waits until every interface is operationally up and no address
// is tentative. Until the kernel's link watcher has run, a veth that is up has
// no queueing discipline and drops what it is given.
func (t *Topology) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for _, h := range t.Hosts() {
		if err := waitLink(ctx, t.Switch, h.Port, false); err != nil {
			return err
		}
		if err := waitLink(ctx, h.NS, h.Link, true); err != nil {
			return err
		}
	}
	return waitLink(ctx, t.Switch, t.Bridge, false)
}

func waitLink(ctx context.Context, ns *NS, name string, checkAddrs bool) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ready, why, err := linkReady(ns, name, checkAddrs)
		if err != nil {
			return err
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s in %s: %s: %w", name, ns.Name, why, ctx.Err())
		case <-tick.C:
		}
	}
}

func linkReady(ns *NS, name string, checkAddrs bool) (bool, string, error) {
	l, err := ns.nl.LinkByName(name)
	if err != nil {
		return false, "", fmt.Errorf("finding %s in %s: %w", name, ns.Name, err)
	}
	if s := l.Attrs().OperState; s != netlink.OperUp {
		return false, "operational state " + s.String(), nil
	}
	if !checkAddrs {
		return true, "", nil
	}
	addrs, err := ns.nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, "", fmt.Errorf("listing addresses of %s in %s: %w", name, ns.Name, err)
	}
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			return false, fmt.Sprintf("address %v is tentative", a.IP), nil
		}
	}
	return true, "", nil
}

// AddVIPToBackends puts vip on the lo of every backend (/32 or /128), so that
// they accept traffic to it and answer it themselves (DSR).
func (t *Topology) AddVIPToBackends(vip netip.Addr) error {
	for _, b := range t.Backends {
		if err := b.AddVIP(vip); err != nil {
			return err
		}
	}
	return nil
}

// RemoveVIPFromBackends takes vip off the lo of every backend.
func (t *Topology) RemoveVIPFromBackends(vip netip.Addr) error {
	for _, b := range t.Backends {
		if err := b.RemoveVIP(vip); err != nil {
			return err
		}
	}
	return nil
}

// AddVIP puts vip on the host's lo as a /32 or /128. Adding it twice is not an
// error.
func (h *Host) AddVIP(vip netip.Addr) error {
	vip = vip.Unmap()
	lo, err := h.NS.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in %s: %w", h.NS.Name, err)
	}
	if err := h.NS.nl.AddrReplace(lo, nlAddr(netip.PrefixFrom(vip, vip.BitLen()))); err != nil {
		return fmt.Errorf("adding VIP %v to lo in %s: %w", vip, h.NS.Name, err)
	}
	return nil
}

// RemoveVIP takes vip off the host's lo.
func (h *Host) RemoveVIP(vip netip.Addr) error {
	vip = vip.Unmap()
	lo, err := h.NS.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in %s: %w", h.NS.Name, err)
	}
	if err := h.NS.nl.AddrDel(lo, nlAddr(netip.PrefixFrom(vip, vip.BitLen()))); err != nil {
		return fmt.Errorf("removing VIP %v from lo in %s: %w", vip, h.NS.Name, err)
	}
	return nil
}

// Close detaches the XDP programs and deletes every namespace of the
// topology. It is idempotent.
func (t *Topology) Close() error {
	var errs []error
	for _, l := range t.xdpLinks {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detaching XDP pass program: %w", err))
		}
	}
	t.xdpLinks = nil
	if t.xdpPass != nil {
		errs = append(errs, t.xdpPass.Close())
		t.xdpPass = nil
	}
	// Hosts first: deleting a host namespace deletes its veth and with it
	// the switch port.
	for i := len(t.namespaces) - 1; i >= 0; i-- {
		errs = append(errs, t.namespaces[i].Close())
	}
	return errors.Join(errs...)
}
