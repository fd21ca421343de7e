package announce_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/announce"
	"github.com/xdplb/xdplb/internal/testnet"
)

// VIPs inside the client's subnet: the client resolves them itself (by ARP
// and NDP) instead of routing them via the load balancer.
var (
	vip4 = netip.MustParseAddr("198.18.0.100")
	vip6 = netip.MustParseAddr("2001:db8::100")
	vips = []netip.Addr{vip4, vip6}
)

// failoverBudget is the longest a client may keep the old appliance's MAC
// after the VIPs moved.
const failoverBudget = 2 * time.Second

// startAnnouncer runs an announcer on h's eth0 until the test ends.
func startAnnouncer(t *testing.T, h *testnet.Host, opts announce.Options) *announce.Announcer {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", h.Name)
	var a *announce.Announcer
	err := h.NS.Do(func() error {
		var err error
		a, err = announce.New(h.Link, opts, log)
		return err
	})
	if err != nil {
		t.Fatalf("on %s: %v", h.Name, err)
	}
	if got := a.MAC().String(); got != h.MAC.String() {
		t.Errorf("announcer on %s gives out %s, want the interface's MAC %s", h.Name, got, h.MAC)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run on %s: %v", h.Name, err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close on %s: %v", h.Name, err)
		}
	})
	return a
}

func stateName(s int) string {
	for _, st := range []struct {
		bit  int
		name string
	}{
		{netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_REACHABLE, "REACHABLE"}, {netlink.NUD_STALE, "STALE"},
		{netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"}, {netlink.NUD_FAILED, "FAILED"},
		{netlink.NUD_NOARP, "NOARP"}, {netlink.NUD_PERMANENT, "PERMANENT"},
	} {
		if s&st.bit != 0 {
			return st.name
		}
	}
	return fmt.Sprintf("state %#x", s)
}

// sendUDP sends one datagram from the client to addr, which makes its kernel
// resolve addr if it has no entry.
func sendUDP(t *testing.T, client *testnet.Host, addr netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "udp", netip.AddrPortFrom(addr, 9).String())
	if err != nil {
		t.Fatalf("dialing %v from the client: %v", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("who has it?")); err != nil {
		t.Fatalf("sending to %v from the client: %v", addr, err)
	}
}

// resolve makes the client resolve addr and waits until its entry has a
// MAC; it returns the MAC.
func resolve(t *testing.T, client *testnet.Host, addr netip.Addr) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for next := time.Now(); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(next) {
			sendUDP(t, client, addr)
			next = time.Now().Add(time.Second)
		}
		if mac := testnet.UsableMAC(testnet.NeighborOf(t, client, addr)); mac != "" {
			return mac
		}
	}
	n, ok := testnet.NeighborOf(t, client, addr)
	t.Fatalf("the client did not resolve %v within 5 s (entry %v: %v %s)", addr, ok, n.HardwareAddr, stateName(n.State))
	return ""
}

// checkNoAddress fails if h holds any of addrs.
func checkNoAddress(t *testing.T, h *testnet.Host, addrs ...netip.Addr) {
	t.Helper()
	list, err := h.NS.Netlink().AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		got, _ := netip.AddrFromSlice(a.IP)
		for _, vip := range addrs {
			if got.Unmap() == vip {
				t.Fatalf("%s holds %v itself: the test would not show the announcer answering", h.Name, vip)
			}
		}
	}
}

// removeAddresses takes every IPv4 and IPv6 address off h's eth0 (IPv6 is
// disabled on it, which removes the link-local address too).
func removeAddresses(t *testing.T, h *testnet.Host) {
	t.Helper()
	nl := h.NS.Netlink()
	link, err := nl.LinkByIndex(h.IfIndex)
	if err != nil {
		t.Fatal(err)
	}
	list, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		if err := nl.AddrDel(link, &a); err != nil {
			t.Fatalf("removing %v from %s: %v", a.IPNet, h.Name, err)
		}
	}
	if err := h.NS.Sysctl("net/ipv6/conf/"+h.Link+"/disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	if list, err = nl.AddrList(link, netlink.FAMILY_ALL); err != nil || len(list) != 0 {
		t.Fatalf("%s still has addresses %v (%v)", h.Name, list, err)
	}
}

// TestResolveVIPs checks that a client resolves an IPv4 and an IPv6 VIP to
// the MAC of the host running the announcer, which does not hold the VIPs,
// also when its interface has no address at all.
func TestResolveVIPs(t *testing.T) {
	testnet.RequirePrivileged(t)
	for _, noAddrs := range []bool{false, true} {
		name := "with addresses"
		if noAddrs {
			name = "interface without addresses"
		}
		t.Run(name, func(t *testing.T) {
			topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 1})
			client, lb := topo.Client, topo.LB
			if noAddrs {
				removeAddresses(t, lb)
			}
			checkNoAddress(t, lb, vips...)
			a := startAnnouncer(t, lb, announce.Options{})
			a.SetVIPs(vips)

			// The gratuitous announcements create no entry (Linux
			// ignores them for unknown neighbours by default), so the
			// entries below come from the client's own resolution.
			time.Sleep(100 * time.Millisecond)
			for _, vip := range vips {
				if n, ok := testnet.NeighborOf(t, client, vip); ok {
					t.Fatalf("the client has an entry for %v before resolving it: %v %s", vip, n.HardwareAddr, stateName(n.State))
				}
			}

			notVIP := netip.MustParseAddr("198.18.0.101")
			sendUDP(t, client, notVIP)
			for _, vip := range vips {
				if got := resolve(t, client, vip); got != lb.MAC.String() {
					t.Errorf("the client resolved %v to %s, want the lb's %s", vip, got, lb.MAC)
				}
			}
			if mac := testnet.UsableMAC(testnet.NeighborOf(t, client, notVIP)); mac != "" {
				t.Errorf("the client resolved %v, which is no VIP, to %s", notVIP, mac)
			}

			s := a.Stats()
			if len(s.VIPs) != 2 {
				t.Fatalf("Stats().VIPs = %+v, want two", s.VIPs)
			}
			for _, v := range s.VIPs {
				if v.Requests == 0 || v.Replies == 0 || v.Gratuitous == 0 {
					t.Errorf("stats of %v = %+v, want requests, replies and gratuitous packets", v.VIP, v)
				}
			}
			if s.ARP.Drops[announce.ReasonNotOurs] == 0 {
				t.Errorf("ARP drops = %v, want the request for %v counted as not ours", s.ARP.Drops, notVIP)
			}
			t.Logf("stats: ARP %+v, NDP %+v, VIPs %+v", s.ARP, s.NDP, s.VIPs)
		})
	}
}

// TestFailover moves the VIPs from one appliance (lb) to another (b3) and
// checks that the client's existing neighbour entries follow within
// failoverBudget, through the new owner's gratuitous ARP and unsolicited NA
// alone: the client sends nothing meanwhile.
func TestFailover(t *testing.T) {
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	client, first, second := topo.Client, topo.LB, topo.Backends[2]
	checkNoAddress(t, first, vips...)
	checkNoAddress(t, second, vips...)
	a1 := startAnnouncer(t, first, announce.Options{})
	a2 := startAnnouncer(t, second, announce.Options{})

	a1.SetVIPs(vips)
	for _, vip := range vips {
		if got := resolve(t, client, vip); got != first.MAC.String() {
			t.Fatalf("before failover the client resolved %v to %s, want the first appliance's %s", vip, got, first.MAC)
		}
	}
	// Let the first appliance's announcements end, as they would have
	// long before a real failover.
	time.Sleep(2500 * time.Millisecond)

	start := time.Now()
	a1.SetVIPs(nil)
	a2.SetVIPs(vips)
	took := map[netip.Addr]time.Duration{}
	for len(took) < len(vips) && time.Since(start) < 3*failoverBudget {
		for _, vip := range vips {
			if _, done := took[vip]; done {
				continue
			}
			n, ok := testnet.NeighborOf(t, client, vip)
			if testnet.UsableMAC(n, ok) == second.MAC.String() {
				took[vip] = time.Since(start)
				t.Logf("%v: the client's entry points to the second appliance %s after %v (state %s)", vip, second.MAC, took[vip], stateName(n.State))
			}
		}
		time.Sleep(time.Millisecond)
	}
	for _, vip := range vips {
		d, ok := took[vip]
		n, _ := testnet.NeighborOf(t, client, vip)
		switch {
		case !ok:
			t.Errorf("%v: after %v the client's entry is %v %s, want the second appliance's %s", vip, 3*failoverBudget, n.HardwareAddr, stateName(n.State), second.MAC)
		case d > failoverBudget:
			t.Errorf("%v: the client took %v to follow the VIP, want at most %v", vip, d, failoverBudget)
		}
	}

	// The new owner answers the client's next resolution too, and the old
	// one no longer does.
	for _, vip := range vips {
		if err := client.NS.Netlink().NeighDel(&netlink.Neigh{LinkIndex: client.IfIndex, IP: net.IP(vip.AsSlice())}); err != nil {
			t.Fatalf("deleting the client's entry for %v: %v", vip, err)
		}
		if got := resolve(t, client, vip); got != second.MAC.String() {
			t.Errorf("after failover the client resolved %v afresh to %s, want %s", vip, got, second.MAC)
		}
	}
	s1, s2 := a1.Stats(), a2.Stats()
	if len(s1.VIPs) != 0 {
		t.Errorf("the first appliance still has VIPs: %+v", s1.VIPs)
	}
	for _, v := range s2.VIPs {
		if v.Gratuitous == 0 || v.Replies == 0 {
			t.Errorf("second appliance, %v: %+v, want gratuitous packets and replies", v.VIP, v)
		}
	}
}

// TestUnicastProbe checks that the announcer answers the unicast requests a
// client sends to confirm an entry it has (ARP to the cached MAC, NS to the
// VIP itself: RFC 4861 neighbour unreachability detection), so that entries
// go from STALE back to REACHABLE without a new broadcast resolution. If the
// probes went unanswered the entry would fail after three of them, 1 s apart.
func TestUnicastProbe(t *testing.T) {
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 1})
	client, lb := topo.Client, topo.LB
	// Entries go stale after 100-300 ms and are probed at once.
	for _, fam := range []string{"ipv4", "ipv6"} {
		for k, v := range map[string]string{"base_reachable_time_ms": "200", "delay_first_probe_time": "0"} {
			if err := client.NS.Sysctl("net/"+fam+"/neigh/"+client.Link+"/"+k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := startAnnouncer(t, lb, announce.Options{})
	a.SetVIPs(vips)
	for _, vip := range vips {
		resolve(t, client, vip)
	}
	for _, vip := range vips {
		waitState(t, client, vip, netlink.NUD_STALE, 3*time.Second)
	}
	before := a.Stats().VIPs
	for _, vip := range vips {
		sendUDP(t, client, vip)
	}
	for _, vip := range vips {
		n := waitState(t, client, vip, netlink.NUD_REACHABLE, time.Second)
		if n.HardwareAddr.String() != lb.MAC.String() {
			t.Errorf("%v: confirmed at %v, want %v", vip, n.HardwareAddr, lb.MAC)
		}
	}
	after := a.Stats().VIPs
	for i := range after {
		if after[i].Requests <= before[i].Requests || after[i].Replies <= before[i].Replies {
			t.Errorf("%v: requests %d → %d, replies %d → %d; want both to grow", after[i].VIP,
				before[i].Requests, after[i].Requests, before[i].Replies, after[i].Replies)
		}
	}
}

// waitState waits until the client's entry for addr is in state, failing if
// it ever becomes INCOMPLETE or FAILED (a resolution from scratch).
func waitState(t *testing.T, client *testnet.Host, addr netip.Addr, state int, timeout time.Duration) netlink.Neigh {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, ok := testnet.NeighborOf(t, client, addr)
		switch {
		case !ok || n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0:
			t.Fatalf("%v: the client's entry is %v %s, want it kept and %s", addr, n.HardwareAddr, stateName(n.State), stateName(state))
		case n.State&state != 0:
			return n
		case time.Now().After(deadline):
			t.Fatalf("%v: the client's entry is %v %s after %v, want %s", addr, n.HardwareAddr, stateName(n.State), timeout, stateName(state))
		}
		time.Sleep(2 * time.Millisecond)
	}
}
