package xdp

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// restartFrame is a TCP ACK from a client to 198.18.100.1:80.
func restartFrame(t *testing.T, sport uint16) []byte {
	t.Helper()
	return packet.MustBuild(packet.Ethernet{Src: mustMAC("02:00:00:00:00:0a"), Dst: mustMAC("02:00:00:00:00:02"),
		Payload: packet.IPv4{Src: netip.MustParseAddr("198.18.0.10"), Dst: netip.MustParseAddr("198.18.100.1"), TTL: 64,
			Payload: packet.TCP{SrcPort: sport, DstPort: 80, Flags: packet.TCPAck}}})
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// TestRestartKeepsState opens a pinned datapath, attaches it, configures a
// VIP, pins a flow and counts packets; then closes it as a stopping daemon
// does and opens it again: the attachment is taken over, and the VIP, its
// table, the pinned flow and every counter are still there.
func TestRestartKeepsState(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	ns, err := testnet.NewNS("xrst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })

	err = ns.Do(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dummy0"}, PeerName: "dummy1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("dummy0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}

		opts := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128}
		d, err := Open(opts)
		if err != nil {
			return err
		}
		a, err := d.Attach("dummy0", AttachAuto)
		if err != nil {
			d.Close()
			return err
		}
		if a.Reused {
			t.Errorf("first attach: Reused = true")
		}
		if _, err := os.Stat(filepath.Join(pin, "prog_xdplb")); err != nil {
			t.Errorf("program not pinned: %v", err)
		}
		k := VIPKey{Addr: netip.MustParseAddr("198.18.100.1"), Port: 80, Proto: TCP}
		if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 7}); err != nil {
			return err
		}
		for id := uint32(1); id <= 2; id++ {
			b := Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + id)}), IfIndex: 1, NextHopMAC: mustMAC("02:00:00:00:00:1" + string('0'+rune(id))), SrcMAC: mustMAC("02:00:00:00:00:02"), MTU: 1500, Up: true}
			if err := d.UpsertBackend(id, b); err != nil {
				return err
			}
		}
		table := make([]uint32, 251)
		for i := range table {
			table[i] = uint32(1 + i%2)
		}
		if err := d.SetTable(k, table); err != nil {
			return err
		}
		flow := Flow{Src: netip.MustParseAddrPort("198.18.0.10:40000"), Dst: netip.MustParseAddrPort("198.18.100.1:80"), Proto: TCP, BackendID: 2}
		if err := d.PinFlow(flow); err != nil {
			return err
		}
		for i := 0; i < 5; i++ {
			if ret, _, err := d.Program().Test(restartFrame(t, 40000)); err != nil || ret != 3 {
				t.Errorf("packet %d before restart: verdict %d, %v; want XDP_TX", i, ret, err)
			}
		}
		before, err := d.VIPStats(k)
		if err != nil {
			return err
		}
		progBefore, err := a.ProgramID()
		if err != nil {
			return err
		}
		if err := d.Close(); err != nil {
			return err
		}

		// The program stays attached while no process holds it.
		l, _ = netlink.LinkByName("dummy0")
		if l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
			t.Fatalf("after Close: no XDP program on dummy0")
		}

		d2, err := Open(opts)
		if err != nil {
			return err
		}
		defer func() {
			if err := d2.Detach("dummy0"); err != nil {
				t.Error(err)
			}
			if err := d2.Unpin(); err != nil {
				t.Error(err)
			}
			d2.Close()
		}()
		a2, err := d2.Attach("dummy0", AttachAuto)
		if err != nil {
			return err
		}
		if !a2.Reused {
			t.Errorf("second attach: Reused = false, want the pinned link taken over")
		}
		progAfter, _ := a2.ProgramID()
		if progAfter == progBefore {
			t.Errorf("program id unchanged (%d): the new instance's program should run", progAfter)
		}
		after, err := d2.VIPStats(k)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(before, after); diff != "" {
			t.Errorf("VIP counters changed across restart (-before +after):\n%s", diff)
		}
		got, err := d2.Table(k)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(table, got); diff != "" {
			t.Errorf("table changed across restart (-want +got):\n%s", diff)
		}
		var flows []Flow
		if err := d2.Flows(func(f Flow) bool { flows = append(flows, f); return true }); err != nil {
			return err
		}
		if len(flows) != 1 || flows[0].BackendID != 2 || flows[0].Src != flow.Src {
			t.Errorf("flows after restart = %+v, want the pinned flow to backend 2", flows)
		}
		vips := d2.VIPs()
		if len(vips) != 1 || vips[0].Key != k || vips[0].HashSeed != 7 {
			t.Errorf("VIPs after restart = %+v", vips)
		}
		// A new VIP gets a fresh id, not the one in use.
		k2 := VIPKey{Addr: netip.MustParseAddr("198.18.100.2"), Port: 80, Proto: TCP}
		if err := d2.UpsertVIP(k2, VIP{Mode: ModeDSRL2}); err != nil {
			return err
		}
		for _, v := range d2.VIPs() {
			if v.Key == k2 && v.ID == vips[0].ID {
				t.Errorf("new VIP reuses id %d of a live VIP", v.ID)
			}
		}
		// The pinned flow still goes to backend 2 (MAC ...:12) and the
		// counter continues from where it was.
		_, out, err := d2.Program().Test(restartFrame(t, 40000))
		if err != nil {
			return err
		}
		if got := net.HardwareAddr(out[:6]).String(); got != "02:00:00:00:00:12" {
			t.Errorf("pinned flow after restart went to %s, want 02:00:00:00:00:12", got)
		}
		s, _ := d2.VIPStats(k)
		if s.Packets != before.Packets+1 {
			t.Errorf("VIP packets after restart = %d, want %d", s.Packets, before.Packets+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(pin); len(entries) != 0 {
		t.Errorf("pins left after Unpin: %v", entries)
	}
}

// TestResolveNextHop resolves a LAN neighbour through the kernel's ARP/NDP,
// and sees a MAC change through WatchNeighbors.
func TestResolveNextHop(t *testing.T) {
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 1})
	b := topo.Backends[0]
	err := topo.LB.NS.Do(func() error {
		for _, addr := range []netip.Addr{b.IPv4, b.IPv6} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			nh, err := ResolveNextHop(ctx, addr)
			cancel()
			if err != nil {
				return err
			}
			want := NextHop{IfIndex: topo.LB.IfIndex, Interface: topo.LB.Link, SrcMAC: topo.LB.MAC, MAC: b.MAC, Via: addr, MTU: 1500}
			if diff := cmp.Diff(want, nh, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("ResolveNextHop(%s) (-want +got):\n%s", addr, diff)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Change the backend's MAC. When the kernel learns it (here: the old entry
	// expired and a probe resolves it anew), the watcher reports it.
	newMAC := mustMAC("02:00:00:00:99:11")
	updates := make(chan NeighborUpdate, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- topo.LB.NS.Do(func() error {
			return WatchNeighbors(ctx, func(u NeighborUpdate) { updates <- u })
		})
	}()
	time.Sleep(100 * time.Millisecond)
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
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: topo.LB.IfIndex, IP: b.IPv4.AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		_ = topo.LB.NS.Do(func() error { return Probe(topo.LB.IfIndex, b.IPv4) })
		select {
		case u := <-updates:
			if u.IP == b.IPv4 && u.MAC.String() == newMAC.String() {
				cancel()
				if err := <-watchErr; err != nil {
					t.Fatal(err)
				}
				return
			}
		case <-time.After(500 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no neighbour update with the new MAC %s for %s", newMAC, b.IPv4)
		}
	}
}

// TestUpgradeWithMoreCounters: a datapath pinned by a version with fewer
// counters (a shorter stats map) is taken over by this one without losing
// its pinned flows; only the counters restart.
func TestUpgradeWithMoreCounters(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	opts := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128}
	d, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	k := VIPKey{Addr: netip.MustParseAddr("198.18.100.1"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 7}); err != nil {
		t.Fatal(err)
	}
	src, dst := netip.MustParseAddrPort("198.18.0.10:40000"), netip.MustParseAddrPort("198.18.100.1:80")
	if err := d.PinFlow(Flow{Src: src, Dst: dst, Proto: TCP, BackendID: 5}); err != nil {
		t.Fatal(err)
	}
	// What the earlier version left: a stats map of fewer entries.
	spec, err := loadLb()
	if err != nil {
		t.Fatal(err)
	}
	old := spec.Maps[lbMapStats].Copy()
	old.MaxEntries -= 4
	old.Pinning = ebpf.PinNone
	stats, err := ebpf.NewMap(old)
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	path := filepath.Join(pin, lbMapStats)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := stats.Pin(path); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d, err = Open(opts)
	if err != nil {
		t.Fatalf("opening over a datapath with fewer counters: %v", err)
	}
	defer d.Close()
	if id, ok, err := d.LookupFlow(src, dst, TCP); err != nil || !ok || id != 5 {
		t.Errorf("the pinned flow after the upgrade: backend %d, pinned %v, %v; want 5", id, ok, err)
	}
	cs, err := d.Counters()
	if err != nil || len(cs) != int(lbXdplbCounterCOUNTER_MAX) {
		t.Errorf("counters after the upgrade: %d, %v; want %d", len(cs), err, lbXdplbCounterCOUNTER_MAX)
	}
	if err := d.Unpin(); err != nil {
		t.Error(err)
	}
}
