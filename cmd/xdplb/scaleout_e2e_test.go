package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// The scale-out topology: the testnet LAN's "lb" host is the router (FRR,
// AS 65000), b1-b3 are the backends, b4-b7 the appliances (AS 65010), and
// the client sits behind the router on its own link (testnet.Routed4).
const (
	routerASN    = 65000
	applianceASN = 65010
	// bgpHold is the hold time both sides use: short enough for a test,
	// long enough that a loaded machine does not drop sessions.
	bgpHold = 6 * time.Second
)

// frrRouter is FRR's zebra and bgpd running in a namespace, with every file
// of theirs in a temporary directory.
type frrRouter struct {
	t    *testing.T
	host *testnet.Host
	dir  string
	cmds []*exec.Cmd
}

// startFRR starts zebra and bgpd in router's namespace, peering with
// every address of peers (AS applianceASN), with ECMP over up to 8 paths and
// L4 multipath hashing. They are killed and their files removed when the
// test ends.
func startFRR(t *testing.T, router *testnet.Host, peers []netip.Addr) *frrRouter {
	t.Helper()
	for _, tool := range []string{"/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("FRR is not installed (%v): apt-get install frr", err)
		}
	}
	if err := router.NS.Sysctl("net.ipv4.fib_multipath_hash_policy", "1"); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "xdplb-frr")
	if err != nil {
		t.Fatal(err)
	}
	// FRR drops to the frr user for some files: let it in.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	r := &frrRouter{t: t, host: router, dir: dir}
	t.Cleanup(r.stop)
	zebra := fmt.Sprintf("hostname router\nlog file %s/zebra.log\n", dir)
	var b strings.Builder
	fmt.Fprintf(&b, "hostname router\nlog file %s/bgpd.log\n", dir)
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %v\n no bgp ebgp-requires-policy\n no bgp network import-check\n", routerASN, router.IPv4)
	fmt.Fprintf(&b, " bgp bestpath as-path multipath-relax\n timers bgp %d %d\n", int(bgpHold/time.Second)/3, int(bgpHold/time.Second))
	for _, p := range peers {
		fmt.Fprintf(&b, " neighbor %v remote-as %d\n neighbor %v timers connect 1\n", p, applianceASN, p)
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n")
	for name, conf := range map[string]string{"zebra.conf": zebra, "bgpd.conf": b.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r.start("zebra")
	// bgpd needs zebra's socket.
	waitFor(t, 10*time.Second, "zebra's socket", func() bool {
		_, err := os.Stat(filepath.Join(dir, "zserv.api"))
		return err == nil
	})
	r.start("bgpd")
	return r
}

func (r *frrRouter) start(daemon string) {
	r.t.Helper()
	cmd := r.host.NS.Command(context.Background(), "/usr/lib/frr/"+daemon, "-u", "root", "-g", "frrvty",
		"-f", filepath.Join(r.dir, daemon+".conf"), "-i", filepath.Join(r.dir, daemon+".pid"),
		"-z", filepath.Join(r.dir, "zserv.api"), "--vty_socket", r.dir)
	if daemon == "zebra" || daemon == "bgpd" {
		cmd.Args = append(cmd.Args, "-P", "0")
	}
	out, err := os.Create(filepath.Join(r.dir, daemon+".out"))
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting %s: %v", daemon, err)
	}
	r.cmds = append(r.cmds, cmd)
}

func (r *frrRouter) stop() {
	for i := len(r.cmds) - 1; i >= 0; i-- {
		_ = r.cmds[i].Process.Kill()
		_ = r.cmds[i].Wait()
	}
	r.cmds = nil
	if r.t.Failed() {
		for _, f := range []string{"bgpd.log", "bgpd.out", "zebra.out"} {
			if b, err := os.ReadFile(filepath.Join(r.dir, f)); err == nil {
				r.t.Logf("FRR %s:\n%s", f, lastLines(string(b), 60))
			}
		}
	}
	os.RemoveAll(r.dir)
}

// vtysh runs a command on the router.
func (r *frrRouter) vtysh(cmd string) string {
	out, _ := exec.Command("vtysh", "--vty_socket", r.dir, "--config_dir", r.dir, "-c", cmd).CombinedOutput()
	return string(out)
}

// nextHops returns the next hops of the kernel's route to vip in the
// router's namespace, sorted; none when there is no route.
func (r *frrRouter) nextHops(vip netip.Addr) []string {
	r.t.Helper()
	dst := &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}
	routes, err := r.host.NS.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst, Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for _, rt := range routes {
		if rt.Gw != nil {
			out = append(out, rt.Gw.String())
		}
		for _, nh := range rt.MultiPath {
			out = append(out, nh.Gw.String())
		}
	}
	sortStrings(out)
	return out
}

// waitNextHops waits until the route to vip goes via exactly want and
// returns how long that took.
func (r *frrRouter) waitNextHops(vip netip.Addr, want []*testnet.Host, timeout time.Duration) time.Duration {
	r.t.Helper()
	var ws []string
	for _, h := range want {
		ws = append(ws, h.IPv4.String())
	}
	sortStrings(ws)
	start := time.Now()
	for {
		got := r.nextHops(vip)
		if strings.Join(got, ",") == strings.Join(ws, ",") {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			r.t.Fatalf("after %v the router's route to %v goes via %v, want %v\n%s", timeout, vip, got, ws, r.vtysh("show bgp summary"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchGone polls the router's route to vip every 5 ms and sends the time
// the next hop nh is first gone from it.
func (r *frrRouter) watchGone(ctx context.Context, vip netip.Addr, nh string) <-chan time.Time {
	gone := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			hops := r.nextHops(vip)
			if !slices.Contains(hops, nh) {
				gone <- time.Now()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return gone
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bgpAppliance is `xdplb run` announcing by BGP only.
type bgpAppliance struct {
	t       *testing.T
	bin     string
	host    *testnet.Host
	dir     string
	bpf     string
	cfgPath string
	socket  string
	metrics string
	d       *runningDaemon
}

func startBGPAppliance(t *testing.T, bin string, host *testnet.Host, bpfRoot string, router *testnet.Host, backends []*testnet.Host) *bgpAppliance {
	t.Helper()
	dir := t.TempDir()
	a := &bgpAppliance{
		t: t, bin: bin, host: host, dir: dir,
		bpf:     filepath.Join(bpfRoot, host.Name),
		cfgPath: filepath.Join(dir, "xdplb.yaml"),
		socket:  filepath.Join(dir, "xdplb.sock"),
		metrics: "127.0.0.1:9650",
	}
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.IPv4.String())
	}
	body := fmt.Sprintf(`announce:
  bgp:
    localASN: %d
    routerID: %v
    peers:
      - {address: %v, asn: %d, holdTime: %v}
    communities: ["65010:100"]
    gracefulRestart: {restartTime: 120s}
services:
`, applianceASN, host.IPv4, router.IPv4, routerASN, bgpHold) + serviceYAML("web4", scenario.VIP4.String(), addrs, "")
	f := testFiles{Socket: a.socket, State: dir + "/state", BPF: a.bpf, Metrics: a.metrics}
	writeAtomically(t, a.cfgPath, applianceYAML(f, host.IPv4.String(), host.IPv6.String(), body))
	a.start()
	t.Cleanup(func() {
		a.d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", a.bpf); err != nil {
			t.Errorf("%s: xdplb detach: %v\n%s", host.Name, err, out)
		}
		if t.Failed() {
			t.Logf("log of xdplb run on %s:\n%s", host.Name, lastLines(a.d.log.String(), 80))
		}
	})
	return a
}

func (a *bgpAppliance) start() {
	a.t.Helper()
	a.d = startTestDaemon(a.t, a.bin, a.host.NS, a.cfgPath, a.socket)
}

// newFlows is the appliance's xdplb_vip_new_flows_total for the VIP.
func (a *bgpAppliance) newFlows() float64 {
	a.t.Helper()
	m := scrape(a.t, a.host.NS, "http://"+a.metrics+"/metrics")
	n, _ := metricSample(m, "xdplb_vip_new_flows_total", map[string]string{"vip": scenario.VIP4.String(), "port": "80", "protocol": "tcp"})
	return n
}

// heldConn is a long-lived connection from the client through the VIP that
// exchanges a line with its backend every interval until stopped; the
// first error breaks it for good.
type heldConn struct {
	c       net.Conn
	r       *bufio.Reader
	backend string
	broken  atomic.Pointer[error]
}

// holdConnections opens n connections from client to the VIP and keeps each
// exchanging lines with its backend until ctx ends.
func holdConnections(ctx context.Context, t *testing.T, client *testnet.Host, vip netip.Addr, n int, wg *sync.WaitGroup) []*heldConn {
	t.Helper()
	var conns []*heldConn
	for i := range n {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := client.Dial(dctx, "tcp", netip.AddrPortFrom(vip, scenario.Port).String())
		cancel()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		h := &heldConn{c: c, r: bufio.NewReader(c)}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		name, err := h.r.ReadString('\n')
		if err != nil {
			t.Fatalf("connection %d: reading the backend's name: %v", i, err)
		}
		h.backend = strings.TrimSpace(name)
		conns = append(conns, h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				// Generous: a flow blackholed until the router converges
				// retransmits with backoff.
				_ = c.SetDeadline(time.Now().Add(60 * time.Second))
				msg := fmt.Sprintf("%s %d", h.backend, seq)
				_, err := fmt.Fprintf(c, "%s\n", msg)
				var got string
				if err == nil {
					got, err = h.r.ReadString('\n')
				}
				if err == nil && strings.TrimSpace(got) != msg {
					err = fmt.Errorf("sent %q, got %q", msg, got)
				}
				if err != nil {
					if ctx.Err() == nil {
						h.broken.Store(&err)
					}
					return
				}
			}
		}()
	}
	return conns
}

// broken counts the held connections broken so far and names the first
// few errors.
func broken(conns []*heldConn) (int, []string) {
	n := 0
	var why []string
	for _, h := range conns {
		if e := h.broken.Load(); e != nil {
			n++
			if len(why) < 3 {
				why = append(why, fmt.Sprintf("%s: %v", h.backend, *e))
			}
		}
	}
	return n, why
}

// TestScaleOutBGP runs three appliances (real `xdplb run` daemons) peering
// by BGP with an FRR router that spreads a client's flows over them by ECMP
// with L4 hashing. It checks that 300 connections spread over the three
// appliances and the three backends; that a daemon restart (graceful
// restart) breaks none and the router never withdraws the route; that a
// fourth appliance joining breaks none; and that an appliance dying (its
// link and daemon gone, so the router's hold timer expires) breaks none:
// its flows, rehashed by the router, reach the same backends through the
// others. It logs the figures docs/scale-out.md quotes.
func TestScaleOutBGP(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 7})
	router := topo.LB
	backends, apps := topo.Backends[:3], topo.Backends[3:]
	client, err := topo.AddRoutedHost("rclient", router)
	if err != nil {
		t.Fatal(err)
	}
	sub := *topo
	sub.Backends = backends
	srv, err := scenario.StartServers(&sub, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var peers []netip.Addr
	for _, a := range apps {
		peers = append(peers, a.IPv4)
	}
	frr := startFRR(t, router, peers)
	bpfRoot := testnet.MountBPFFS(t)
	vip := scenario.VIP4

	var running []*bgpAppliance
	for _, h := range apps[:3] {
		running = append(running, startBGPAppliance(t, bin, h, bpfRoot, router, backends))
	}
	took := frr.waitNextHops(vip, apps[:3], 60*time.Second)
	t.Logf("the router has an ECMP route to %v via the three appliances %v after their start", vip, took.Round(time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	const n = 300
	conns := holdConnections(ctx, t, client, vip, n, &wg)
	perBackend := map[string]int{}
	for _, h := range conns {
		perBackend[h.backend]++
	}
	t.Logf("%d connections by backend: %v", n, perBackend)
	for _, b := range backends {
		if perBackend[b.Name] == 0 {
			t.Errorf("backend %s got none of %d connections: %v", b.Name, n, perBackend)
		}
	}
	shares := map[string]float64{}
	for _, a := range running {
		shares[a.host.Name] = a.newFlows()
		if shares[a.host.Name] == 0 {
			t.Errorf("appliance %s carried none of the new flows", a.host.Name)
		}
	}
	t.Logf("new flows by appliance: %v", shares)
	if t.Failed() {
		t.FailNow()
	}
	check := func(event string) {
		t.Helper()
		// Two exchange rounds after the event, so a connection that
		// would break has tried.
		time.Sleep(3 * time.Second)
		nb, why := broken(conns)
		t.Logf("%s: %d of %d held connections broken %v", event, nb, n, why)
		if nb != 0 {
			t.Errorf("%s: %d of %d held connections broke, want 0: %v", event, nb, n, why)
		}
	}

	// A daemon restart: graceful restart keeps the route at the router.
	restarted := running[0]
	var minHops atomic.Int32
	minHops.Store(99)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for watchCtx.Err() == nil {
			if h := int32(len(frr.nextHops(vip))); h < minHops.Load() {
				minHops.Store(h)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	restarted.d.stop(t)
	restarted.start()
	waitFor(t, 60*time.Second, "re-established session after the restart", func() bool {
		return strings.Contains(frr.vtysh("show bgp neighbors "+restarted.host.IPv4.String()+" json"), `"bgpState":"Established"`)
	})
	time.Sleep(2 * time.Second)
	stopWatch()
	<-watched
	if m := minHops.Load(); m != 3 {
		t.Errorf("during %s's restart the router's route to %v went down to %d next hops, want 3 throughout", restarted.host.Name, vip, m)
	} else {
		t.Logf("during %s's restart the router kept all 3 next hops", restarted.host.Name)
	}
	check("daemon restart with graceful restart")

	// A fourth appliance joins.
	running = append(running, startBGPAppliance(t, bin, apps[3], bpfRoot, router, backends))
	took = frr.waitNextHops(vip, apps[:4], 60*time.Second)
	t.Logf("the router added the fourth appliance %v after its start", took.Round(time.Millisecond))
	check("a fourth appliance joins")

	// What `xdplb bgp` and the metrics say on the fourth.
	fourth := running[3]
	out, err := cli(t, bin, "bgp", "--socket", fourth.socket, "-o", "json")
	if err != nil {
		t.Fatalf("xdplb bgp: %v\n%s", err, out)
	}
	var info BGPInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("xdplb bgp -o json: %v\n%s", err, out)
	}
	wantPeer := router.IPv4.String()
	if len(info.Peers) != 1 || info.Peers[0].Address != wantPeer || info.Peers[0].State != "established" || info.Peers[0].Sent != 1 ||
		len(info.Routes) != 1 || info.Routes[0] != vip.String()+"/32" {
		t.Errorf("xdplb bgp -o json on %s: %+v, want one route %v/32 and the peer %s established with 1 prefix sent", fourth.host.Name, info, vip, wantPeer)
	}
	table, _ := cli(t, bin, "bgp", "--socket", fourth.socket)
	t.Logf("xdplb bgp on %s:\n%s", fourth.host.Name, table)
	m := scrape(t, fourth.host.NS, "http://"+fourth.metrics+"/metrics")
	if v, ok := metricSample(m, "xdplb_bgp_session_state", map[string]string{"peer": wantPeer, "state": "established"}); !ok || v != 1 {
		t.Errorf("xdplb_bgp_session_state{peer=%q,state=\"established\"} = %v (present: %v), want 1", wantPeer, v, ok)
	}
	if !strings.Contains(m, "\nxdplb_bgp_routes_advertised 1\n") {
		t.Errorf("the metrics do not say xdplb_bgp_routes_advertised 1:\n%s", grepLines(m, "xdplb_bgp"))
	}

	// Drain the fourth while new connections keep coming: the router
	// drops it, its new-flow counter stops, `xdplb drain` says so; the
	// held connections carry on.
	var newConns, newFailed atomic.Int64
	genCtx, stopGen := context.WithCancel(ctx)
	genDone := make(chan struct{})
	go func() {
		defer close(genDone)
		for genCtx.Err() == nil {
			dctx, cancel := context.WithTimeout(genCtx, 10*time.Second)
			c, err := client.Dial(dctx, "tcp", netip.AddrPortFrom(vip, scenario.Port).String())
			cancel()
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err = bufio.NewReader(c).ReadString('\n')
				c.Close()
			}
			if genCtx.Err() != nil {
				return
			}
			newConns.Add(1)
			if err != nil {
				newFailed.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	waitFor(t, 30*time.Second, "new flows on the fourth appliance before the drain", func() bool { return fourth.newFlows() > 0 })
	withdrawn := frr.watchGone(ctx, vip, fourth.host.IPv4.String())
	drainStart := time.Now()
	out, err = cli(t, bin, "drain", "--socket", fourth.socket, "--quiet", "3s", "--timeout", "60s")
	if err != nil {
		t.Fatalf("xdplb drain: %v\n%s", err, out)
	}
	t.Logf("xdplb drain on %s (%v):\n%s", fourth.host.Name, time.Since(drainStart).Round(time.Millisecond), out)
	if !strings.Contains(out, "drained: every route withdrawn\nno new flows for 3s") {
		t.Errorf("xdplb drain printed %q, want the routes withdrawn and no new flows for 3s", out)
	}
	frr.waitNextHops(vip, apps[:3], 30*time.Second)
	t.Logf("the router withdrew the drained appliance %v after `xdplb drain` started", (<-withdrawn).Sub(drainStart).Round(time.Millisecond))
	flowsAfter := fourth.newFlows()
	time.Sleep(2 * time.Second)
	if n := fourth.newFlows(); n != flowsAfter {
		t.Errorf("after the drain the fourth appliance still gets new flows: %v, then %v", flowsAfter, n)
	}
	check("the fourth appliance drained")
	undrainStart := time.Now()
	out, err = cli(t, bin, "undrain", "--socket", fourth.socket)
	if err != nil {
		t.Fatalf("xdplb undrain: %v\n%s", err, out)
	}
	frr.waitNextHops(vip, apps[:4], 30*time.Second)
	t.Logf("the router took the undrained appliance back %v after `xdplb undrain` started", time.Since(undrainStart).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "new flows on the fourth appliance after the undrain", func() bool { return fourth.newFlows() > flowsAfter })
	stopGen()
	<-genDone
	t.Logf("new connections during the drain and undrain: %d, failed %d", newConns.Load(), newFailed.Load())
	if newFailed.Load() != 0 {
		t.Errorf("%d of %d new connections failed during the drain and undrain", newFailed.Load(), newConns.Load())
	}
	check("the fourth appliance undrained")

	// An appliance dies: its link goes down first (so no FIN or RST
	// reaches the router), then its daemon is killed; the router withdraws
	// it when the hold timer expires.
	dead := running[1]
	before := dead.newFlows()
	link, err := dead.host.NS.Netlink().LinkByName(dead.host.Link)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := dead.host.NS.Netlink().LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	_ = dead.d.cmd.Process.Kill()
	<-dead.d.done
	dead.d.done <- nil // for the cleanup's stop
	alive := []*testnet.Host{apps[0], apps[2], apps[3]}
	frr.waitNextHops(vip, alive, 60*time.Second)
	converged := time.Since(start)
	t.Logf("appliance %s died (it had counted %v new flows): the router withdrew it %v later (hold time %v)", dead.host.Name, before, converged.Round(time.Millisecond), bgpHold)
	check("an appliance dies")
}
