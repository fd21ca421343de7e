package main

// End-to-end tests of L2 announcements with the real daemon: VIPs inside the
// client's own subnet, which its kernel resolves by ARP and NDP, with no
// static neighbour entry anywhere.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// The VIPs of these tests: inside the LAN (198.18.0.0/24, 2001:db8::/64), so
// the client resolves them itself instead of routing them via the lb.
var (
	annVIP4 = netip.MustParseAddr("198.18.0.100")
	annVIP6 = netip.MustParseAddr("2001:db8::100")
	annVIPs = []netip.Addr{annVIP4, annVIP6}
)

// annFailoverBudget is the longest the client may keep the old appliance's
// MAC after the VIPs moved (issue 5).
const annFailoverBudget = 2 * time.Second

// annService is a service of an appliance's configuration.
type annService struct {
	name     string
	vip      netip.Addr
	backends []*testnet.Host
	// healthCheck is the service's healthCheck in YAML flow style, "" for
	// none (every backend counts as healthy).
	healthCheck string
}

// annServices are web4 and web6 on the in-subnet VIPs, port 80/tcp, L2 DSR.
func annServices(backends []*testnet.Host, healthCheck string) []annService {
	return []annService{
		{name: "web4", vip: annVIP4, backends: backends, healthCheck: healthCheck},
		{name: "web6", vip: annVIP6, backends: backends, healthCheck: healthCheck},
	}
}

// annAppliance is `xdplb run` on one host of the topology, with its own
// configuration file, socket, state directory, bpffs directory and metrics
// address.
type annAppliance struct {
	t       *testing.T
	bin     string
	host    *testnet.Host
	dir     string
	bpf     string
	cfgPath string
	socket  string
	metrics string // host:port inside host's namespace
	l2Mode  string // announce.l2.mode, "" for the default
	d       *runningDaemon
}

// startAppliance writes the configuration with services and starts the
// daemon in host's namespace, attached to its eth0 and announcing on it.
// The daemon is stopped and the datapath detached when the test ends.
// bpfRoot is a bpffs mount (testnet.MountBPFFS) made before this call, so
// that it is unmounted after the detach.
func startAppliance(t *testing.T, bin string, host *testnet.Host, bpfRoot, metrics string, services ...annService) *annAppliance {
	t.Helper()
	return startApplianceL2(t, bin, host, bpfRoot, metrics, "", services...)
}

// startApplianceL2 is startAppliance with announce.l2.mode set to l2Mode
// ("" leaves it out).
func startApplianceL2(t *testing.T, bin string, host *testnet.Host, bpfRoot, metrics, l2Mode string, services ...annService) *annAppliance {
	t.Helper()
	dir := t.TempDir()
	a := &annAppliance{
		t: t, bin: bin, host: host, dir: dir, l2Mode: l2Mode,
		bpf:     filepath.Join(bpfRoot, host.Name),
		cfgPath: filepath.Join(dir, "xdplb.yaml"),
		socket:  filepath.Join(dir, "xdplb.sock"),
		metrics: metrics,
	}
	writeAtomically(t, a.cfgPath, a.config(services...))
	a.d = startTestDaemon(t, bin, host.NS, a.cfgPath, a.socket)
	t.Cleanup(func() {
		a.d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", a.bpf); err != nil {
			t.Errorf("%s: xdplb detach: %v\n%s", host.Name, err, out)
		}
		_ = host.NS.Do(func() error {
			l, err := netlink.LinkByName(host.Link)
			if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
				t.Errorf("%s: an XDP program is still attached to %s after xdplb detach", host.Name, host.Link)
			}
			return nil
		})
		if entries, err := os.ReadDir(a.bpf); err == nil {
			t.Errorf("%s: pins left after xdplb detach: %v", host.Name, entries)
		}
		if t.Failed() {
			t.Logf("log of xdplb run on %s:\n%s", host.Name, a.d.log)
		}
	})
	return a
}

// config is the appliance's configuration file with services.
func (a *annAppliance) config(services ...annService) string {
	var body strings.Builder
	body.WriteString("announce:\n  l2:\n    interfaces: [eth0]\n")
	if a.l2Mode != "" {
		body.WriteString("    mode: " + a.l2Mode + "\n")
	}
	if len(services) > 0 {
		body.WriteString("services:\n")
	}
	for _, s := range services {
		var backends []string
		for _, h := range s.backends {
			backends = append(backends, h.IPv4.String())
		}
		extra := ""
		if s.healthCheck != "" {
			extra = "    healthCheck: " + s.healthCheck + "\n"
		}
		body.WriteString(serviceYAML(s.name, s.vip.String(), backends, extra))
	}
	f := testFiles{Socket: a.socket, State: a.dir + "/state", BPF: a.bpf, Metrics: a.metrics}
	return applianceYAML(f, a.host.IPv4.String(), a.host.IPv6.String(), body.String())
}

// reconfigure replaces the configuration file, as an editor does; the daemon
// picks it up through its file watch.
func (a *annAppliance) reconfigure(services ...annService) {
	a.t.Helper()
	writeAtomically(a.t, a.cfgPath, a.config(services...))
}

// status is `xdplb status -o json`.
func (a *annAppliance) status() StatusInfo {
	a.t.Helper()
	out, err := cli(a.t, a.bin, "status", "--socket", a.socket, "-o", "json")
	if err != nil {
		a.t.Fatalf("%s: xdplb status: %v\n%s", a.host.Name, err, out)
	}
	var st StatusInfo
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		a.t.Fatalf("%s: xdplb status -o json: %v\n%s", a.host.Name, err, out)
	}
	return st
}

// announced returns what `xdplb status -o json` says is announced on eth0,
// sorted, and whether eth0 is listed at all.
func (a *annAppliance) announced() ([]string, bool) {
	a.t.Helper()
	for _, ai := range a.status().Announced {
		if ai.Interface == "eth0" {
			vips := slices.Clone(ai.VIPs)
			slices.Sort(vips)
			return vips, true
		}
	}
	return nil, false
}

// waitAnnounced waits until exactly want (sorted strings) is announced on
// eth0 and returns how long that took.
func (a *annAppliance) waitAnnounced(want []string, timeout time.Duration) time.Duration {
	a.t.Helper()
	start := time.Now()
	for {
		got, listed := a.announced()
		if listed && slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			a.t.Fatalf("%s: after %v `xdplb status` lists %q as announced on eth0 (listed: %v), want %q", a.host.Name, timeout, got, listed, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHealthy waits until every VIP has n healthy backends.
func (a *annAppliance) waitHealthy(n int, timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var vips []VIPInfo
		if err := controlplane.Call(context.Background(), a.socket, Request{Command: "vips"}, &vips); err != nil {
			a.t.Fatal(err)
		}
		ok := len(vips) > 0
		for _, v := range vips {
			healthy := 0
			for _, b := range v.Backends {
				if b.Healthy {
					healthy++
				}
			}
			ok = ok && healthy == n
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: after %v the VIPs are %+v, want %d healthy backends each", a.host.Name, timeout, vips, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape returns the appliance's metrics, fetched inside its namespace.
func (a *annAppliance) scrape() string {
	a.t.Helper()
	return scrape(a.t, a.host.NS, "http://"+a.metrics+"/metrics")
}

func annVIPStrings(vips ...netip.Addr) []string {
	out := []string{}
	for _, v := range vips {
		out = append(out, v.String())
	}
	slices.Sort(out)
	return out
}

// metricSample returns the value of the sample of name whose labels include
// every label of want, and whether there is one. It reads the Prometheus
// text format as the daemon writes it (no escapes in these label values).
func metricSample(text, name string, want map[string]string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		end := strings.LastIndex(line, "} ")
		if end < 0 {
			continue
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(line[len(name)+1:end], `",`) {
			k, v, ok := strings.Cut(kv, `="`)
			if ok {
				labels[k] = strings.TrimSuffix(v, `"`)
			}
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(line[end+2:]), 64)
		if err != nil {
			continue
		}
		return f, true
	}
	return 0, false
}

// annDial connects from the client to vip:80, reads the backend's name and
// checks that the connection echoes; it returns the name.
func annDial(ctx context.Context, client *testnet.Host, vip netip.Addr) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, "tcp", netip.AddrPortFrom(vip, scenario.Port).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: reading the backend's name: %w", c.LocalAddr(), err)
	}
	if _, err := fmt.Fprintf(c, "ping %s\n", c.LocalAddr()); err != nil {
		return "", err
	}
	echo, err := r.ReadString('\n')
	if err != nil || echo != fmt.Sprintf("ping %s\n", c.LocalAddr()) {
		return "", fmt.Errorf("%s: echo: got %q, %v", c.LocalAddr(), echo, err)
	}
	return strings.TrimSpace(name), nil
}

// annConnections makes n connections from the client to vip (parallel at
// once) and counts them by the backend that answered. Every failure is
// returned.
func annConnections(ctx context.Context, client *testnet.Host, vip netip.Addr, n, parallel int) (map[string]int, error) {
	counts := map[string]int{}
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			name, err := annDial(ctx, client, vip)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			counts[name]++
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return counts, fmt.Errorf("%d of %d connections to %v failed, the first: %w", len(errs), n, vip, errs[0])
	}
	return counts, nil
}

// checkConnections makes n connections to vip and checks that every one was
// answered by one of backends, each of which answered at least one.
func checkConnections(t *testing.T, client *testnet.Host, vip netip.Addr, n int, backends []*testnet.Host) {
	t.Helper()
	counts, err := annConnections(context.Background(), client, vip, n, 8)
	if err != nil {
		t.Fatalf("%v (answered: %v)", err, counts)
	}
	t.Logf("%v: %d connections answered by %v", vip, n, counts)
	total := 0
	for _, b := range backends {
		if counts[b.Name] == 0 {
			t.Errorf("%v: backend %s answered none of %d connections: %v", vip, b.Name, n, counts)
		}
		total += counts[b.Name]
	}
	if total != n {
		t.Errorf("%v: %d of %d connections answered by the backends %v: %v", vip, total, n, hostNames(backends), counts)
	}
}

func hostNames(hs []*testnet.Host) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

// nameServers serve port 80 on some hosts as scenario.Servers do on every
// backend: each connection is told the host's name, then echoed.
type nameServers struct {
	lns []net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	cs  map[net.Conn]bool
}

func startNameServers(t *testing.T, hosts ...*testnet.Host) *nameServers {
	t.Helper()
	s := &nameServers{cs: map[net.Conn]bool{}}
	t.Cleanup(s.close)
	for _, h := range hosts {
		ln, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", scenario.Port))
		if err != nil {
			t.Fatalf("listening on %s: %v", h.Name, err)
		}
		s.lns = append(s.lns, ln)
		s.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.mu.Lock()
				s.cs[c] = true
				s.mu.Unlock()
				s.wg.Go(func() {
					defer func() {
						c.Close()
						s.mu.Lock()
						delete(s.cs, c)
						s.mu.Unlock()
					}()
					if _, err := fmt.Fprintf(c, "%s\n", h.Name); err == nil {
						buf := make([]byte, 4096)
						for {
							n, err := c.Read(buf)
							if n > 0 {
								if _, werr := c.Write(buf[:n]); werr != nil {
									return
								}
							}
							if err != nil {
								return
							}
						}
					}
				})
			}
		})
	}
	return s
}

func (s *nameServers) close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Lock()
	for c := range s.cs {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func neighState(s int) string {
	var names []string
	for _, st := range []struct {
		bit  int
		name string
	}{
		{netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_REACHABLE, "REACHABLE"}, {netlink.NUD_STALE, "STALE"},
		{netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"}, {netlink.NUD_FAILED, "FAILED"},
		{netlink.NUD_NOARP, "NOARP"}, {netlink.NUD_PERMANENT, "PERMANENT"},
	} {
		if s&st.bit != 0 {
			names = append(names, st.name)
		}
	}
	if len(names) == 0 {
		return fmt.Sprintf("NONE(%#x)", s)
	}
	return strings.Join(names, "|")
}

func describeNeigh(n netlink.Neigh, ok bool) string {
	if !ok {
		return "no entry"
	}
	return fmt.Sprintf("%v %s", n.HardwareAddr, neighState(n.State))
}

// forgetNeigh deletes the client's entry for addr, if any, and checks it is
// gone.
func forgetNeigh(t *testing.T, client *testnet.Host, addr netip.Addr) {
	t.Helper()
	if _, ok := testnet.NeighborOf(t, client, addr); !ok {
		return
	}
	err := client.NS.Netlink().NeighDel(&netlink.Neigh{LinkIndex: client.IfIndex, IP: net.IP(addr.AsSlice())})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleting the client's entry for %v: %v", addr, err)
	}
	if n, ok := testnet.NeighborOf(t, client, addr); ok {
		t.Fatalf("the client's entry for %v is still there after deleting it: %s", addr, describeNeigh(n, ok))
	}
}

// solicit makes the client's kernel resolve addr (ARP request or neighbour
// solicitation) by sending it a UDP datagram.
func solicit(t *testing.T, client *testnet.Host, addr netip.Addr) {
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

// checkUnanswered deletes the client's entries for addrs, makes it resolve
// them, and checks that nobody answers within wait: the entries stay
// INCOMPLETE (or become FAILED). The entries are deleted again afterwards.
func checkUnanswered(t *testing.T, client *testnet.Host, wait time.Duration, why string, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		forgetNeigh(t, client, a)
		solicit(t, client, a)
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		for _, a := range addrs {
			if n, ok := testnet.NeighborOf(t, client, a); testnet.UsableMAC(n, ok) != "" {
				t.Fatalf("%s: the client resolved %v to %v (%s), want no answer", why, a, n.HardwareAddr, neighState(n.State))
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, a := range addrs {
		n, ok := testnet.NeighborOf(t, client, a)
		if !ok || n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
			t.Errorf("%s: the client's entry for %v is %s, want INCOMPLETE or FAILED", why, a, describeNeigh(n, ok))
		} else {
			t.Logf("%s: %v unanswered after %v: %s", why, a, wait, describeNeigh(n, ok))
		}
		forgetNeigh(t, client, a)
	}
}

// checkNeighMAC checks that the client's entry for each addr points to mac.
func checkNeighMAC(t *testing.T, client *testnet.Host, mac net.HardwareAddr, who string, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		n, ok := testnet.NeighborOf(t, client, a)
		if got := testnet.UsableMAC(n, ok); got != mac.String() {
			t.Errorf("the client's entry for %v is %s, want %s's MAC %v", a, describeNeigh(n, ok), who, mac)
		} else {
			t.Logf("the client's entry for %v: %s (%s)", a, describeNeigh(n, ok), who)
		}
	}
}

// addAnnVIPs puts the test VIPs on the lo of hosts, for DSR.
func addAnnVIPs(t *testing.T, hosts ...*testnet.Host) {
	t.Helper()
	for _, h := range hosts {
		for _, v := range annVIPs {
			if err := h.AddVIP(v); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// checkLoopbackVIPs checks that the VIPs are on the hosts' lo and on no
// other interface of theirs, and that IPv4 ARP is set up for DSR.
func checkLoopbackVIPs(t *testing.T, hosts ...*testnet.Host) {
	t.Helper()
	for _, h := range hosts {
		list, err := h.NS.Netlink().AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range annVIPs {
			onLo := false
			for _, a := range list {
				if got, _ := netip.AddrFromSlice(a.IP); got.Unmap() == v {
					if a.LinkIndex == h.IfIndex {
						t.Fatalf("%s holds %v on %s", h.Name, v, h.Link)
					}
					onLo = true
				}
			}
			if !onLo {
				t.Fatalf("%s does not hold %v on lo", h.Name, v)
			}
		}
		for key, want := range map[string]string{"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"} {
			if got, err := h.NS.ReadSysctl(key); err != nil || got != want {
				t.Fatalf("%s: %s = %q (%v), want %s", h.Name, key, got, err, want)
			}
		}
	}
}

// checkNoHostAddress fails if h holds any of the VIPs itself: the test would
// not show the announcer answering.
func checkNoHostAddress(t *testing.T, h *testnet.Host) {
	t.Helper()
	list, err := h.NS.Netlink().AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		got, _ := netip.AddrFromSlice(a.IP)
		if slices.Contains(annVIPs, got.Unmap()) {
			t.Fatalf("%s holds %v itself", h.Name, got)
		}
	}
}

// TestDaemonAnnounces runs the daemon on the lb with two VIPs inside the
// client's subnet and announce.l2 on eth0. The backends hold the VIPs on lo
// but answer neither ARP nor NDP for them (checked first, before the daemon
// runs). The client, without static entries, resolves both VIPs by ARP and
// NDP to the lb's MAC; 300 TCP connections through each VIP are answered by
// the backends; the client's entries still point to the lb afterwards (the
// backends' DSR answers from the VIPs do not steal them); `xdplb status`
// lists both VIPs as announced on eth0 and the metrics count replies for
// them.
func TestDaemonAnnounces(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	client, lbHost := topo.Client, topo.LB
	srv, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	addAnnVIPs(t, topo.Backends...)
	checkLoopbackVIPs(t, topo.Backends...)
	checkNoHostAddress(t, lbHost)
	checkNoHostAddress(t, client)

	// Before the daemon runs nobody answers for the VIPs: not the
	// backends, which hold them on lo (IPv4: arp_ignore=1; IPv6: Linux
	// answers a solicitation only for an address of the interface it
	// arrived on, and eth0 has not joined the VIP's solicited-node group),
	// and not the lb's kernel. A backend would answer within
	// milliseconds; a second is plenty.
	checkUnanswered(t, client, time.Second, "before the daemon runs", annVIPs...)

	bpfRoot := testnet.MountBPFFS(t)
	app := startAppliance(t, bin, lbHost, bpfRoot, "127.0.0.1:9650", annServices(topo.Backends, "")...)
	app.waitAnnounced(annVIPStrings(annVIPs...), 5*time.Second)

	// The gratuitous announcements at start create no entry: Linux takes
	// them only for neighbours it knows. What the client gets below comes
	// from its own resolution.
	time.Sleep(100 * time.Millisecond)
	for _, v := range annVIPs {
		if n, ok := testnet.NeighborOf(t, client, v); ok {
			t.Fatalf("the client has an entry for %v before resolving it: %s", v, describeNeigh(n, ok))
		}
	}

	for _, v := range annVIPs {
		checkConnections(t, client, v, 300, topo.Backends)
	}
	checkNeighMAC(t, client, lbHost.MAC, "the lb", annVIPs...)

	vips, listed := app.announced()
	if !listed || !slices.Equal(vips, annVIPStrings(annVIPs...)) {
		t.Errorf("xdplb status -o json: announced on eth0 %q (listed: %v), want %q", vips, listed, annVIPStrings(annVIPs...))
	}

	metrics := app.scrape()
	for _, v := range annVIPs {
		labels := map[string]string{"interface": "eth0", "vip": v.String()}
		if a, ok := metricSample(metrics, "xdplb_announce_active", labels); !ok || a != 1 {
			t.Errorf("xdplb_announce_active%v = %v (present: %v), want 1", labels, a, ok)
		}
		for _, name := range []string{"xdplb_announce_requests_total", "xdplb_announce_replies_total", "xdplb_announce_gratuitous_total"} {
			n, ok := metricSample(metrics, name, labels)
			if !ok || n <= 0 {
				t.Errorf("%s%v = %v (present: %v), want > 0", name, labels, n, ok)
			} else {
				t.Logf("%s%v = %v", name, labels, n)
			}
		}
	}
	if t.Failed() {
		t.Logf("announce metrics:\n%s", grepLines(metrics, "xdplb_announce"))
	}
}

// TestDaemonAnnounceFailover runs two appliances: the daemon on the lb and a
// second one in b3's namespace (no backend in this test: b1 and b2 are).
// The VIPs start on the first; the client connects through them, so its
// entries point to the lb. Then the VIPs move by configuration changes, as
// an operator moves them: the second appliance's file gets the services
// first, then the first's loses them, right after. The client's existing
// entries must point to the second's MAC within 2 s of the first write,
// through its gratuitous ARP and unsolicited NA alone (the client sends
// nothing meanwhile), and new connections then go through the second
// appliance's datapath.
func TestDaemonAnnounceFailover(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	client, first, second := topo.Client, topo.LB, topo.Backends[2]
	backends := topo.Backends[:2]
	startNameServers(t, backends...)
	addAnnVIPs(t, backends...)
	checkLoopbackVIPs(t, backends...)
	checkNoHostAddress(t, first)
	checkNoHostAddress(t, second)
	checkNoHostAddress(t, client)

	bpfRoot := testnet.MountBPFFS(t)
	services := annServices(backends, "")
	app1 := startAppliance(t, bin, first, bpfRoot, "127.0.0.1:9650", services...)
	app2 := startAppliance(t, bin, second, bpfRoot, "127.0.0.1:9651")
	app1.waitAnnounced(annVIPStrings(annVIPs...), 5*time.Second)
	app2.waitAnnounced([]string{}, 5*time.Second)

	for _, v := range annVIPs {
		checkConnections(t, client, v, 50, backends)
	}
	checkNeighMAC(t, client, first.MAC, "the first appliance (lb)", annVIPs...)
	if t.Failed() {
		t.FailNow()
	}
	// Let the first appliance's gratuitous announcements of its start end
	// (3 at 1 s), as they would have long before a real failover.
	time.Sleep(2 * time.Second)

	start := time.Now()
	app2.reconfigure(services...)
	app1.reconfigure()
	took := map[netip.Addr]time.Duration{}
	for len(took) < len(annVIPs) && time.Since(start) < 3*annFailoverBudget {
		for _, v := range annVIPs {
			if _, done := took[v]; done {
				continue
			}
			if n, ok := testnet.NeighborOf(t, client, v); testnet.UsableMAC(n, ok) == second.MAC.String() {
				took[v] = time.Since(start)
				t.Logf("failover: the client's existing entry for %v points to the second appliance (%v, %s) %v after the configuration change", v, second.MAC, neighState(n.State), took[v].Round(time.Millisecond))
			}
		}
		time.Sleep(time.Millisecond)
	}
	for _, v := range annVIPs {
		d, ok := took[v]
		switch {
		case !ok:
			n, ok := testnet.NeighborOf(t, client, v)
			t.Errorf("failover: %v after the configuration change the client's entry for %v is %s, want the second appliance's %v", 3*annFailoverBudget, v, describeNeigh(n, ok), second.MAC)
		case d > annFailoverBudget:
			t.Errorf("failover: the client's entry for %v took %v to follow the VIP, want at most %v", v, d, annFailoverBudget)
		}
	}
	app2.waitAnnounced(annVIPStrings(annVIPs...), 5*time.Second)
	app1.waitAnnounced([]string{}, 5*time.Second)
	if t.Failed() {
		t.FailNow()
	}

	// New connections go through the second appliance's datapath, and
	// not through the first's kernel either: the lb forwards, and had the
	// client still sent to it, its kernel would have routed the packets on
	// to the second appliance, which counts them all the same. It would
	// have had to resolve the VIPs for that.
	for _, v := range annVIPs {
		checkConnections(t, client, v, 50, backends)
	}
	checkNeighMAC(t, client, second.MAC, "the second appliance (b3)", annVIPs...)
	for _, v := range annVIPs {
		fam := netlink.FAMILY_V4
		if v.Is6() {
			fam = netlink.FAMILY_V6
		}
		list, err := first.NS.Netlink().NeighList(0, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range list {
			if a, _ := netip.AddrFromSlice(n.IP); a.Unmap() == v {
				t.Errorf("the first appliance's kernel has a neighbour entry for %v (%s): it forwarded traffic to the VIP", v, describeNeigh(n, true))
			}
		}
	}
	metrics2 := app2.scrape()
	for _, v := range annVIPs {
		labels := map[string]string{"vip": v.String(), "port": strconv.Itoa(scenario.Port), "protocol": "tcp"}
		n, ok := metricSample(metrics2, "xdplb_vip_packets_total", labels)
		// Each connection: SYN, ACK, data, ACK of the echo, FIN... at
		// least 3 packets from the client.
		if !ok || n < 3*50 {
			t.Errorf("second appliance: xdplb_vip_packets_total%v = %v (present: %v), want at least %d", labels, n, ok, 3*50)
		} else {
			t.Logf("second appliance: xdplb_vip_packets_total%v = %v", labels, n)
		}
		g, _ := metricSample(metrics2, "xdplb_announce_gratuitous_total", map[string]string{"interface": "eth0", "vip": v.String()})
		t.Logf("second appliance: xdplb_announce_gratuitous_total{vip=%q} = %v", v, g)
	}
	var vips1 []VIPInfo
	if err := controlplane.Call(context.Background(), app1.socket, Request{Command: "vips"}, &vips1); err != nil {
		t.Fatal(err)
	}
	if len(vips1) != 0 {
		t.Errorf("the first appliance still has VIPs after the move: %+v", vips1)
	}
}

// TestDaemonWithdrawsDeadService checks minHealthyBackends: with TCP health
// checks, when every backend's server stops, the VIPs are withdrawn within a
// few seconds (status, metrics, and the client's fresh resolution goes
// unanswered); when they start again, the VIPs are announced and reachable
// again.
func TestDaemonWithdrawsDeadService(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	client, lbHost := topo.Client, topo.LB
	srv, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	srvClosed := false
	t.Cleanup(func() {
		if !srvClosed {
			srv.Close()
		}
	})
	addAnnVIPs(t, topo.Backends...)
	checkLoopbackVIPs(t, topo.Backends...)
	checkNoHostAddress(t, lbHost)

	bpfRoot := testnet.MountBPFFS(t)
	const check = "{type: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 1}"
	app := startAppliance(t, bin, lbHost, bpfRoot, "127.0.0.1:9650", annServices(topo.Backends, check)...)
	all := annVIPStrings(annVIPs...)
	took := app.waitAnnounced(all, 5*time.Second)
	t.Logf("announced %v after the checks passed (%v after the daemon was ready)", all, took.Round(time.Millisecond))
	// Announced as soon as one backend is up (minHealthyBackends 1); the
	// others' first checks may still be pending.
	app.waitHealthy(len(topo.Backends), 5*time.Second)
	for _, v := range annVIPs {
		checkConnections(t, client, v, 30, topo.Backends)
	}
	checkNeighMAC(t, client, lbHost.MAC, "the lb", annVIPs...)
	if t.Failed() {
		t.FailNow()
	}

	// Every backend's server stops: the checks fail, the VIPs go.
	srvClosed = true
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	took = app.waitAnnounced([]string{}, 5*time.Second)
	t.Logf("withdrawn %v after the servers stopped", took.Round(time.Millisecond))
	metrics := app.scrape()
	for _, v := range annVIPs {
		labels := map[string]string{"interface": "eth0", "vip": v.String()}
		if a, ok := metricSample(metrics, "xdplb_announce_active", labels); ok {
			t.Errorf("xdplb_announce_active%v = %v after the service died, want no such series", labels, a)
		}
	}
	dropLabels := func(proto string) map[string]string {
		return map[string]string{"interface": "eth0", "protocol": proto, "reason": "not_ours"}
	}
	notOurs4, _ := metricSample(metrics, "xdplb_announce_drops_total", dropLabels("arp"))
	notOurs6, _ := metricSample(metrics, "xdplb_announce_drops_total", dropLabels("ndp"))

	// A fresh resolution goes unanswered: the lb's announcer refuses it.
	checkUnanswered(t, client, 1500*time.Millisecond, "service dead", annVIPs...)
	metrics = app.scrape()
	after4, _ := metricSample(metrics, "xdplb_announce_drops_total", dropLabels("arp"))
	after6, _ := metricSample(metrics, "xdplb_announce_drops_total", dropLabels("ndp"))
	if after4 <= notOurs4 || after6 <= notOurs6 {
		t.Errorf("the announcer did not count the client's requests as not ours: arp %v → %v, ndp %v → %v", notOurs4, after4, notOurs6, after6)
	}
	if _, err := annDial(context.Background(), client, annVIP4); err == nil {
		t.Errorf("a connection to %v succeeded while its service is dead and withdrawn", annVIP4)
	}

	// The servers come back: so do the VIPs.
	srv2, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv2.Close() })
	took = app.waitAnnounced(all, 5*time.Second)
	t.Logf("announced again %v after the servers restarted", took.Round(time.Millisecond))
	// One healthy backend is enough to announce (minHealthyBackends 1);
	// the traffic check below wants them all back.
	app.waitHealthy(len(topo.Backends), 5*time.Second)
	for _, v := range annVIPs {
		checkConnections(t, client, v, 30, topo.Backends)
	}
	checkNeighMAC(t, client, lbHost.MAC, "the lb", annVIPs...)
	metrics = app.scrape()
	for _, v := range annVIPs {
		labels := map[string]string{"interface": "eth0", "vip": v.String()}
		if a, ok := metricSample(metrics, "xdplb_announce_active", labels); !ok || a != 1 {
			t.Errorf("after the restart: xdplb_announce_active%v = %v (present: %v), want 1", labels, a, ok)
		}
	}
}
