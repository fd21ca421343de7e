package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
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

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// envInNetns is set in the copy of the test binary that TestMain runs
// inside a network namespace of its own.
const envInNetns = "XDPLB_CONTROLPLANE_TEST_NETNS"

// TestMain runs the package's tests, as root inside a fresh network
// namespace: the control plane's goroutines (neighbour and route watchers,
// next-hop resolution) work on whatever namespace their thread is in, so the
// whole process moves there rather than one locked thread.
func TestMain(m *testing.M) {
	if os.Getenv(envInNetns) != "" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	ns, err := testnet.NewNS("cp")
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane tests: making a network namespace:", err)
		os.Exit(m.Run()) // the privileged tests say why they cannot run
	}
	cmd := ns.Command(context.Background(), os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), envInNetns+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	ns.Close()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.ExitCode())
	case err != nil:
		fmt.Fprintln(os.Stderr, "controlplane tests:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// requireNetns fails or skips a test that needs root, and fails one that is
// not inside the test namespace.
func requireNetns(t *testing.T) {
	t.Helper()
	testnet.RequirePrivileged(t)
	if os.Getenv(envInNetns) == "" {
		t.Fatal("not inside the test's network namespace (see TestMain)")
	}
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeSource offers what the test sends it.
type fakeSource struct {
	name   string
	offers chan []config.Service
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Run(ctx context.Context, update func([]config.Service)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-f.offers:
			update(s)
		}
	}
}

// Backends of the test plane, on eth0 (a veth pair's end) with permanent
// neighbour entries.
var testBackends = map[string]net.HardwareAddr{
	"198.18.0.21": {0x02, 0, 0, 0, 0, 0x21},
	"198.18.0.22": {0x02, 0, 0, 0, 0, 0x22},
}

// testFiles sets up eth0 (a veth pair's end, with permanent neighbour
// entries for the test backends) and a bpffs, and returns a directory for
// the configuration and state and the pin path.
func testFiles(t *testing.T) (dir, bpf string) {
	t.Helper()
	requireNetns(t)
	eth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}
	if err := netlink.LinkAdd(eth); err != nil {
		t.Fatalf("adding eth0: %v", err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(eth) })
	for _, name := range []string{"eth0", "eth0-peer"} {
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := netlink.ParseAddr("198.18.0.1/24")
	if err := netlink.AddrAdd(eth, addr); err != nil {
		t.Fatal(err)
	}
	for ip, mac := range testBackends {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V4,
			IP: net.ParseIP(ip), HardwareAddr: mac, State: netlink.NUD_PERMANENT}); err != nil {
			t.Fatal(err)
		}
	}
	return t.TempDir(), filepath.Join(testnet.MountBPFFS(t), "xdplb")
}

// testSeed is the maglev section of the test configurations.
const testSeed = "maglev:\n  seed: \"eGRwbGItdGVzdC1zZWVkIQ==\"\n"

// writeConfig writes the configuration of a test plane: eth0, maglev (YAML
// of the section, or ""), the services (YAML under services:).
func writeConfig(t *testing.T, dir, bpf, maglev, services string) string {
	t.Helper()
	cfg := fmt.Sprintf(`interfaces:
  - {name: eth0, xdpMode: generic}
%sconntrack:
  maxFlows: 65536
services:
%smetrics:
  listen: "127.0.0.1:9660"
paths:
  socket: %s/xdplb.sock
  state: %s/state
  bpf: %s
`, maglev, services, dir, dir, bpf)
	path := filepath.Join(dir, "xdplb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testPlane starts a control plane on eth0 with the file's services
// (YAML under services:) and the given sources; it stops and removes
// everything when the test ends. The returned buffer has the log.
func testPlane(t *testing.T, services string, sources ...Source) (p *Plane, logs *syncBuffer, start func()) {
	t.Helper()
	dir, bpf := testFiles(t)
	return startPlane(t, writeConfig(t, dir, bpf, testSeed, services), sources...)
}

// startPlane makes a control plane of the configuration at path; start
// runs it. It is stopped when the test ends.
func startPlane(t *testing.T, path string, sources ...Source) (p *Plane, logs *syncBuffer, start func()) {
	t.Helper()
	logs = &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(context.Background(), Options{ConfigPath: path, Logger: log, Sources: sources, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := false
	start = func() {
		started = true
		go func() { done <- p.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		if !started {
			p.dp.Close()
			return
		}
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	return p, logs, start
}

const webService = `  - name: web
    address: 198.18.10.10
    protocol: tcp
    ports: [80]
    mode: dsr
    backends:
      - {address: 198.18.0.21}
`

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("5 s without %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTwoSourcesClaimOneVIP feeds the file and a second source that both
// claim 198.18.10.10:80/tcp: the file, first, keeps it; the other source's
// claim shows in the status and the conflict count and is logged once; its
// other services run; offering the same again changes nothing.
func TestTwoSourcesClaimOneVIP(t *testing.T) {
	k8s := &fakeSource{name: "kubernetes", offers: make(chan []config.Service)}
	p, logs, start := testPlane(t, webService, k8s)
	start()
	backend := func(a string) []config.Backend {
		return []config.Backend{{Addr: netip.MustParseAddr(a), Weight: 1}}
	}
	offer := []config.Service{
		{Name: "default/web", Addr: netip.MustParseAddr("198.18.10.10"), Protocol: config.ProtocolTCP, Ports: []uint16{80}, Backends: backend("198.18.0.22"), MinHealthyBackends: 1},
		{Name: "default/api", Addr: netip.MustParseAddr("198.18.10.12"), Protocol: config.ProtocolTCP, Ports: []uint16{8080}, Backends: backend("198.18.0.22"), MinHealthyBackends: 1},
	}
	for range 3 {
		k8s.offers <- offer
	}
	waitFor(t, "the second source's services applied", func() bool {
		s := p.Status()
		return len(s.Sources) == 2 && s.Sources[1].Services == 2 && s.Counts.VIPs == 2
	})

	s := p.Status()
	if len(s.Conflicts) != 1 {
		t.Fatalf("conflicts: %+v, want one", s.Conflicts)
	}
	c := s.Conflicts[0]
	c.Since = time.Time{}
	if want := (ConflictInfo{VIP: "198.18.10.10:80/tcp", Service: "default/web", Source: "kubernetes", HeldBy: "file", Owner: "web"}); c != want {
		t.Errorf("conflict: %+v, want %+v", c, want)
	}
	if got := p.Conflicts(); got["kubernetes"] != 1 || got["file"] != 0 {
		t.Errorf("Conflicts() = %v, want kubernetes 1, file 0", got)
	}
	// The VIP still goes to the file's backend; the other source's other
	// service runs.
	got := map[string]string{}
	for _, v := range p.VIPs() {
		got[v.VIP] = v.Service
		if v.VIP == "198.18.10.10:80/tcp" && (len(v.Backends) != 1 || v.Backends[0].Address != "198.18.0.21") {
			t.Errorf("198.18.10.10:80/tcp has backends %+v, want the file's 198.18.0.21", v.Backends)
		}
	}
	if want := map[string]string{"198.18.10.10:80/tcp": "web", "198.18.10.12:8080/tcp": "default/api"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("VIPs: %v, want %v", got, want)
	}
	// A reload of the file keeps it so: nothing flaps.
	if r := p.Reload(context.Background(), "socket"); r.Result != "success" {
		t.Fatalf("reload: %+v", r)
	}
	if s := p.Status(); len(s.Conflicts) != 1 || s.Conflicts[0].Source != "kubernetes" {
		t.Errorf("after a reload, conflicts %+v", s.Conflicts)
	}
	if n := strings.Count(logs.String(), `msg="conflict: a VIP or service name offered by two sources; the first keeps it" vip=198.18.10.10:80/tcp service=default/web source=kubernetes held_by=file owner=web`); n != 1 {
		t.Errorf("the conflict was logged %d times, want once", n)
	}
}

// TestWatchdogKickedByLoop runs the plane under a systemd watchdog: the
// loop kicks it while it runs, and a loop stuck in an apply stops the kicks
// (so systemd restarts the daemon) until it moves again.
func TestWatchdogKickedByLoop(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000") // 100 ms: kicks every 50 ms
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))

	p, _, start := testPlane(t, webService)
	var block atomic.Bool
	entered, release := make(chan struct{}, 1), make(chan struct{})
	p.beforeApply = func() {
		if block.Load() {
			entered <- struct{}{}
			<-release
		}
	}
	start()
	kicks := func(window time.Duration) int {
		n := 0
		buf := make([]byte, 64)
		end := time.Now().Add(window)
		for {
			_ = conn.SetReadDeadline(end)
			m, err := conn.Read(buf)
			if err != nil {
				return n
			}
			if string(buf[:m]) == "WATCHDOG=1" {
				n++
			}
		}
	}
	if n := kicks(time.Second); n < 2 {
		t.Fatalf("%d watchdog kicks in a second of a running loop, want at least 2", n)
	}

	block.Store(true)
	reloaded := make(chan ReloadInfo, 1)
	go func() { reloaded <- p.Reload(context.Background(), "socket") }()
	<-entered
	kicks(20 * time.Millisecond) // what was sent before the loop stopped
	if n := kicks(500 * time.Millisecond); n != 0 {
		t.Errorf("%d watchdog kicks while the loop was stuck for 500 ms (5 timeouts), want 0", n)
	}
	// Later applies (a route change settling late, on a busy host) must
	// not block: one would wait forever on entered, and the loop with it.
	block.Store(false)
	close(release)
	if r := <-reloaded; r.Result != "success" {
		t.Errorf("reload after the stall: %+v", r)
	}
	if n := kicks(time.Second); n < 2 {
		t.Errorf("%d watchdog kicks in the second after the loop moved again, want at least 2", n)
	}
}

// TestGeneratedSeed: a configuration without maglev.seed runs on a seed the
// appliance makes, keeps in its state directory, logs once and shows in the
// status; a second instance on the same state directory uses the same seed,
// so its tables are the same and every flow keeps its backend.
func TestGeneratedSeed(t *testing.T) {
	dir, bpf := testFiles(t)
	services := webService + `  - name: api
    address: 198.18.10.11
    protocol: tcp
    ports: [443]
    mode: dsr
    backends:
      - {address: 198.18.0.21}
      - {address: 198.18.0.22}
`
	path := writeConfig(t, dir, bpf, "", services)
	slotsOf := func(p *Plane) string {
		m, err := p.Maglev("198.18.10.11:443/tcp")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(m.Backends)
	}
	tableOf := func(p *Plane) []uint32 {
		k, err := xdp.ParseVIPKey("198.18.10.11:443/tcp")
		if err != nil {
			t.Fatal(err)
		}
		table, err := p.dp.Table(k)
		if err != nil {
			t.Fatal(err)
		}
		return table
	}

	p1, logs1, _ := startPlane(t, path)
	seedPath := filepath.Join(dir, "state", seedFile)
	seed, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatalf("no generated seed: %v", err)
	}
	if s := p1.Status(); s.Config.SeedFile != seedPath {
		t.Errorf("status: seed file %q, want %q", s.Config.SeedFile, seedPath)
	}
	if n := strings.Count(logs1.String(), "maglev.seed is not set"); n != 1 {
		t.Errorf("the generated seed was logged %d times, want once:\n%s", n, logs1)
	}
	if !strings.Contains(logs1.String(), strings.TrimSpace(string(seed))) {
		t.Errorf("the log does not show the seed %s", seed)
	}
	table1, slots1 := tableOf(p1), slotsOf(p1)
	// Applied again (as a reload does), the seed is not logged again.
	if err := p1.applyConfig(context.Background(), p1.Config(), "test"); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs1.String(), "maglev.seed is not set"); n != 1 {
		t.Errorf("after another apply the generated seed was logged %d times, want once", n)
	}
	p1.dp.Close()

	p2, _, _ := startPlane(t, path)
	if seed2, _ := os.ReadFile(seedPath); string(seed2) != string(seed) {
		t.Errorf("the second instance changed the seed from %s to %s", seed, seed2)
	}
	if got := tableOf(p2); fmt.Sprint(got) != fmt.Sprint(table1) {
		t.Errorf("the second instance built another table")
	}
	if got := slotsOf(p2); got != slots1 {
		t.Errorf("slots: %s, then %s", slots1, got)
	}
}

// TestSNATConfigReachesDatapath: the snat section goes to the datapath (its
// sources and ports), conntrack.maxNATFlows sizes its NAT tables (and a
// change of it is refused until a restart), a snat service's backends carry
// their own port, and a source that is no host address is announced like a
// VIP while one of the host's is not.
func TestSNATConfigReachesDatapath(t *testing.T) {
	dir, bpf := testFiles(t)
	snat := testSeed + "snat:\n  sources: [198.18.0.1, 198.18.0.99, \"2001:db8::9\"]\n  ports: 40000-40100\n"
	services := `  - name: db
    address: 198.18.10.20
    protocol: tcp
    ports: [5432]
    mode: snat
    backends:
      - {address: 198.18.0.21, port: 15432}
`
	path := writeConfig(t, dir, bpf, snat, services)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = []byte(strings.Replace(string(data), "  maxFlows: 65536\n", "  maxFlows: 65536\n  maxNATFlows: 1000\n", 1))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p, _, start := startPlane(t, path)
	start()
	waitFor(t, "the snat service applied", func() bool { return p.Status().Counts.VIPs == 1 })

	got := p.dp.NAT()
	want := xdp.NATConfig{Sources: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.99"), netip.MustParseAddr("2001:db8::9")}, PortLo: 40000, PortHi: 40100}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("datapath NAT config %v, want %v", got, want)
	}
	if c := p.Status().Counts; c.NATCapacity != 1000 {
		t.Errorf("status: NAT capacity %d, want 1000, conntrack.maxNATFlows (xdplb status shows NAT flows when snat.sources is set)", c.NATCapacity)
	}
	plan, err := p.Plan(context.Background(), "next.yaml", []byte(strings.Replace(string(data), "maxNATFlows: 1000", "maxNATFlows: 2000", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "conntrack.maxNATFlows changed from 1000 to 2000: the flow tables are sized when the datapath is created; restart with `xdplb detach` first to resize them"; !slices.Contains(plan.Errors, want) {
		t.Errorf("plan of a new conntrack.maxNATFlows: errors %q, want %q", plan.Errors, want)
	}
	bes, err := p.dp.Backends()
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	for _, b := range bes {
		ports = append(ports, b.Port)
	}
	if fmt.Sprint(ports) != "[15432]" {
		t.Errorf("backend ports %v, want [15432]", ports)
	}
	p.mu.Lock()
	announced := slices.Clone(p.announced)
	p.mu.Unlock()
	if !slices.Contains(announced, netip.MustParseAddr("198.18.0.99")) || !slices.Contains(announced, netip.MustParseAddr("2001:db8::9")) ||
		slices.Contains(announced, netip.MustParseAddr("198.18.0.1")) {
		t.Errorf("announced %v, want the foreign sources 198.18.0.99 and 2001:db8::9 and not the host's 198.18.0.1", announced)
	}

	// A client's SYN makes a NAT flow, which `xdplb conntrack` lists.
	client := netip.MustParseAddrPort("198.18.0.50:41000")
	syn := packet.MustBuild(packet.Ethernet{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		Payload: packet.IPv4{Src: client.Addr(), Dst: netip.MustParseAddr("198.18.10.20"), TTL: 64,
			Payload: packet.TCP{SrcPort: client.Port(), DstPort: 5432, Seq: 1, Flags: packet.TCPSyn, Window: 1000}}})
	ret, err := p.dp.Program().Run(&ebpf.RunOptions{Data: syn, DataOut: make([]byte, len(syn)+64)})
	if err != nil || ret != xdp.XDPRedirect {
		t.Fatalf("SYN through the program: verdict %d, %v; want XDP_REDIRECT (to eth0)", ret, err)
	}
	flows, err := p.Flows("198.18.10.20:5432/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("flows %+v, want one NAT flow", flows)
	}
	f := flows[0]
	src := netip.MustParseAddrPort(f.Source)
	if f.Client != client.String() || f.Backend != "198.18.0.21:15432" || f.State != "syn_sent" || !slices.Contains(want.Sources, src.Addr()) ||
		!src.Addr().Is4() || src.Port() < 40000 || src.Port() > 40100 {
		t.Errorf("NAT flow %+v: want client %s, backend 198.18.0.21:15432, state syn_sent, an IPv4 source with a port in 40000-40100", f, client)
	}
}
