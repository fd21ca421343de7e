package main

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestDaemonFollowsNeighbour changes a backend's MAC while the daemon runs:
// once the appliance's kernel learns the new MAC, the daemon rewrites the
// backend's entry and connections reach it again (frames to the old MAC
// would be dropped by the backend).
func TestDaemonFollowsNeighbour(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 1})
	srv, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	socket := filepath.Join(dir, "xdplb.sock")
	b := topo.Backends[0]
	writeAtomically(t, cfgPath, testConfig(dir, bpf, []string{b.IPv4.String()}, "127.0.0.1:9652"))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
	})
	if _, err := srv.Connections(ctx, scenario.VIP4, 20, 4); err != nil {
		t.Fatal(err)
	}

	// The backend's NIC is replaced; the appliance's kernel learns the new
	// MAC (as it would from the backend's gratuitous ARP).
	newMAC := net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x99, 0x0b}
	if err := b.NS.Do(func() error {
		l, err := netlink.LinkByName(b.Link)
		if err != nil {
			return err
		}
		return netlink.LinkSetHardwareAddr(l, newMAC)
	}); err != nil {
		t.Fatal(err)
	}
	if err := topo.LB.NS.Do(func() error {
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: topo.LB.IfIndex, Family: netlink.FAMILY_V4,
			IP: b.IPv4.AsSlice(), HardwareAddr: newMAC, State: netlink.NUD_REACHABLE})
	}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	for {
		var bs []BackendInfo
		if err := controlplane.Call(ctx, socket, Request{Command: "backends"}, &bs); err != nil {
			t.Fatal(err)
		}
		updated := len(bs) > 0
		for _, e := range bs {
			updated = updated && e.NextHopMAC == newMAC.String()
		}
		if updated {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("5 s after the kernel learned %s for %s, the entry still says %+v", newMAC, b.IPv4, bs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the entry followed the new MAC within %v", time.Since(start).Round(time.Millisecond))
	for _, vip := range []netip.Addr{scenario.VIP4, scenario.VIP6} {
		counts, err := srv.Connections(ctx, vip, 20, 4)
		if err != nil || counts[b.Name] != 20 {
			t.Errorf("%s after the MAC change: %v, %v", vip, counts, err)
		}
	}
}

// TestDaemonFollowsGatewayAndRoute runs a backend that is routed through a
// gateway: when the gateway's MAC changes, and then when the route moves to
// another gateway, the backend's entry follows within a second.
func TestDaemonFollowsGatewayAndRoute(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 2})
	gw0, gw1 := topo.Backends[0], topo.Backends[1]
	routed := netip.MustParsePrefix("198.18.50.0/24")
	backend := netip.MustParseAddr("198.18.50.10")
	// The gateways' MACs are known beforehand, as on a busy LAN, so what is
	// timed is the daemon's reaction.
	setNeigh := func(gw *testnet.Host, mac net.HardwareAddr) {
		t.Helper()
		if err := topo.LB.NS.Do(func() error {
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: topo.LB.IfIndex, Family: netlink.FAMILY_V4,
				IP: gw.IPv4.AsSlice(), HardwareAddr: mac, State: netlink.NUD_PERMANENT})
		}); err != nil {
			t.Fatal(err)
		}
	}
	setRoute := func(gw *testnet.Host) {
		t.Helper()
		if err := topo.LB.NS.Do(func() error {
			return netlink.RouteReplace(&netlink.Route{LinkIndex: topo.LB.IfIndex, Dst: netipNet(routed), Gw: gw.IPv4.AsSlice()})
		}); err != nil {
			t.Fatal(err)
		}
	}
	setNeigh(gw0, gw0.MAC)
	setNeigh(gw1, gw1.MAC)
	setRoute(gw0)

	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	socket := filepath.Join(dir, "xdplb.sock")
	f := testFiles{Socket: socket, State: dir + "/state", BPF: bpf, Metrics: "127.0.0.1:9653"}
	writeAtomically(t, cfgPath, applianceYAML(f, "198.18.0.2", "2001:db8::2",
		"services:\n"+serviceYAML("routed", "198.18.100.1", []string{backend.String()}, "")))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
	})

	// waitMAC waits until the backend's entry goes to mac, for at most a
	// second after the change.
	waitMAC := func(what string, mac net.HardwareAddr) {
		t.Helper()
		start := time.Now()
		for {
			var bs []BackendInfo
			if err := controlplane.Call(ctx, socket, Request{Command: "backends"}, &bs); err != nil {
				t.Fatal(err)
			}
			if len(bs) == 1 && bs[0].NextHopMAC == mac.String() {
				t.Logf("%s: the entry followed within %v", what, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s: a second later the entry still says %+v, want next hop %s", what, bs, mac)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitMAC("start", gw0.MAC)

	// The gateway's NIC is replaced.
	newMAC := net.HardwareAddr{0x02, 0x78, 0x6c, 0x00, 0x99, 0x0c}
	setNeigh(gw0, newMAC)
	waitMAC("gateway MAC changed", newMAC)

	// The route moves to the other gateway.
	setRoute(gw1)
	waitMAC("route moved", gw1.MAC)
}

func netipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
