package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/promtest"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// builtBinaryDir holds the binary buildBinary built; TestMain removes it.
var builtBinaryDir string

// buildBinary builds xdplb once per test binary.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "xdplb-bin")
	if err != nil {
		return "", err
	}
	builtBinaryDir = dir
	bin := filepath.Join(dir, "xdplb")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// testFiles are where a test appliance keeps things.
type testFiles struct {
	Socket, State, BPF string
	Metrics            string // host:port of /metrics
}

// applianceYAML is a configuration file for tests: eth0, the test seed,
// encapsulation sources src4 and src6, then body (services, pools,
// announce, …, as YAML at the top level), then metrics and paths.
func applianceYAML(f testFiles, src4, src6, body string) string {
	return fmt.Sprintf(`interfaces:
  - name: eth0
maglev:
  seed: "eGRwbGItdGVzdC1zZWVkIQ=="
conntrack:
  maxFlows: 65536
encap:
  sourceIPv4: %s
  sourceIPv6: %s
%smetrics:
  listen: "%s"
paths:
  socket: %s
  state: %s
  bpf: %s
`, src4, src6, body, f.Metrics, f.Socket, f.State, f.BPF)
}

// serviceYAML is a DSR TCP service on port 80 over backends; extra lines
// (already indented) follow its backends.
func serviceYAML(name, vip string, backends []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    address: %s\n    protocol: tcp\n    ports: [80]\n    mode: dsr\n    backends:\n", name, vip)
	for _, a := range backends {
		fmt.Fprintf(&b, "      - {address: %s}\n", a)
	}
	b.WriteString(extra)
	return b.String()
}

// testConfig is the configuration of TestDaemonEndToEnd: web4 and web6 (the
// scenario's VIPs) over backends.
func testConfig(dir, bpf string, backends []string, metricsAddr string) string {
	f := testFiles{Socket: dir + "/xdplb.sock", State: dir + "/state", BPF: bpf, Metrics: metricsAddr}
	return applianceYAML(f, "198.18.0.2", "2001:db8::2", "services:\n"+
		serviceYAML("web4", "198.18.100.1", backends, "")+serviceYAML("web6", "2001:db8:100::1", backends, ""))
}

// writeAtomically replaces path as editors do: a new file renamed over it.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// runningDaemon is `xdplb run` started in the load balancer's namespace.
type runningDaemon struct {
	cmd    *exec.Cmd
	log    *bytes.Buffer
	done   chan error
	socket string
}

func startTestDaemon(t *testing.T, bin string, ns *testnet.NS, cfgPath, socket string) *runningDaemon {
	t.Helper()
	d := &runningDaemon{log: &bytes.Buffer{}, done: make(chan error, 1), socket: socket}
	d.cmd = ns.Command(context.Background(), bin, "run", "--config", cfgPath, "--log-level", "debug")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var st StatusInfo
		if err := controlplane.Call(context.Background(), socket, Request{Command: "status"}, &st); err == nil {
			return d
		}
		select {
		case err := <-d.done:
			t.Fatalf("xdplb run exited: %v\n%s", err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			d.stop(t)
			t.Fatalf("xdplb run not ready after 15 s:\n%s", d.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM, as systemctl stop does, and waits.
func (d *runningDaemon) stop(t *testing.T) {
	t.Helper()
	if d.cmd.ProcessState != nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("xdplb run: %v\n%s", err, d.log)
		}
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		t.Errorf("xdplb run did not stop on SIGTERM:\n%s", d.log)
	}
}

// cli runs the xdplb CLI and returns its output.
func cli(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// TestDaemonEndToEnd runs the real binary on a config file in the namespace
// topology: traffic through both VIPs; `xdplb explain` names the backend that
// really got a connection; the file edited to remove a backend (new
// connections avoid it within 1 s); a broken edit (the old config keeps
// serving, the failure is counted and shown by `xdplb status`); the daemon
// restarted during a long-lived TCP stream (the stream continues).
func TestDaemonEndToEnd(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	srv, err := scenario.StartServers(topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	socket := filepath.Join(dir, "xdplb.sock")
	var addrs []string
	names := map[string]string{} // address -> backend name
	macOf := map[string]string{} // backend name -> MAC
	for _, b := range topo.Backends {
		macOf[b.Name] = b.MAC.String()
		addrs = append(addrs, b.IPv4.String())
		names[b.IPv4.String()] = b.Name
	}
	writeAtomically(t, cfgPath, testConfig(dir, bpf, addrs, "127.0.0.1:9650"))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
		// detach removes everything: no program on the interface, no pins.
		_ = topo.LB.NS.Do(func() error {
			l, err := netlink.LinkByName(topo.LB.Link)
			if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
				t.Errorf("an XDP program is still attached to %s after xdplb detach", topo.LB.Link)
			}
			return nil
		})
		if entries, err := os.ReadDir(bpf); err == nil {
			t.Errorf("pins left after xdplb detach: %v", entries)
		}
	})
	prom := promtest.StartWith(t, "127.0.0.1:9650", promtest.Options{NS: topo.LB.NS})

	// Traffic through both VIPs.
	for _, vip := range []netip.Addr{scenario.VIP4, scenario.VIP6} {
		counts, err := srv.Connections(ctx, vip, 600, 8)
		if err != nil {
			t.Fatalf("%s: %v\n%s", vip, err, d.log)
		}
		t.Logf("%s: %v", vip, counts)
		for _, b := range topo.Backends {
			if n := counts[b.Name]; n < 150 || n > 250 {
				t.Errorf("%s: backend %s answered %d of 600 connections, want 200 ±25%%", vip, b.Name, n)
			}
		}
	}

	// A real Prometheus scrapes the daemon: the per-VIP packet counter, read
	// back through its query API, is the datapath's.
	want, err := vipPackets(socket, "198.18.100.1:80/tcp")
	if err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	v, err := prom.WaitFor(qctx, `xdplb_vip_packets_total{vip="198.18.100.1",port="80",protocol="tcp"}`, func(v promtest.Vector) bool {
		return len(v) == 1 && v[0].Value >= float64(want)
	})
	cancel()
	if err != nil {
		t.Errorf("Prometheus: %v", err)
	} else {
		t.Logf("Prometheus read xdplb_vip_packets_total = %v (datapath: %d)", v[0].Value, want)
	}

	// explain names the backend that got a given connection.
	for i := 0; i < 5; i++ {
		c, err := srv.Dial(ctx, scenario.VIP4)
		if err != nil {
			t.Fatal(err)
		}
		out, err := cli(t, bin, "explain", "--socket", socket, "-o", "json", "--from", c.LocalAddr().String(), "--to", "198.18.100.1:80/tcp")
		c.Close()
		if err != nil {
			t.Fatalf("xdplb explain: %v\n%s", err, out)
		}
		var e ExplainInfo
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("explain output: %v\n%s", err, out)
		}
		if names[e.Backend] != c.Backend {
			t.Errorf("explain --from %s says %s (%s), but %s answered the connection", c.LocalAddr(), e.Backend, names[e.Backend], c.Backend)
		}
		// The real program, run on the flow's packet against the live maps,
		// agrees: the same backend, sent by MAC rewrite out of eth0.
		if e.Program == nil || !e.Agree || e.Program.BackendID != e.BackendID || e.Program.Reason != "tx/dsr_l2" || e.Program.Verdict != "XDP_TX" {
			t.Errorf("explain --from %s: model backend %d (%s), program %+v, agree %v: %s", c.LocalAddr(), e.BackendID, e.Reason, e.Program, e.Agree, e.Disagreement)
		}
		if e.Program != nil && !strings.Contains(e.Program.Output, fmt.Sprintf("> %s | ipv4 %s > 198.18.100.1 ttl 64 | tcp %d > 80", macOf[c.Backend], c.LocalAddr().(*net.TCPAddr).IP, c.LocalAddr().(*net.TCPAddr).Port)) {
			t.Errorf("explain --from %s: program output %q, want the frame to %s's MAC %s", c.LocalAddr(), e.Program.Output, c.Backend, macOf[c.Backend])
		}
	}
	// The table view shows both, and their agreement.
	out, err := cli(t, bin, "explain", "--socket", socket, "--from", "198.18.0.200:40000", "--to", "198.18.100.1:80/tcp")
	if err != nil {
		t.Fatalf("xdplb explain: %v\n%s", err, out)
	}
	for _, want := range []string{"Reason:      table: the Maglev table slot of the flow hash decides", "Program:     XDP_TX tx/dsr_l2, backend ", "Check:       the program does what the model says"} {
		if !strings.Contains(out, want) {
			t.Errorf("xdplb explain does not say %q:\n%s", want, out)
		}
	}

	// Remove b3 from the file: new connections avoid it within 1 s.
	removed := topo.Backends[2]
	writeAtomically(t, cfgPath, testConfig(dir, bpf, addrs[:2], "127.0.0.1:9650"))
	start := time.Now()
	for {
		counts, err := srv.Connections(ctx, scenario.VIP4, 30, 8)
		if err != nil {
			t.Fatal(err)
		}
		if counts[removed.Name] == 0 {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("1 s after the edit, %s still gets new connections: %v", removed.Name, counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("removal took effect within %v", time.Since(start).Round(time.Millisecond))

	// A broken edit: the old config keeps serving; status shows the failure.
	writeAtomically(t, cfgPath, strings.Replace(testConfig(dir, bpf, addrs[:2], "127.0.0.1:9650"), "protocol: tcp", "protocol: tcpp", 1))
	var st StatusInfo
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := controlplane.Call(ctx, socket, Request{Command: "status"}, &st); err != nil {
			t.Fatal(err)
		}
		if st.LastReload.Result == "failure" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.LastReload.Result != "failure" || st.LastReload.Trigger != "file" || len(st.LastReload.Errors) != 1 ||
		!strings.Contains(st.LastReload.Errors[0], `services[0].protocol: "tcpp" is`) {
		t.Errorf("status after a broken edit: last reload %+v", st.LastReload)
	}
	out, err = cli(t, bin, "status", "--socket", socket)
	if err != nil || !strings.Contains(out, "tcpp") {
		t.Errorf("xdplb status does not show the reload error (%v):\n%s", err, out)
	}
	if _, err := srv.Connections(ctx, scenario.VIP4, 50, 8); err != nil {
		t.Errorf("after a broken edit: %v", err)
	}
	metrics := scrape(t, topo.LB.NS, "http://127.0.0.1:9650/metrics")
	if !strings.Contains(metrics, `xdplb_config_reloads_total{result="failure"} 1`) {
		t.Errorf("metrics do not count the failed reload:\n%s", grepLines(metrics, "xdplb_config_reloads_total"))
	}
	// Fixed again, through `xdplb reload` and SIGHUP.
	writeAtomically(t, cfgPath, testConfig(dir, bpf, addrs[:2], "127.0.0.1:9650"))
	if out, err := cli(t, bin, "reload", "--socket", socket); err != nil || !strings.HasPrefix(out, "reloaded: success") {
		t.Errorf("xdplb reload: %v\n%s", err, out)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if err := controlplane.Call(ctx, socket, Request{Command: "status"}, &st); err != nil {
			t.Fatal(err)
		}
		if st.LastReload.Trigger == "sighup" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.LastReload.Trigger != "sighup" || st.LastReload.Result != "success" {
		t.Errorf("after SIGHUP: last reload %+v", st.LastReload)
	}

	// Restart during a long-lived stream: it continues.
	c, err := srv.Dial(ctx, scenario.VIP4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stopEcho := make(chan struct{})
	echoErr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopEcho:
				echoErr <- nil
				return
			default:
			}
			if err := c.Echo(fmt.Sprintf("message %d", i)); err != nil {
				echoErr <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	var before []BackendInfo
	if err := controlplane.Call(ctx, socket, Request{Command: "backends"}, &before); err != nil {
		t.Fatal(err)
	}
	d.stop(t)
	time.Sleep(300 * time.Millisecond) // no daemon: the datapath keeps forwarding
	d = startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	time.Sleep(500 * time.Millisecond)
	close(stopEcho)
	if err := <-echoErr; err != nil {
		t.Errorf("the stream broke across the restart: %v", err)
	}
	if !strings.Contains(d.log.String(), "reused=true") {
		t.Errorf("the restarted daemon did not take over the attachment:\n%s", d.log)
	}
	// The backends kept their ids (so their pinned flows and counters).
	var after []BackendInfo
	if err := controlplane.Call(ctx, socket, Request{Command: "backends"}, &after); err != nil {
		t.Fatal(err)
	}
	ids := func(bs []BackendInfo) map[string]uint32 {
		m := map[string]uint32{}
		for _, b := range bs {
			m[b.VIP+" "+b.Address] = b.ID
		}
		return m
	}
	if diff := cmp.Diff(ids(before), ids(after)); diff != "" {
		t.Errorf("backend ids across the restart (-before +after):\n%s", diff)
	}
}

// vipPackets reads a VIP's packet counter through the control socket.
func vipPackets(socket, vip string) (uint64, error) {
	var vips []VIPInfo
	if err := controlplane.Call(context.Background(), socket, Request{Command: "vips"}, &vips); err != nil {
		return 0, err
	}
	for _, v := range vips {
		if v.VIP == vip {
			return v.Stats.Packets, nil
		}
	}
	return 0, fmt.Errorf("no VIP %s", vip)
}

// scrape fetches url from inside ns.
func scrape(t *testing.T, ns *testnet.NS, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.Dial}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
