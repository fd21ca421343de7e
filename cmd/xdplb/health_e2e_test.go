package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/lb/health"
)

// The health check of the end-to-end test: fall×interval + timeout is 1.2 s,
// rise×interval 1 s.
const (
	hcInterval = 500 * time.Millisecond
	hcTimeout  = 200 * time.Millisecond
	hcRise     = 2
	hcFall     = 2
	// hcSlack is what the test allows on top of the check's own timing:
	// scheduling, the re-apply, the CLI's polling.
	hcSlack = time.Second
	// hcEarly is how much sooner than (fall-1) or (rise-1) intervals after
	// the server's change the state may change: two jitters (less than
	// interval/20 each in lb/health) and a check dispatched late. The
	// precise test of fall and rise is the intermediate state seen.
	hcEarly = hcInterval / 4
)

// healthConfig is testConfig's web4 service with a TCP health check, and the
// VIP announced on eth0 (withdrawn when every backend is down); extra is
// appended to the services.
func healthConfig(dir, bpf string, backends []string, metricsAddr, extra string) string {
	f := testFiles{Socket: dir + "/xdplb.sock", State: dir + "/state", BPF: bpf, Metrics: metricsAddr}
	check := fmt.Sprintf("    healthCheck: {type: tcp, interval: %s, timeout: %s, rise: %d, fall: %d}\n", hcInterval, hcTimeout, hcRise, hcFall)
	return applianceYAML(f, "198.18.0.2", "2001:db8::2", "services:\n"+serviceYAML("web4", "198.18.100.1", backends, check)+extra+
		"announce:\n  l2:\n    interfaces: [eth0]\n")
}

// healthStates returns web4's backends of `xdplb backends -o json` by
// address.
func healthStates(t *testing.T, bin, socket string) map[string]BackendInfo {
	t.Helper()
	out, err := cli(t, bin, "backends", "--socket", socket, "-o", "json")
	if err != nil {
		t.Fatalf("xdplb backends: %v\n%s", err, out)
	}
	var bs []BackendInfo
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		t.Fatalf("xdplb backends -o json: %v\n%s", err, out)
	}
	m := map[string]BackendInfo{}
	for _, b := range bs {
		if b.Service == "web4" {
			m[b.Address] = b
		}
	}
	return m
}

func stateOf(b BackendInfo) string {
	if b.Health == nil {
		return "(no health)"
	}
	return b.Health.State
}

func describeStates(m map[string]BackendInfo, names map[string]string) string {
	var parts []string
	for addr, b := range m {
		s := fmt.Sprintf("%s=%s", names[addr], stateOf(b))
		if b.Health != nil && b.Health.LastError != "" {
			s += fmt.Sprintf(" (%s)", b.Health.LastError)
		}
		parts = append(parts, s)
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// batch is the outcome of a batch of new connections.
type batch struct {
	counts  map[string]int // by the backend that answered
	refused int            // connection refused: a backend with no listener got it
	errs    []error        // other failures
}

// dialBatch opens n connections to VIP4 from the client, parallel at once,
// each given timeout, and closes them. Failures are counted, not fatal.
func dialBatch(cl *scenario.Servers, n, parallel int, timeout time.Duration) batch {
	b := batch{counts: map[string]int{}}
	var mu sync.Mutex
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := cl.Dial(ctx, scenario.VIP4)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				b.refused++
			case err != nil:
				b.errs = append(b.errs, err)
			default:
				b.counts[c.Backend]++
				c.Close()
			}
		})
	}
	wg.Wait()
	return b
}

// metricValue returns the value of the sample of name whose labels include
// every one of labels (`key="value"`), from a Prometheus text exposition.
func metricValue(metrics, name string, labels ...string) (float64, bool) {
	for _, l := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		match := true
		for _, lab := range labels {
			if !strings.Contains(l, lab) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

// countLogLines counts the daemon's log lines with message msg (exactly)
// about backend.
func countLogLines(log, msg, backend string) int {
	re := regexp.MustCompile(`msg="` + regexp.QuoteMeta(msg) + `" .*backend=` + regexp.QuoteMeta(backend) + `( |$)`)
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}

// resolveVIPOnLink makes the client treat vip as on its LAN (a /32 route
// on eth0, so it asks for the VIP's MAC by ARP instead of routing it via the
// load balancer), forgets any entry for it, pokes it, and returns the MAC it
// resolved within wait, or "". The route is removed again before it returns.
func resolveVIPOnLink(t *testing.T, client *testnet.Host, vip netip.Addr, wait time.Duration) string {
	t.Helper()
	nl := client.NS.Netlink()
	route := &netlink.Route{
		LinkIndex: client.IfIndex,
		Dst:       &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if err := nl.RouteAdd(route); err != nil {
		t.Fatalf("adding an on-link route to %v on the client: %v", vip, err)
	}
	defer func() {
		if err := nl.RouteDel(route); err != nil {
			t.Errorf("removing the on-link route to %v: %v", vip, err)
		}
		_ = nl.NeighDel(&netlink.Neigh{LinkIndex: client.IfIndex, Family: netlink.FAMILY_V4, IP: vip.AsSlice()})
	}()
	_ = nl.NeighDel(&netlink.Neigh{LinkIndex: client.IfIndex, Family: netlink.FAMILY_V4, IP: vip.AsSlice()})
	poke := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := client.Dial(ctx, "udp", netip.AddrPortFrom(vip, 9).String())
		if err != nil {
			t.Fatalf("dialing %v from the client: %v", vip, err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("who has it?"))
	}
	deadline := time.Now().Add(wait)
	for next := time.Now(); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(next) {
			poke()
			next = time.Now().Add(300 * time.Millisecond)
		}
		list, err := nl.NeighList(client.IfIndex, netlink.FAMILY_V4)
		if err != nil {
			t.Fatalf("listing the client's neighbours: %v", err)
		}
		for _, n := range list {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == vip && n.HardwareAddr != nil &&
				n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED|netlink.NUD_NONE) == 0 {
				return n.HardwareAddr.String()
			}
		}
	}
	return ""
}

// TestDaemonHealthChecks runs the real daemon with TCP health checks over
// three backends whose servers the test stops and starts: a stopped server
// takes its backend out of new flows within fall×interval + timeout, while
// connections held to the other backends keep theirs and connections held
// to it get a quick reset; a restarted server brings it back after
// rise×interval; a daemon restart while it is down keeps it down (no flap);
// with every server stopped the VIP drops new flows (counted no_backend)
// and is no longer announced.
func TestDaemonHealthChecks(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	// The backends' servers, whose listeners the test closes and opens
	// again while the connections they accepted stay up.
	cl, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Error(err)
		}
	})

	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	socket := filepath.Join(dir, "xdplb.sock")
	const metricsAddr = "127.0.0.1:9650"
	metricsURL := "http://" + metricsAddr + "/metrics"
	var addrs []string
	names := map[string]string{} // address -> backend name
	for _, b := range topo.Backends {
		addrs = append(addrs, b.IPv4.String())
		names[b.IPv4.String()] = b.Name
	}
	b3 := topo.Backends[2]
	b3Addr := b3.IPv4.String()
	writeAtomically(t, cfgPath, healthConfig(dir, bpf, addrs, metricsAddr, ""))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})

	// observed is what `xdplb backends` showed of a backend over time:
	// state/last result, each change once.
	type observed []string
	note := func(o *observed, b BackendInfo) {
		s := stateOf(b)
		if b.Health != nil {
			s += "/" + b.Health.LastResult
		}
		if len(*o) == 0 || (*o)[len(*o)-1] != s {
			*o = append(*o, s)
		}
	}
	// waitState polls `xdplb backends` until addr is in state; it returns
	// the time from `from` until it was seen, the backend's info, and what
	// was seen on the way.
	waitState := func(addr, state string, from time.Time, limit time.Duration) (time.Duration, BackendInfo, observed) {
		t.Helper()
		var seen observed
		for {
			m := healthStates(t, bin, socket)
			note(&seen, m[addr])
			if b, ok := m[addr]; ok && stateOf(b) == state {
				return time.Since(from), b, seen
			}
			if time.Since(from) > limit {
				t.Fatalf("%s not %s %v after %v: %s", names[addr], state, limit, from.Format(time.StampMilli), describeStates(m, names))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// 1. All three come up (a new backend is pending until its first check).
	start := time.Now()
	for _, a := range addrs {
		waitState(a, "up", start, 3*time.Second)
	}
	t.Logf("all backends up %v after the daemon answered", time.Since(start).Round(time.Millisecond))
	m := scrape(t, topo.LB.NS, metricsURL)
	if v, ok := metricValue(m, "xdplb_backend_up", `backend="`+b3Addr+`"`); !ok || v != 1 {
		t.Errorf("xdplb_backend_up for %s = %v (found %v), want 1 while it is up", b3.Name, v, ok)
	}

	// 2. 30 connections held open, spread over the three.
	var held []*scenario.Conn
	heldBy := map[string]int{}
	for range 30 {
		c, err := cl.Dial(ctx, scenario.VIP4)
		if err != nil {
			t.Fatalf("holding connections: %v\n%s", err, describeStates(healthStates(t, bin, socket), names))
		}
		held = append(held, c)
		heldBy[c.Backend]++
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	t.Logf("held connections by backend: %v", heldBy)
	for _, h := range topo.Backends {
		if heldBy[h.Name] == 0 {
			t.Fatalf("no held connection reached %s: %v", h.Name, heldBy)
		}
	}
	for i, c := range held {
		if err := c.Echo(fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("held connection %d (%s) before any change: %v", i, c.Backend, err)
		}
	}

	// 3. b3's server stops listening: it refuses new connections. No new
	// connection may reach it after fall×interval + timeout (+ slack).
	detectBudget := hcFall*hcInterval + hcTimeout + hcSlack
	stopped := time.Now()
	cl.StopListening(b3.Name)
	var downSeen, lastBad time.Duration
	var b3Down BackendInfo
	var downTrace observed
	total := batch{counts: map[string]int{}}
	for {
		if downSeen == 0 {
			b := healthStates(t, bin, socket)[b3Addr]
			note(&downTrace, b)
			if stateOf(b) == "down" {
				downSeen, b3Down = time.Since(stopped), b
			}
		}
		bt := dialBatch(cl, 10, 10, time.Second)
		now := time.Since(stopped)
		for k, v := range bt.counts {
			total.counts[k] += v
		}
		total.refused += bt.refused
		total.errs = append(total.errs, bt.errs...)
		if bt.refused > 0 || bt.counts[b3.Name] > 0 {
			lastBad = now
		}
		if downSeen > 0 && now > downSeen+300*time.Millisecond {
			break
		}
		if now > detectBudget+2*time.Second {
			t.Fatalf("%s not taken out %v after its server stopped: %s", b3.Name, now, describeStates(healthStates(t, bin, socket), names))
		}
	}
	since := b3Down.Health.Since.Sub(stopped)
	t.Logf("detection: %s seen down %v after its server stopped (the checker marked it down after %v; last %s: %s); "+
		"the last new connection refused by it %v after; new connections meanwhile: %v, %d refused, %d other failures",
		b3.Name, downSeen.Round(time.Millisecond), since.Round(time.Millisecond), b3Down.Health.LastResult, b3Down.Health.LastError,
		lastBad.Round(time.Millisecond), total.counts, total.refused, len(total.errs))
	if downSeen > detectBudget {
		t.Errorf("%s seen down %v after its server stopped, want within fall×interval + timeout + %v = %v", b3.Name, downSeen, hcSlack, detectBudget)
	}
	if lastBad > detectBudget {
		t.Errorf("new connections still reached %s %v after its server stopped, want none after %v", b3.Name, lastBad, detectBudget)
	}
	if lo := (hcFall-1)*hcInterval - hcEarly; since < lo {
		t.Errorf("%s went down %v after its server stopped: fall=%d at %v needs at least %v", b3.Name, since, hcFall, hcInterval, lo)
	}
	// fall=2: one failed check leaves it up.
	if !slices.Contains(downTrace, "up/failed") {
		t.Errorf("%s went down without being seen up after a failed check (fall=%d): %v", b3.Name, hcFall, downTrace)
	}
	if len(total.errs) > 0 {
		t.Errorf("%d new connections failed otherwise than refused while %s went down, the first: %v", len(total.errs), b3.Name, total.errs[0])
	}
	if bt := dialBatch(cl, 60, 10, 3*time.Second); bt.counts[b3.Name] > 0 || bt.refused > 0 || len(bt.errs) > 0 {
		t.Errorf("after %s went down, 60 new connections: %v, %d refused, errors %v", b3.Name, bt.counts, bt.refused, bt.errs)
	}
	m = scrape(t, topo.LB.NS, metricsURL)
	if v, ok := metricValue(m, "xdplb_backend_up", `backend="`+b3Addr+`"`); !ok || v != 0 {
		t.Errorf("xdplb_backend_up for %s = %v (found %v), want 0 while it is down", b3.Name, v, ok)
	}

	// Held connections to b1 and b2 keep their backend: the echo comes from
	// the server connection that told its name, and explain names it.
	for i, c := range held {
		if c.Backend == b3.Name {
			continue
		}
		if err := c.Echo(fmt.Sprintf("after down %d", i)); err != nil {
			t.Errorf("held connection %d to %s broke when %s went down: %v", i, c.Backend, b3.Name, err)
			continue
		}
		out, err := cli(t, bin, "explain", "--socket", socket, "-o", "json", "--from", c.LocalAddr().String(), "--to", "198.18.100.1:80/tcp")
		if err != nil {
			t.Fatalf("xdplb explain: %v\n%s", err, out)
		}
		var e ExplainInfo
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("explain output: %v\n%s", err, out)
		}
		if names[e.Backend] != c.Backend {
			t.Errorf("held connection %d to %s: explain says it goes to %s (%s)", i, c.Backend, names[e.Backend], e.Text)
		}
	}
	// Held connections to b3 are re-balanced to a live backend, which
	// resets them: a quick answer rather than a timeout.
	for i, c := range held {
		if c.Backend != b3.Name {
			continue
		}
		t0 := time.Now()
		err := c.Echo(fmt.Sprintf("after down %d", i))
		took := time.Since(t0)
		if err == nil {
			t.Errorf("held connection %d to %s still echoes although %s is down: its flow was not re-balanced", i, c.Backend, b3.Name)
		} else if !errors.Is(err, syscall.ECONNRESET) || took > time.Second {
			t.Errorf("held connection %d to the down %s: %v after %v, want a reset at once", i, c.Backend, err, took)
		}
	}

	// 4. b3's server listens again: b3 gets new flows after rise×interval.
	recoverBudget := hcRise*hcInterval + hcTimeout + hcSlack
	restarted := time.Now()
	if err := cl.Listen(b3.Name); err != nil {
		t.Fatal(err)
	}
	upSeen, b3Up, upTrace := waitState(b3Addr, "up", restarted, recoverBudget+2*time.Second)
	// rise=2: one passed check leaves it down.
	if !slices.Contains(upTrace, "down/ok") {
		t.Errorf("%s came up without being seen down after a passed check (rise=%d): %v", b3.Name, hcRise, upTrace)
	}
	var landed time.Duration
	for {
		bt := dialBatch(cl, 60, 10, 3*time.Second)
		if bt.refused > 0 || len(bt.errs) > 0 {
			t.Errorf("while %s came back: %d refused, errors %v", b3.Name, bt.refused, bt.errs)
		}
		if bt.counts[b3.Name] > 0 {
			landed = time.Since(restarted)
			t.Logf("60 new connections after %s came up: %v", b3.Name, bt.counts)
			break
		}
		if time.Since(restarted) > upSeen+time.Second {
			t.Fatalf("%s up for 1 s, but no new connection reaches it: %v", b3.Name, bt.counts)
		}
	}
	sinceUp := b3Up.Health.Since.Sub(restarted)
	t.Logf("recovery: %s seen up %v after its server restarted (the checker marked it up after %v); a new connection reached it %v after",
		b3.Name, upSeen.Round(time.Millisecond), sinceUp.Round(time.Millisecond), landed.Round(time.Millisecond))
	if upSeen > recoverBudget {
		t.Errorf("%s seen up %v after its server restarted, want within rise×interval + timeout + %v = %v", b3.Name, upSeen, hcSlack, recoverBudget)
	}
	if landed > recoverBudget {
		t.Errorf("new connections reached %s only %v after its server restarted, want within %v", b3.Name, landed, recoverBudget)
	}
	if lo := (hcRise-1)*hcInterval - hcEarly; sinceUp < lo {
		t.Errorf("%s came up %v after its server restarted: rise=%d at %v needs at least %v", b3.Name, sinceUp, hcRise, hcInterval, lo)
	}
	m = scrape(t, topo.LB.NS, metricsURL)
	if v, ok := metricValue(m, "xdplb_backend_up", `backend="`+b3Addr+`"`); !ok || v != 1 {
		t.Errorf("xdplb_backend_up for %s = %v (found %v), want 1 after it came back", b3.Name, v, ok)
	}
	for _, to := range []string{"down", "up"} {
		if v, ok := metricValue(m, "xdplb_backend_health_transitions_total", `to="`+to+`"`); !ok || v < 1 {
			t.Errorf("xdplb_backend_health_transitions_total{to=%q} = %v (found %v), want ≥ 1", to, v, ok)
		}
	}
	for i, c := range held {
		if c.Backend == b3.Name {
			continue
		}
		if err := c.Echo(fmt.Sprintf("after up %d", i)); err != nil {
			t.Errorf("held connection %d to %s broke when %s came back: %v", i, c.Backend, b3.Name, err)
		}
	}

	// 5. Restart while b3 is down: the saved state is restored, no flap.
	stopped = time.Now()
	cl.StopListening(b3.Name)
	again, _, _ := waitState(b3Addr, "down", stopped, detectBudget+2*time.Second)
	t.Logf("second detection: %s seen down %v after its server stopped", b3.Name, again.Round(time.Millisecond))
	// A reload keeps the state of backends whose check did not change:
	// another service added, then removed again.
	m0 := healthStates(t, bin, socket)
	web6 := serviceYAML("web6", "2001:db8:100::1", []string{"198.18.0.11"}, "")
	for _, extra := range []string{web6, ""} {
		writeAtomically(t, cfgPath, healthConfig(dir, bpf, addrs, metricsAddr, extra))
		if out, err := cli(t, bin, "reload", "--socket", socket); err != nil || !strings.HasPrefix(out, "reloaded: success") {
			t.Fatalf("xdplb reload: %v\n%s", err, out)
		}
		m1 := healthStates(t, bin, socket)
		for _, a := range addrs {
			b0, b1 := m0[a], m1[a]
			if b1.Health == nil || stateOf(b1) != stateOf(b0) || !b1.Health.Since.Equal(b0.Health.Since) {
				t.Errorf("a reload that left web4 alone changed %s from %s (since %v) to %s (%+v)", names[a], stateOf(b0), b0.Health.Since, stateOf(b1), b1.Health)
			}
		}
	}
	if bt := dialBatch(cl, 30, 10, 3*time.Second); bt.counts[b3.Name] > 0 || bt.refused > 0 || len(bt.errs) > 0 {
		t.Errorf("after the reloads, 30 new connections: %v, %d refused, errors %v", bt.counts, bt.refused, bt.errs)
	}

	d.stop(t)
	firstLog := d.log.String()
	for _, c := range []struct {
		msg  string
		want int
	}{{"backend up: first check passed", 1}, {"backend down", 2}, {"backend up", 1}, {"backend down: first check failed", 0}} {
		if n := countLogLines(firstLog, c.msg, b3Addr); n != c.want {
			t.Errorf("the daemon logged %q for %s %d times, want %d (once per change)", c.msg, b3.Name, n, c.want)
		}
	}
	saved, err := os.ReadFile(filepath.Join(dir, "state", health.StateFile))
	if err != nil {
		t.Errorf("no health state saved: %v", err)
	}
	restartAt := time.Now()
	d = startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	m1 := healthStates(t, bin, socket)
	t.Logf("right after the restart (%v): %s", time.Since(restartAt).Round(time.Millisecond), describeStates(m1, names))
	for _, a := range addrs {
		want := "up"
		if a == b3Addr {
			want = "down"
		}
		if got := stateOf(m1[a]); got != want {
			t.Errorf("right after the restart %s is %s, want %s (restored)\nsaved state:\n%s", names[a], got, want, saved)
		} else if since := m1[a].Health.Since; !since.Equal(m0[a].Health.Since) {
			// Not decided afresh by a first check after the restart.
			t.Errorf("right after the restart %s is %s since %v, want since %v (restored)\nsaved state:\n%s", names[a], got, since, m0[a].Health.Since, saved)
		}
	}
	if bt := dialBatch(cl, 60, 10, 3*time.Second); bt.counts[b3.Name] > 0 || bt.refused > 0 || len(bt.errs) > 0 {
		t.Errorf("right after the restart, 60 new connections: %v, %d refused, errors %v", bt.counts, bt.refused, bt.errs)
	}
	m = scrape(t, topo.LB.NS, metricsURL)
	if v, ok := metricValue(m, "xdplb_backend_up", `backend="`+b3Addr+`"`); !ok || v != 0 {
		t.Errorf("right after the restart xdplb_backend_up for %s = %v (found %v), want 0", b3.Name, v, ok)
	}
	for _, to := range []string{"down", "up"} {
		if v, ok := metricValue(m, "xdplb_backend_health_transitions_total", `to="`+to+`"`); !ok || v != 0 {
			t.Errorf("right after the restart xdplb_backend_health_transitions_total{to=%q} = %v (found %v), want 0: a restored state is no transition", to, v, ok)
		}
	}
	// Checks resume: every backend is checked again, b3 stays down.
	deadline := time.Now().Add(3 * hcInterval)
	for {
		m := healthStates(t, bin, socket)
		resumed := true
		for _, a := range addrs {
			if h := m[a].Health; h == nil || !h.LastCheck.After(restartAt) {
				resumed = false
			}
		}
		if resumed {
			if got := stateOf(m[b3Addr]); got != "down" || m[b3Addr].Health.LastResult != "failed" {
				t.Errorf("after the restart's first checks %s is %s (last %s), want down (failed)", b3.Name, got, m[b3Addr].Health.LastResult)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no check of every backend within %v of the restart: %s", 3*hcInterval, describeStates(m, names))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, c := range held {
		if c.Backend == b3.Name {
			continue
		}
		if err := c.Echo(fmt.Sprintf("after restart %d", i)); err != nil {
			t.Errorf("held connection %d to %s broke across the restart: %v", i, c.Backend, err)
		}
	}

	// 6. Every server stopped: the VIP drops new flows (counted no_backend)
	// and is no longer announced.
	var st StatusInfo
	if err := controlplane.Call(ctx, socket, Request{Command: "status"}, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Announced) != 1 || strings.Join(st.Announced[0].VIPs, ",") != scenario.VIP4.String() {
		t.Errorf("with two backends up, announced %+v, want %v on eth0", st.Announced, scenario.VIP4)
	}
	lbMAC := topo.LB.MAC.String()
	if mac := resolveVIPOnLink(t, topo.Client, scenario.VIP4, 3*time.Second); mac != lbMAC {
		t.Errorf("with two backends up, the client resolved %v to %q, want the load balancer's %s", scenario.VIP4, mac, lbMAC)
	}
	stopped = time.Now()
	for _, h := range topo.Backends {
		cl.StopListening(h.Name)
	}
	for _, a := range addrs {
		waitState(a, "down", stopped, detectBudget+2*time.Second)
	}
	t.Logf("every backend down %v after every server stopped", time.Since(stopped).Round(time.Millisecond))
	// The re-apply follows the state by a moment: wait until announcing
	// stopped, which the same apply does.
	deadline = time.Now().Add(time.Second)
	for {
		if err := controlplane.Call(ctx, socket, Request{Command: "status"}, &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Announced) == 1 && len(st.Announced[0].VIPs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("every backend down, yet announced %+v", st.Announced)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	noBackend := func() float64 {
		v, ok := metricValue(scrape(t, topo.LB.NS, metricsURL), "xdplb_datapath_packets_total", `action="drop"`, `reason="no_backend"`)
		if !ok {
			t.Fatalf("no xdplb_datapath_packets_total{action=\"drop\",reason=\"no_backend\"}")
		}
		return v
	}
	before := noBackend()
	const attempts = 5
	bt := dialBatch(cl, attempts, attempts, 500*time.Millisecond)
	if n := len(bt.counts) + bt.refused; n > 0 || len(bt.errs) != attempts {
		t.Errorf("every backend down: %d connections answered, %d refused, want all %d to time out", len(bt.counts), bt.refused, attempts)
	}
	for _, err := range bt.errs {
		if !errors.Is(err, context.DeadlineExceeded) && !os.IsTimeout(err) {
			t.Errorf("every backend down: a connection failed with %v, want a timeout (its SYN dropped)", err)
			break
		}
	}
	after := noBackend()
	t.Logf("every backend down: %d connections timed out; drop/no_backend %v -> %v", len(bt.errs), before, after)
	if after-before < attempts {
		t.Errorf("xdplb_datapath_packets_total{action=\"drop\",reason=\"no_backend\"} went from %v to %v, want ≥ %d more", before, after, attempts)
	}
	if mac := resolveVIPOnLink(t, topo.Client, scenario.VIP4, 1500*time.Millisecond); mac != "" {
		t.Errorf("every backend down, yet the client resolved %v to %s: still announced", scenario.VIP4, mac)
	}

	d.stop(t)
	lastLog := d.log.String()
	if n := countLogLines(lastLog, "backend up", b3Addr) + countLogLines(lastLog, "backend down", b3Addr); n != 0 {
		t.Errorf("the restarted daemon logged %d changes of %s, which stayed down throughout", n, b3.Name)
	}
	for _, h := range topo.Backends[:2] {
		if n := countLogLines(lastLog, "backend down", h.IPv4.String()); n != 1 {
			t.Errorf("the restarted daemon logged %q for %s %d times, want 1", "backend down", h.Name, n)
		}
	}
}
