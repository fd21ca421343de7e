package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/testnet"
)

// iface is one end of a veth in a benchmark topology.
type iface struct {
	NS    *testnet.NS
	Name  string
	Index int
	MAC   net.HardwareAddr
	Addr  netip.Prefix
}

// shortID names the interfaces of one topology: unique on the host, so that
// the napi/DEV-N threads of two topologies are told apart, and short, so
// that the thread names (15 bytes) still hold the whole device name.
func shortID() string {
	b := make([]byte, 2)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// hostSysctls are set in every benchmark namespace: no IPv6 (no neighbour
// discovery chatter on the links), no ICMP redirects, no reverse-path filter
// (DSR replies come back on another link than the requests go out).
var benchSysctls = [][2]string{
	{"net.ipv6.conf.all.disable_ipv6", "1"},
	{"net.ipv6.conf.default.disable_ipv6", "1"},
	{"net.ipv4.ip_forward", "0"},
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv4.conf.all.accept_redirects", "0"},
	{"net.ipv4.conf.default.accept_redirects", "0"},
	{"net.ipv4.conf.all.send_redirects", "0"},
	{"net.ipv4.conf.default.send_redirects", "0"},
}

// newBenchNS makes a namespace with benchSysctls.
func newBenchNS(prefix string) (*testnet.NS, error) {
	ns, err := testnet.NewNS(prefix)
	if err != nil {
		return nil, err
	}
	for _, kv := range benchSysctls {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return nil, errors.Join(err, ns.Close())
		}
	}
	return ns, nil
}

// addVeth joins a (in a.NS) and b (in b.NS) with a veth, with the MACs and
// addresses given, transmit offloads off, both up. It fills in the indexes.
func addVeth(a, b *iface) error {
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC},
		PeerName:         b.Name,
		PeerHardwareAddr: b.MAC,
		PeerNamespace:    netlink.NsFd(int(b.NS.Handle())),
	}
	if err := a.NS.Netlink().LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s (%s) / %s (%s): %w", a.Name, a.NS.Name, b.Name, b.NS.Name, err)
	}
	for _, e := range []*iface{a, b} {
		l, err := e.NS.Netlink().LinkByName(e.Name)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", e.Name, e.NS.Name, err)
		}
		e.Index = l.Attrs().Index
		if err := e.NS.Do(func() error { return testnet.DisableOffloads(e.Name) }); err != nil {
			return fmt.Errorf("in %s: %w", e.NS.Name, err)
		}
		if e.Addr.IsValid() {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: e.Addr.Addr().AsSlice(), Mask: net.CIDRMask(e.Addr.Bits(), 32)}}
			if err := e.NS.Netlink().AddrAdd(l, addr); err != nil {
				return fmt.Errorf("adding %v to %s in %s: %w", e.Addr, e.Name, e.NS.Name, err)
			}
		}
		if err := e.NS.Netlink().LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing %s up in %s: %w", e.Name, e.NS.Name, err)
		}
	}
	return nil
}

// waitUp waits until every interface is operationally up: until then a veth
// drops what it is given.
func waitUp(ctx context.Context, ifs ...*iface) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, e := range ifs {
		for {
			l, err := e.NS.Netlink().LinkByName(e.Name)
			if err != nil {
				return fmt.Errorf("finding %s in %s: %w", e.Name, e.NS.Name, err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s in %s to come up: %w", e.Name, e.NS.Name, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// linkStats reads an interface's counters.
func linkStats(e *iface) (*netlink.LinkStatistics, error) {
	l, err := e.NS.Netlink().LinkByName(e.Name)
	if err != nil {
		return nil, fmt.Errorf("reading counters of %s in %s: %w", e.Name, e.NS.Name, err)
	}
	if l.Attrs().Statistics == nil {
		return nil, fmt.Errorf("reading counters of %s in %s: none", e.Name, e.NS.Name)
	}
	return l.Attrs().Statistics, nil
}

// attachXDP attaches prog to e in native mode.
func attachXDP(e *iface, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := e.NS.Do(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: e.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attaching %s to %s in %s: %w", prog, e.Name, e.NS.Name, err)
	}
	return l, nil
}

// udpFrame is the generator's frame: IPv4 UDP from src to dst (port sport,
// which the generator varies), from one MAC to another, 64 bytes on the wire
// without the FCS, UDP checksum 0.
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	payload := make([]byte, 22)
	copy(payload, "xdplb bench forward!")
	b, err := buildUDP(srcMAC, dstMAC, src, dst, sport, dport, payload)
	if err != nil {
		panic(err) // the inputs are constants of the benchmark
	}
	return b
}

// capture reads the IPv4 frames that arrive on e (not those it sends) with
// a packet socket, until n have come or timeout passes.
type capture struct {
	fd int
}

func openCapture(e *iface) (*capture, error) {
	var fd int
	err := e.NS.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: e.Index})
	})
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("packet socket on %s in %s: %w", e.Name, e.NS.Name, err)
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &capture{fd: fd}, nil
}

func (c *capture) Close() error { return unix.Close(c.fd) }

func (c *capture) read(n int, timeout time.Duration) ([][]byte, error) {
	var out [][]byte
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for len(out) < n && time.Now().Before(deadline) {
		m, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return out, err
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING || m < 14 || buf[12] != 0x08 || buf[13] != 0x00 {
			continue
		}
		out = append(out, append([]byte(nil), buf[:m]...))
	}
	return out, nil
}

// genBatch is the generator's batch: live frames run this many programs with
// bottom halves off, then transmit them. Small, so that a sink's NAPI thread
// on the generator's CPU gets to drain its ring between two batches.
var genBatch uint32 = 32
