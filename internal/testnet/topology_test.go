package testnet

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

var (
	vip4 = netip.MustParseAddr("198.18.100.1")
	vip6 = netip.MustParseAddr("2001:db8:100::1")
)

// echoServer accepts connections on l and answers each line "ping" with
// "pong from REMOTE", REMOTE being the address it sees the client at.
func echoServer(t *testing.T, l net.Listener) {
	t.Helper()
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
					return
				}
				ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
				fmt.Fprintf(c, "pong from %v\n", ap.Addr())
			}()
		}
	}()
}

// pingPong dials addr from h, sends "ping" and returns the answer.
func pingPong(t *testing.T, h *Host, addr string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestNewTopologyBackendCount(t *testing.T) {
	for _, n := range []int{-1, 101} {
		if topo, err := NewTopology(TopologyConfig{Backends: n}); err == nil {
			topo.Close()
			t.Errorf("NewTopology(Backends: %d) succeeded, want an error", n)
		}
	}
}

func TestTopologyLayout(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 4})
	type hostInfo struct {
		Name, Link, Port string
		MAC              string
		IPv4, IPv6       netip.Addr
	}
	var got []hostInfo
	for _, h := range topo.Hosts() {
		got = append(got, hostInfo{h.Name, h.Link, h.Port, h.MAC.String(), h.IPv4, h.IPv6})
		l, err := h.NS.Netlink().LinkByIndex(h.IfIndex)
		if err != nil || l.Attrs().Name != h.Link || l.Attrs().HardwareAddr.String() != h.MAC.String() {
			t.Errorf("%s: link %d in %s: %v, %v; want %s with %v", h.Name, h.IfIndex, h.NS.Name, l, err, h.Link, h.MAC)
		}
		p, err := topo.Switch.Netlink().LinkByIndex(h.PortIfIndex)
		if err != nil || p.Attrs().Name != h.Port {
			t.Errorf("%s: port %d: %v, %v; want %s", h.Name, h.PortIfIndex, p, err, h.Port)
		}
	}
	a := netip.MustParseAddr
	want := []hostInfo{
		{"client", "eth0", "client", "02:78:6c:00:00:0a", a("198.18.0.10"), a("2001:db8::10")},
		{"lb", "eth0", "lb", "02:78:6c:00:00:02", a("198.18.0.2"), a("2001:db8::2")},
		{"b1", "eth0", "b1", "02:78:6c:00:00:0b", a("198.18.0.11"), a("2001:db8::11")},
		{"b2", "eth0", "b2", "02:78:6c:00:00:0c", a("198.18.0.12"), a("2001:db8::12")},
		{"b3", "eth0", "b3", "02:78:6c:00:00:0d", a("198.18.0.13"), a("2001:db8::13")},
		{"b4", "eth0", "b4", "02:78:6c:00:00:0e", a("198.18.0.14"), a("2001:db8::14")},
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); d != "" {
		t.Errorf("hosts (-want +got):\n%s", d)
	}
}

// TestTopologyTCP connects the client to every other host by TCP over IPv4 and
// IPv6, on their LAN addresses.
func TestTopologyTCP(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{})
	for _, h := range append([]*Host{topo.LB}, topo.Backends...) {
		for _, addr := range []netip.Addr{h.IPv4, h.IPv6} {
			t.Run(h.Name+"/"+addr.String(), func(t *testing.T) {
				l, err := h.Listen("tcp", netip.AddrPortFrom(addr, 8080).String())
				if err != nil {
					t.Fatal(err)
				}
				echoServer(t, l)
				got, err := pingPong(t, topo.Client, l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				client := topo.Client.IPv4
				if addr.Is6() {
					client = topo.Client.IPv6
				}
				if want := fmt.Sprintf("pong from %v\n", client); got != want {
					t.Errorf("got %q, want %q", got, want)
				}
			})
		}
	}
}

func TestTopologyPortsRunXDP(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{})
	ids := map[uint32]bool{}
	for _, h := range topo.Hosts() {
		p, err := topo.Switch.Netlink().LinkByName(h.Port)
		if err != nil {
			t.Fatal(err)
		}
		x := p.Attrs().Xdp
		if x == nil || !x.Attached || x.ProgId == 0 {
			t.Errorf("switch port %s: XDP %+v, want a program attached", h.Port, x)
			continue
		}
		ids[x.ProgId] = true
	}
	if len(ids) > 1 {
		t.Errorf("ports run different programs %v, want the one pass program", ids)
	}
}

func TestTopologyOffloadsOff(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{})
	for _, h := range topo.Hosts() {
		var on []string
		err := h.NS.Do(func() (err error) { on, err = offloadsOn(h.Link); return err })
		if err != nil || len(on) > 0 {
			t.Errorf("%s %s: offloads on %v, %v", h.Name, h.Link, on, err)
		}
		err = topo.Switch.Do(func() (err error) { on, err = offloadsOn(h.Port); return err })
		if err != nil || len(on) > 0 {
			t.Errorf("switch port %s: offloads on %v, %v", h.Port, on, err)
		}
	}
}

func TestTopologySysctls(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 1})
	tests := []struct {
		host *Host
		key  string
		want string
	}{
		{topo.LB, "net.ipv4.ip_forward", "1"},
		{topo.LB, "net.ipv6.conf.all.forwarding", "1"},
		{topo.LB, "net.ipv6.conf.eth0.forwarding", "1"},
		{topo.LB, "net.ipv4.conf.eth0.send_redirects", "0"},
		{topo.Client, "net.ipv4.ip_forward", "0"},
		{topo.Client, "net.ipv4.conf.eth0.accept_redirects", "0"},
		{topo.Client, "net.ipv6.conf.eth0.accept_dad", "0"},
		{topo.Backends[0], "net.ipv4.conf.all.rp_filter", "0"},
		{topo.Backends[0], "net.ipv4.conf.eth0.rp_filter", "0"},
		{topo.Backends[0], "net.ipv4.conf.lo.rp_filter", "0"},
		{topo.Backends[0], "net.ipv4.conf.eth0.accept_local", "1"},
		{topo.Backends[0], "net.ipv4.conf.all.arp_ignore", "1"},
		{topo.Backends[0], "net.ipv6.conf.eth0.accept_dad", "0"},
	}
	for _, tt := range tests {
		got, err := tt.host.NS.ReadSysctl(tt.key)
		if err != nil || got != tt.want {
			t.Errorf("%s: %s = %q, %v; want %q", tt.host.Name, tt.key, got, err, tt.want)
		}
	}
	if got, err := topo.Switch.ReadSysctl("net.ipv6.conf." + topo.LB.Port + ".disable_ipv6"); err != nil || got != "1" {
		t.Errorf("switch: IPv6 on port %s: disable_ipv6 = %q, %v; want 1", topo.LB.Port, got, err)
	}
}

func TestTopologyClientRoutesVIPsViaLB(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 1})
	for _, tt := range []struct{ vip, gw netip.Addr }{{vip4, topo.LB.IPv4}, {vip6, topo.LB.IPv6}} {
		routes, err := topo.Client.NS.Netlink().RouteGet(tt.vip.AsSlice())
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 1 || !routes[0].Gw.Equal(tt.gw.AsSlice()) || routes[0].LinkIndex != topo.Client.IfIndex {
			t.Errorf("client route to %v: %+v, want via %v dev %s", tt.vip, routes, tt.gw, topo.Client.Link)
		}
	}
}

func TestTopologyCloseRemovesEverything(t *testing.T) {
	RequirePrivileged(t)
	topo, err := NewTopology(TopologyConfig{Backends: 2})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			topo.Close()
		}
	})
	var names []string
	for _, ns := range append([]*NS{topo.Switch}, topo.Client.NS, topo.LB.NS, topo.Backends[0].NS, topo.Backends[1].NS) {
		names = append(names, ns.Name)
	}
	during := netnsNames(t)
	for _, n := range names {
		if !slices.Contains(during, n) {
			t.Errorf("namespace %s not in %s: %v", n, NetnsDir, during)
		}
	}
	closed = true
	if err := topo.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Other tests (of other packages, run at once) come and go: look only
	// at this topology's namespaces.
	after := netnsNames(t)
	for _, n := range names {
		if slices.Contains(after, n) {
			t.Errorf("namespace %s still in %s after Close: %v", n, NetnsDir, after)
		}
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestTopologyVIPOnBackends(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 2})
	for _, vip := range []netip.Addr{vip4, vip6} {
		if err := topo.AddVIPToBackends(vip); err != nil {
			t.Fatal(err)
		}
		if err := topo.AddVIPToBackends(vip); err != nil {
			t.Fatalf("adding %v twice: %v", vip, err)
		}
	}
	for _, b := range topo.Backends {
		lo, err := b.NS.Netlink().LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := b.NS.Netlink().AddrList(lo, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		for _, want := range []string{"198.18.100.1/32", "2001:db8:100::1/128"} {
			if !slices.Contains(got, want) {
				t.Errorf("%s lo: %v, want %s", b.Name, got, want)
			}
		}
	}
	if err := topo.RemoveVIPFromBackends(vip4); err != nil {
		t.Fatal(err)
	}
}

// TestTopologyKernelDSR routes the VIPs through the load balancer's kernel to
// backend 1, which answers from the VIP straight to the client: DSR without
// XDP, to check the backends' settings on their own.
func TestTopologyKernelDSR(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 2})
	b1 := topo.Backends[0]
	nl := topo.LB.NS.Netlink()
	for _, r := range []struct{ vip, via netip.Addr }{{vip4, b1.IPv4}, {vip6, b1.IPv6}} {
		err := nl.RouteAdd(&netlink.Route{
			LinkIndex: topo.LB.IfIndex,
			Dst:       &net.IPNet{IP: r.vip.AsSlice(), Mask: net.CIDRMask(r.vip.BitLen(), r.vip.BitLen())},
			Gw:        r.via.AsSlice(),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	testDSR(t, topo)
}

// testDSR checks that the client reaches the VIPs on port 80 and that backend
// 1 answers.
func testDSR(t *testing.T, topo *Topology) {
	t.Helper()
	if err := topo.AddVIPToBackends(vip4); err != nil {
		t.Fatal(err)
	}
	if err := topo.AddVIPToBackends(vip6); err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Addr{vip4, vip6} {
		addr := netip.AddrPortFrom(vip, 80).String()
		l, err := topo.Backends[0].Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, l)
		got, err := pingPong(t, topo.Client, addr)
		if err != nil {
			t.Fatalf("client to %s: %v", addr, err)
		}
		client := topo.Client.IPv4
		if vip.Is6() {
			client = topo.Client.IPv6
		}
		if want := fmt.Sprintf("pong from %v\n", client); got != want {
			t.Errorf("client to %s: got %q, want %q", addr, got, want)
		}
	}
}

// l2DSRProgram returns an XDP program that sends frames to vip4 or vip6 back
// out of the interface (XDP_TX) with the destination MAC dst and the source
// MAC src, and passes everything else: L2 DSR in miniature.
func l2DSRProgram(t *testing.T, dst, src net.HardwareAddr) *ebpf.Program {
	t.Helper()
	le32 := func(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) }
	le16 := func(b []byte) int64 { return int64(binary.LittleEndian.Uint16(b)) }
	v4, v6 := vip4.As4(), vip6.As16()
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JEq.Imm(asm.R5, 0x0008, "ipv4"), // 0x0800 read little-endian
		asm.JEq.Imm(asm.R5, 0xdd86, "ipv6"),
		asm.Ja.Label("pass"),

		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("ipv4"),
		asm.Add.Imm(asm.R4, 14+20),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 14+16, asm.Word),
		asm.JNE.Imm32(asm.R5, le32(v4[:]), "pass"),
		asm.Ja.Label("rewrite"),

		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("ipv6"),
		asm.Add.Imm(asm.R4, 14+40),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
	}
	for i := range 4 {
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R2, int16(14+24+4*i), asm.Word),
			asm.JNE.Imm32(asm.R5, le32(v6[4*i:]), "pass"),
		)
	}
	insns = append(insns,
		asm.StoreImm(asm.R2, 0, int64(le32(dst[0:4])), asm.Word).WithSymbol("rewrite"),
		asm.StoreImm(asm.R2, 4, le16(dst[4:6]), asm.Half),
		asm.StoreImm(asm.R2, 6, int64(le32(src[0:4])), asm.Word),
		asm.StoreImm(asm.R2, 10, le16(src[4:6]), asm.Half),
		asm.Mov.Imm(asm.R0, 3), // XDP_TX
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "test_l2dsr", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatalf("loading L2 DSR program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestTopologyXDPTXReachesBackend runs the datapath's L2 DSR path in
// miniature: an XDP program on the load balancer's eth0 rewrites the MACs of
// VIP traffic and bounces it out with XDP_TX to backend 1, which answers the
// client directly. It passes only if XDP_TX onto the veth arrives (the switch
// port runs an XDP program) and the forwarded frames carry full checksums
// (checksum offload is off on the client).
func TestTopologyXDPTXReachesBackend(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 2})
	prog := l2DSRProgram(t, topo.Backends[0].MAC, topo.LB.MAC)
	err := topo.LB.NS.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: topo.LB.IfIndex, Flags: link.XDPDriverMode})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Fatalf("attaching L2 DSR program to the load balancer: %v", err)
	}
	testDSR(t, topo)
}

// readSNMP returns the counter name of the /proc/net/snmp (IPv4) or snmp6 table
// inside the namespace, e.g. ("Udp", "InCsumErrors") or ("", "Udp6InCsumErrors").
func readSNMP(t *testing.T, ns *NS, group, name string) int {
	t.Helper()
	file := "snmp6"
	if group != "" {
		file = "snmp"
	}
	var b []byte
	// /proc/net follows the process's main thread; thread-self follows
	// this thread, which Do puts into the namespace.
	err := ns.Do(func() (err error) { b, err = os.ReadFile("/proc/thread-self/net/" + file); return err })
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		f := strings.Fields(line)
		if group == "" && len(f) == 2 && f[0] == name {
			var v int
			fmt.Sscan(f[1], &v)
			return v
		}
		if group != "" && len(f) > 0 && f[0] == group+":" && i+1 < len(lines) {
			vals := strings.Fields(lines[i+1])
			if j := slices.Index(f, name); j > 0 && j < len(vals) {
				var v int
				fmt.Sscan(vals[j], &v)
				return v
			}
		}
	}
	t.Fatalf("no counter %s %s in %s", group, name, file)
	return 0
}
