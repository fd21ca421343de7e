package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/xdp"
)

// The e2e benchmark's addresses. The client sits on 198.18.1.0/24 behind the
// appliance; backend i is 198.18.(10+i).2 behind it, and has a return link
// 198.18.(20+i).0/24 to the client for DSR replies.
var (
	e2eClient = netip.MustParsePrefix("198.18.1.10/24")
	e2eLBIn   = netip.MustParsePrefix("198.18.1.2/24")
	e2eVIP    = netip.MustParseAddr("198.18.100.1")
)

const (
	e2eBackends = 2
	e2eTCPPort  = 80
	e2eUDPPort  = 53
	e2eFlows    = 1024
	e2eNftTable = "xdplb_bench"
	// e2eTableReply is the backends' routing table for traffic from their
	// appliance-side address: back through the appliance (DNAT replies).
	e2eTableReply = 100
)

func e2eBackendAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(10 + i), 2}), 24)
}
func e2eLBOut(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(10 + i), 1}), 24)
}
func e2eReturnBackend(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(20 + i), 2}), 24)
}
func e2eReturnClient(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(20 + i), 1}), 24)
}

// e2eModes are the three ways to balance the VIP.
var e2eModes = []string{"xdplb", "nftables", "haproxy"}

// e2eNet is the e2e topology: client ns —veth— appliance ns —veth— backend
// ns i, and a return veth from each backend to the client.
type e2eNet struct {
	client, app *testnet.NS
	backends    []*testnet.NS
	namespaces  []*testnet.NS
	c0, l0      *iface
	lOut, bIn   []*iface // appliance side, backend side of the backends' links
	rBack       []*iface // backends' return links

	sinkCounts []*ebpf.Map
	links      []link.Link // sinks and pass programs that stay
	progs      []*ebpf.Program
	pass       *ebpf.Program
	gen        *generator
	frame      []byte
	servers    []net.Listener
	serverWG   sync.WaitGroup
	dp         *xdp.Datapath
	rec        *lb.Reconciler
	dir        string // haproxy's config
}

func newE2ENet(ctx context.Context) (_ *e2eNet, err error) {
	n := &e2eNet{}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	id := shortID()
	mk := func(prefix string) (*testnet.NS, error) {
		ns, err := newBenchNS(prefix)
		if err == nil {
			n.namespaces = append(n.namespaces, ns)
			// Room for many short connections.
			err = ns.Sysctl("net.ipv4.ip_local_port_range", "1024 65000")
		}
		return ns, err
	}
	if n.client, err = mk("xecli"); err != nil {
		return nil, err
	}
	if n.app, err = mk("xelb"); err != nil {
		return nil, err
	}
	// The appliance forwards (nftables DNAT needs it; xdplb does not care).
	if err := n.app.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	mac := func(b4, b5 byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0x78, 0x6c, 0x02, b4, b5} }
	n.c0 = &iface{NS: n.client, Name: "e" + id + "c0", MAC: mac(1, 10), Addr: e2eClient}
	n.l0 = &iface{NS: n.app, Name: "e" + id + "l0", MAC: mac(1, 2), Addr: e2eLBIn}
	if err := addVeth(n.l0, n.c0); err != nil {
		return nil, err
	}
	if n.pass, err = passProgram(); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.pass)
	for i := range e2eBackends {
		b, err := mk("xebe" + strconv.Itoa(i+1))
		if err != nil {
			return nil, err
		}
		n.backends = append(n.backends, b)
		for _, kv := range [][2]string{
			{"net.ipv4.conf.all.accept_local", "1"},
			{"net.ipv4.conf.all.arp_ignore", "1"},
			{"net.ipv4.conf.all.arp_announce", "2"},
		} {
			if err := b.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		num := strconv.Itoa(i + 1)
		lo := &iface{NS: n.app, Name: "e" + id + "l" + num, MAC: mac(byte(10+i), 1), Addr: e2eLBOut(i)}
		bi := &iface{NS: b, Name: "e" + id + "b" + num, MAC: mac(byte(10+i), 2), Addr: e2eBackendAddr(i)}
		if err := addVeth(lo, bi); err != nil {
			return nil, err
		}
		rc := &iface{NS: n.client, Name: "e" + id + "r" + num, MAC: mac(byte(20+i), 1), Addr: e2eReturnClient(i)}
		rb := &iface{NS: b, Name: "e" + id + "q" + num, MAC: mac(byte(20+i), 2), Addr: e2eReturnBackend(i)}
		if err := addVeth(rb, rc); err != nil {
			return nil, err
		}
		n.lOut, n.bIn, n.rBack = append(n.lOut, lo), append(n.bIn, bi), append(n.rBack, rb)
		if err := n.setupBackend(i); err != nil {
			return nil, err
		}
	}
	// The client reaches the VIP through the appliance.
	if err := addRoute(n.client, netip.PrefixFrom(e2eVIP, 32), e2eLBIn.Addr(), n.c0, 0); err != nil {
		return nil, err
	}
	// The client's interface toward the appliance receives in NAPI (an
	// XDP_PASS program), its thread on the other CPU: replies that the
	// appliance sends (nftables, HAProxy) are then not processed on the
	// appliance's CPU.
	l, err := attachXDP(n.c0, n.pass)
	if err != nil {
		return nil, err
	}
	n.links = append(n.links, l)
	if err := napiOn(n.c0, otherCPU); err != nil {
		return nil, err
	}

	n.frame = udpFrame(n.c0.MAC, n.l0.MAC, e2eClient.Addr(), e2eVIP, fwdBasePort, e2eUDPPort)
	if n.gen, err = newGenerator(n.frame, e2eFlows, fwdBasePort); err != nil {
		return nil, err
	}
	all := append([]*iface{n.c0, n.l0}, n.lOut...)
	all = append(all, n.bIn...)
	if err := waitUp(ctx, all...); err != nil {
		return nil, err
	}
	return n, nil
}

// setupBackend gives backend i the VIP on lo, its routes (DSR replies, from
// the VIP, over the return link; replies from its own address back through
// the appliance), a sink that counts the UDP datagrams to the service and a
// TCP server.
func (n *e2eNet) setupBackend(i int) error {
	b := n.backends[i]
	lo, err := b.Netlink().LinkByName("lo")
	if err != nil {
		return err
	}
	vip := &netlink.Addr{IPNet: &net.IPNet{IP: e2eVIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := b.Netlink().AddrAdd(lo, vip); err != nil {
		return fmt.Errorf("adding the VIP to lo in %s: %w", b.Name, err)
	}
	clientNet := e2eClient.Masked()
	if err := addRoute(b, clientNet, e2eReturnClient(i).Addr(), n.rBack[i], 0); err != nil {
		return err
	}
	if err := addRoute(b, clientNet, e2eLBOut(i).Addr(), n.bIn[i], e2eTableReply); err != nil {
		return err
	}
	rule := netlink.NewRule()
	rule.Src = &net.IPNet{IP: e2eBackendAddr(i).Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}
	rule.Table = e2eTableReply
	rule.Priority = 100
	if err := b.Netlink().RuleAdd(rule); err != nil {
		return fmt.Errorf("adding the source rule in %s: %w", b.Name, err)
	}
	count, err := newCounter()
	if err != nil {
		return err
	}
	n.sinkCounts = append(n.sinkCounts, count)
	sink, err := sinkProgram(count, e2eUDPPort, xdpDrop)
	if err != nil {
		return err
	}
	n.progs = append(n.progs, sink)
	l, err := attachXDP(n.bIn[i], sink)
	if err != nil {
		return err
	}
	n.links = append(n.links, l)
	if err := napiOn(n.bIn[i], otherCPU); err != nil {
		return err
	}
	ln, err := b.Listen("tcp4", ":"+strconv.Itoa(e2eTCPPort))
	if err != nil {
		return fmt.Errorf("listening in %s: %w", b.Name, err)
	}
	n.servers = append(n.servers, ln)
	n.serverWG.Add(1)
	go func() {
		defer n.serverWG.Done()
		serve(ln, "b"+strconv.Itoa(i+1))
	}()
	return nil
}

// serve answers each connection's request line with the backend's name and
// closes it (the server closes first, so the client keeps no TIME_WAIT).
func serve(ln net.Listener, name string) {
	reply := []byte("ok " + name + "\n")
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReaderSize(c, 64)
			if _, err := r.ReadSlice('\n'); err != nil {
				return
			}
			c.Write(reply)
		}()
	}
}

func addRoute(ns *testnet.NS, dst netip.Prefix, gw netip.Addr, dev *iface, table int) error {
	r := &netlink.Route{
		LinkIndex: dev.Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		Gw:        gw.AsSlice(),
		Table:     table,
	}
	if err := ns.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %v via %v (table %d) in %s: %w", dst, gw, table, ns.Name, err)
	}
	return nil
}

// napiOn turns threaded NAPI on for e (which runs an XDP program) and pins
// its threads, SCHED_FIFO, to cpu.
func napiOn(e *iface, cpu int) error {
	threads, err := threadedNAPI(e.NS, e.Name)
	if err != nil {
		return err
	}
	return placeThreads(threads, cpu, true)
}

// e2eMode is one way of balancing, set up.
type e2eMode struct {
	name     string
	threads  []napiThread // the appliance's NAPI threads
	haproxy  *exec.Cmd
	teardown func() error
}

// applianceCPUTime is the CPU time of everything the appliance runs: its
// interfaces' NAPI threads and, for HAProxy, the process.
func (m *e2eMode) applianceCPUTime() (time.Duration, error) {
	t, err := threadsRuntime(m.threads)
	if err != nil {
		return 0, err
	}
	if m.haproxy != nil {
		h, err := processRuntime(m.haproxy.Process.Pid)
		if err != nil {
			return 0, fmt.Errorf("haproxy's CPU time: %w", err)
		}
		t += h
	}
	return t, nil
}

// setUp attaches the appliance's programs for mode and configures it.
func (n *e2eNet) setUp(ctx context.Context, mode string) (_ *e2eMode, err error) {
	m := &e2eMode{name: mode}
	var undo []func() error
	m.teardown = func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.teardown())
		}
	}()
	appIfs := append([]*iface{n.l0}, n.lOut...)
	if mode == "xdplb" {
		if n.dp == nil {
			if n.dp, err = xdp.Open(xdp.Options{PinPath: xdp.NoPin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 1 << 16}); err != nil {
				return nil, err
			}
			n.rec = lb.NewReconciler(n.dp, scenario.NextHops{NS: n.app}, lb.Options{MaxBackends: 64})
		}
		for _, e := range appIfs {
			if err := n.app.Do(func() error { _, err := n.dp.Attach(e.Name, xdp.AttachNative); return err }); err != nil {
				return nil, err
			}
			undo = append(undo, func() error { return n.app.Do(func() error { return n.dp.Detach(e.Name) }) })
		}
		var bs []lb.Backend
		for i := range e2eBackends {
			bs = append(bs, lb.Backend{Addr: e2eBackendAddr(i).Addr(), Weight: 1})
		}
		st := n.rec.Apply(ctx, lb.State{Seed: maglevSeed, Services: []lb.Service{
			{Name: "tcp", Addr: e2eVIP, Proto: xdp.TCP, Ports: []uint16{e2eTCPPort}, Mode: xdp.ModeDSRL2, Backends: bs},
			{Name: "udp", Addr: e2eVIP, Proto: xdp.UDP, Ports: []uint16{e2eUDPPort}, Mode: xdp.ModeDSRL2, Backends: bs},
		}}, nil)
		if len(st.Errors) > 0 {
			return nil, fmt.Errorf("configuring xdplb: %s: %s", st.Errors[0].Service, st.Errors[0].Err)
		}
	} else {
		for _, e := range appIfs {
			l, err := attachXDP(e, n.pass)
			if err != nil {
				return nil, err
			}
			undo = append(undo, l.Close)
		}
	}
	for _, e := range appIfs {
		threads, err := threadedNAPI(e.NS, e.Name)
		if err != nil {
			return nil, err
		}
		if err := placeThreads(threads, applianceCPU, true); err != nil {
			return nil, err
		}
		m.threads = append(m.threads, threads...)
	}
	switch mode {
	case "nftables":
		var targets []string
		for i := range e2eBackends {
			targets = append(targets, fmt.Sprintf("%d : %s", i, e2eBackendAddr(i).Addr()))
		}
		mapping := fmt.Sprintf("numgen inc mod %d map { %s }", e2eBackends, strings.Join(targets, ", "))
		rules := fmt.Sprintf(`table ip %[1]s {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[2]s tcp dport %[3]d dnat to %[5]s
		ip daddr %[2]s udp dport %[4]d dnat to %[5]s
	}
}
`, e2eNftTable, e2eVIP, e2eTCPPort, e2eUDPPort, mapping)
		if err := n.nft(ctx, rules, "-f", "-"); err != nil {
			return nil, err
		}
		undo = append(undo, func() error { return n.nft(context.Background(), "", "delete", "table", "ip", e2eNftTable) })
	case "haproxy":
		lo, err := n.app.Netlink().LinkByName("lo")
		if err != nil {
			return nil, err
		}
		vip := &netlink.Addr{IPNet: &net.IPNet{IP: e2eVIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := n.app.Netlink().AddrAdd(lo, vip); err != nil {
			return nil, fmt.Errorf("adding the VIP to the appliance's lo: %w", err)
		}
		undo = append(undo, func() error { return n.app.Netlink().AddrDel(lo, vip) })
		cmd, err := n.startHAProxy(ctx)
		if err != nil {
			return nil, err
		}
		m.haproxy = cmd
		undo = append(undo, func() error { return stopProcess(cmd) })
	}
	return m, nil
}

// nft runs nft inside the appliance's namespace.
func (n *e2eNet) nft(ctx context.Context, stdin string, args ...string) error {
	cmd := n.app.Command(ctx, "nft", args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), n.app.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startHAProxy runs HAProxy in TCP mode in the appliance's namespace, one
// thread pinned to the appliance's CPU, and waits until it accepts
// connections on the VIP.
func (n *e2eNet) startHAProxy(ctx context.Context) (*exec.Cmd, error) {
	if n.dir == "" {
		dir, err := os.MkdirTemp("", "xdplb-bench-haproxy-")
		if err != nil {
			return nil, err
		}
		n.dir = dir
	}
	var servers strings.Builder
	for i := range e2eBackends {
		fmt.Fprintf(&servers, "\tserver b%d %s:%d\n", i+1, e2eBackendAddr(i).Addr(), e2eTCPPort)
	}
	cfg := fmt.Sprintf(`global
	nbthread 1
	maxconn 8000
	pidfile %[1]s/haproxy.pid
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend vip
	bind %[2]s:%[3]d
	default_backend backends
backend backends
	balance roundrobin
%[4]s`, n.dir, e2eVIP, e2eTCPPort, servers.String())
	path := filepath.Join(n.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := n.app.Command(context.WithoutCancel(ctx), "haproxy", "-db", "-f", path)
	// If this process dies, so does HAProxy.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	// Pdeathsig fires when the thread that started the process ends: start
	// it from a thread that stays until HAProxy exits.
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting haproxy: %w", err)
	}
	ready := func() error {
		if canPin() {
			var set unix.CPUSet
			set.Set(applianceCPU)
			if err := unix.SchedSetaffinity(cmd.Process.Pid, &set); err != nil {
				return fmt.Errorf("pinning haproxy: %w", err)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := n.client.Dial(ctx, "tcp4", netip.AddrPortFrom(e2eVIP, e2eTCPPort).String())
			if err == nil {
				c.Close()
				return nil
			}
			select {
			case <-exited:
				return fmt.Errorf("haproxy exited: %s", strings.TrimSpace(out.String()))
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("haproxy does not accept connections on %v: %w", e2eVIP, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := ready(); err != nil {
		return nil, errors.Join(err, stopProcess(cmd))
	}
	return cmd, nil
}

// stopProcess kills a process this benchmark started and waits for it.
func stopProcess(cmd *exec.Cmd) error {
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s: %w", cmd.Path, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := unix.Kill(cmd.Process.Pid, 0); errors.Is(err, unix.ESRCH) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s (pid %d) did not exit", cmd.Path, cmd.Process.Pid)
}

// e2eSample is one measurement of one mode.
type e2eSample struct {
	// UDP: datagrams counted at the backends, the appliance's CPU time,
	// over Wall.
	UDPDelivered uint64        `json:"udp_delivered"`
	UDPWall      time.Duration `json:"udp_wall_ns"`
	UDPCPU       time.Duration `json:"udp_appliance_cpu_ns"`
	// UDPIngressDrops are frames the appliance's receive ring had no room
	// for; UDPEgressDrops datagrams the appliance sent that its veths to
	// the backends dropped.
	UDPIngressDrops uint64 `json:"udp_ingress_drops"`
	UDPEgressDrops  uint64 `json:"udp_egress_drops"`
	// TCP: connections completed (answered by a backend) and failed, the
	// appliance's CPU time, over Wall.
	Conns     uint64         `json:"tcp_conns"`
	Failed    uint64         `json:"tcp_failed"`
	PerServer map[string]int `json:"tcp_per_backend"`
	TCPWall   time.Duration  `json:"tcp_wall_ns"`
	TCPCPU    time.Duration  `json:"tcp_appliance_cpu_ns"`
}

func (s e2eSample) UDPMpps() float64 {
	if s.UDPWall == 0 {
		return 0
	}
	return float64(s.UDPDelivered) / s.UDPWall.Seconds() / 1e6
}

// UDPCPUPerMpkt is the appliance's CPU seconds per million datagrams
// delivered.
func (s e2eSample) UDPCPUPerMpkt() float64 {
	if s.UDPDelivered == 0 {
		return 0
	}
	return s.UDPCPU.Seconds() / (float64(s.UDPDelivered) / 1e6)
}

func (s e2eSample) ConnsPerSec() float64 { return float64(s.Conns) / s.TCPWall.Seconds() }

// TCPCPUPerConn is the appliance's CPU time per connection.
func (s e2eSample) TCPCPUPerConn() time.Duration {
	if s.Conns == 0 {
		return 0
	}
	return s.TCPCPU / time.Duration(s.Conns)
}

// measureUDP sends UDP datagrams to the VIP with live frames from the
// client for d, and counts what the backends got. With xdplb it checks that
// every datagram xdplb redirected reached a backend or was counted dropped by
// the appliance's egress veth.
func (n *e2eNet) measureUDP(ctx context.Context, m *e2eMode, d time.Duration) (e2eSample, error) {
	var s e2eSample
	var in0, in1 uint64
	read := func(in *uint64) (got, fwd, dropped uint64, cpu time.Duration, err error) {
		for _, c := range n.sinkCounts {
			v, err := readCounter(c)
			if err != nil {
				return 0, 0, 0, 0, err
			}
			got += v
		}
		st, err := linkStats(n.c0)
		if err != nil {
			return
		}
		*in = st.TxDropped
		if m.name == "xdplb" {
			if fwd, err = n.dp.Counter("redirect", "dsr_l2"); err != nil {
				return
			}
		}
		for _, e := range n.lOut {
			st, err := linkStats(e)
			if err != nil {
				return 0, 0, 0, 0, err
			}
			dropped += st.TxDropped
		}
		cpu, err = m.applianceCPUTime()
		return
	}
	g0, f0, d0, cpu0, err := read(&in0)
	if err != nil {
		return s, err
	}
	const chunk = 1 << 14
	start := time.Now()
	for time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		if err := n.gen.send(n.c0, chunk, otherCPU); err != nil {
			return s, err
		}
	}
	s.UDPWall = time.Since(start)
	time.Sleep(20 * time.Millisecond)
	g1, f1, d1, cpu1, err := read(&in1)
	if err != nil {
		return s, err
	}
	s.UDPDelivered, s.UDPCPU = g1-g0, cpu1-cpu0
	s.UDPIngressDrops, s.UDPEgressDrops = in1-in0, d1-d0
	if s.UDPDelivered == 0 {
		return s, fmt.Errorf("check failed: %s: no UDP datagram reached a backend", m.name)
	}
	if m.name == "xdplb" && s.UDPDelivered+(d1-d0) != f1-f0 {
		return s, fmt.Errorf("check failed: xdplb redirected %d datagrams, the backends counted %d and the egress veths dropped %d", f1-f0, s.UDPDelivered, d1-d0)
	}
	return s, nil
}

// measureTCP runs workers in the client's namespace for d, each making
// connections to the VIP one after the other: connect, a request line, the
// backend's answer, close.
func (n *e2eNet) measureTCP(ctx context.Context, m *e2eMode, workers int, d time.Duration) (e2eSample, error) {
	s := e2eSample{PerServer: map[string]int{}}
	cpu0, err := m.applianceCPUTime()
	if err != nil {
		return s, err
	}
	var conns, failed atomic.Uint64
	var mu sync.Mutex
	var firstErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	addr := netip.AddrPortFrom(e2eVIP, e2eTCPPort).String()
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The thread enters the client's namespace for good and
			// ends with the goroutine.
			runtime.LockOSThread()
			if err := netns.Set(n.client.Handle()); err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
				return
			}
			local := map[string]int{}
			defer func() {
				mu.Lock()
				for k, v := range local {
					s.PerServer[k] += v
				}
				mu.Unlock()
			}()
			dialer := net.Dialer{Timeout: 3 * time.Second}
			buf := make([]byte, 64)
			for {
				select {
				case <-stop:
					return
				default:
				}
				name, err := exchange(ctx, &dialer, addr, buf)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				local[name]++
				conns.Add(1)
			}
		}()
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	close(stop)
	wg.Wait()
	s.TCPWall = time.Since(start)
	cpu1, err := m.applianceCPUTime()
	if err != nil {
		return s, err
	}
	s.Conns, s.Failed, s.TCPCPU = conns.Load(), failed.Load(), cpu1-cpu0
	if err := ctx.Err(); err != nil {
		return s, err
	}
	if s.Conns == 0 {
		return s, fmt.Errorf("check failed: %s: no TCP connection completed: %v", m.name, firstErr)
	}
	if len(s.PerServer) != e2eBackends {
		return s, fmt.Errorf("check failed: %s: connections answered by %v, want every backend", m.name, s.PerServer)
	}
	if s.Failed*100 > s.Conns {
		return s, fmt.Errorf("check failed: %s: %d of %d connections failed, the first: %v", m.name, s.Failed, s.Conns+s.Failed, firstErr)
	}
	return s, nil
}

func exchange(ctx context.Context, d *net.Dialer, addr string, buf []byte) (string, error) {
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	got, err := io.ReadAll(io.LimitReader(c, int64(len(buf))))
	if err != nil {
		return "", err
	}
	name, ok := strings.CutPrefix(strings.TrimSpace(string(got)), "ok ")
	if !ok {
		return "", fmt.Errorf("answer %q, want \"ok NAME\"", got)
	}
	return name, nil
}

func (n *e2eNet) Close() error {
	var errs []error
	for _, ln := range n.servers {
		ln.Close()
	}
	n.serverWG.Wait()
	if n.dp != nil {
		errs = append(errs, n.dp.Close())
	}
	for _, l := range n.links {
		errs = append(errs, l.Close())
	}
	for _, p := range n.progs {
		p.Close()
	}
	if n.gen != nil {
		errs = append(errs, n.gen.Close())
	}
	for _, m := range n.sinkCounts {
		m.Close()
	}
	for _, ns := range n.namespaces {
		errs = append(errs, ns.Close())
	}
	if n.dir != "" {
		errs = append(errs, os.RemoveAll(n.dir))
	}
	return errors.Join(errs...)
}

// e2eOptions configure the e2e benchmark.
type e2eOptions struct {
	Rounds   int
	Duration time.Duration
	Warmup   time.Duration
	Workers  int
	Modes    []string
	Progress io.Writer
	topology func(namespaces []string)
}

// e2eResult is one mode over every round.
type e2eResult struct {
	Mode      string      `json:"mode"`
	Generator string      `json:"generator"` // how the UDP frames were sent (generator.Kind)
	Samples   []e2eSample `json:"samples"`
}

func runE2E(ctx context.Context, opts e2eOptions) ([]e2eResult, error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	if len(opts.Modes) == 0 {
		opts.Modes = e2eModes
	}
	for _, tool := range []string{"nft", "haproxy", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("e2e needs %s (Debian packages nftables, haproxy, util-linux; `make deps`): %w", tool, err)
		}
	}
	// Everything of this process (client, servers, generator) stays off the
	// appliance's CPU.
	restore, err := pinProcess(otherCPU)
	if err != nil {
		return nil, err
	}
	defer restore()
	n, err := newE2ENet(ctx)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	if opts.topology != nil {
		var names []string
		for _, ns := range n.namespaces {
			names = append(names, ns.Name)
		}
		opts.topology(names)
	}
	results := make([]e2eResult, len(opts.Modes))
	for i, m := range opts.Modes {
		results[i].Mode = m
	}
	for round := range opts.Rounds {
		for k := range opts.Modes {
			i := k
			if round%2 == 1 {
				i = len(opts.Modes) - 1 - k
			}
			s, err := n.measureMode(ctx, opts.Modes[i], opts)
			if err != nil {
				return nil, err
			}
			results[i].Samples = append(results[i].Samples, s)
			udp := "n/a"
			if s.UDPDelivered > 0 {
				udp = fmt.Sprintf("%.3f Mpps (%.2f CPU-s/Mpkt, appliance %.0f%% busy, drops: ingress %d, egress %d)", s.UDPMpps(), s.UDPCPUPerMpkt(),
					100*s.UDPCPU.Seconds()/s.UDPWall.Seconds(), s.UDPIngressDrops, s.UDPEgressDrops)
			}
			fmt.Fprintf(progress, "round %d %-9s UDP %s; TCP %.0f conn/s (%.1f µs appliance CPU/conn, %d failed) %v\n",
				round+1, opts.Modes[i], udp, s.ConnsPerSec(), float64(s.TCPCPUPerConn())/1e3, s.Failed, s.PerServer)
		}
	}
	for i := range results {
		results[i].Generator = n.gen.Kind()
	}
	return results, nil
}

func (n *e2eNet) measureMode(ctx context.Context, mode string, opts e2eOptions) (s e2eSample, err error) {
	m, err := n.setUp(ctx, mode)
	if err != nil {
		return s, err
	}
	defer func() { err = errors.Join(err, m.teardown()) }()
	if mode != "haproxy" { // HAProxy does not balance UDP
		if opts.Warmup > 0 {
			if _, err := n.measureUDP(ctx, m, opts.Warmup); err != nil {
				return s, err
			}
		}
		if s, err = n.measureUDP(ctx, m, opts.Duration); err != nil {
			return s, err
		}
	}
	t, err := n.measureTCP(ctx, m, opts.Workers, opts.Duration)
	if err != nil {
		return s, err
	}
	s.Conns, s.Failed, s.PerServer, s.TCPWall, s.TCPCPU = t.Conns, t.Failed, t.PerServer, t.TCPWall, t.TCPCPU
	return s, nil
}

func printE2E(w io.Writer, results []e2eResult, opts e2eOptions) error {
	var kind string
	if len(results) > 0 {
		kind = results[0].Generator
	}
	fmt.Fprintf(w, "%s\n%d rounds of %v per figure, modes interleaved. Appliance: its interfaces' NAPI threads (and HAProxy) pinned to CPU %d;\n"+
		"client, generator, backends on CPU %d. UDP: %d flows of 64-byte frames from the %s, counted at the backends.\n"+
		"TCP: %d client goroutines, connect / request / answer / close. Medians, min-max over rounds.\n\n",
		machine(), opts.Rounds, opts.Duration, applianceCPU, otherCPU, e2eFlows, generatorName(kind), opts.Workers)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tUDP Mpps\tmin-max\tCPU-s/Mpkt\tmin-max\tTCP conn/s\tmin-max\tµs CPU/conn\tmin-max\t")
	med := map[string][4]float64{}
	for _, r := range results {
		var mpps, cpm, cps, cpc []float64
		for _, s := range r.Samples {
			if s.UDPDelivered > 0 {
				mpps = append(mpps, s.UDPMpps())
				cpm = append(cpm, s.UDPCPUPerMpkt())
			}
			cps = append(cps, s.ConnsPerSec())
			cpc = append(cpc, float64(s.TCPCPUPerConn())/1e3)
		}
		cell := func(v []float64, f string) (string, string) {
			if len(v) == 0 {
				return "n/a", ""
			}
			lo, hi := spread(v)
			return fmt.Sprintf(f, xdp.Median(v)), fmt.Sprintf(f+"-"+f, lo, hi)
		}
		a, b := cell(mpps, "%.3f")
		c, d := cell(cpm, "%.2f")
		e, f := cell(cps, "%.0f")
		g, h := cell(cpc, "%.1f")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Mode, a, b, c, d, e, f, g, h)
		med[r.Mode] = [4]float64{xdp.Median(mpps), xdp.Median(cpm), xdp.Median(cps), xdp.Median(cpc)}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	x, ok := med["xdplb"]
	if !ok {
		return nil
	}
	fmt.Fprintln(w, "\nxdplb against the others (medians; > 1 is xdplb ahead):")
	for _, r := range results {
		if r.Mode == "xdplb" {
			continue
		}
		o := med[r.Mode]
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "n/a"
			}
			return fmt.Sprintf("%.2f", a/b)
		}
		fmt.Fprintf(w, "  vs %-9s UDP rate %s, UDP CPU per packet %s (theirs/ours), TCP conn/s %s, CPU per connection %s (theirs/ours)\n",
			r.Mode, ratio(x[0], o[0]), ratio(o[1], x[1]), ratio(x[2], o[2]), ratio(o[3], x[3]))
	}
	return nil
}

// e2e runs `bench e2e`.
func e2e(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("e2e", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the results as JSON")
	rounds := fs.Int("rounds", 5, "rounds; each measures every mode once (at least 3)")
	dur := fs.Duration("duration", 2*time.Second, "length of one measurement")
	workers := fs.Int("workers", 32, "TCP client goroutines")
	modes := fs.String("modes", strings.Join(e2eModes, ","), "the modes to measure, comma-separated")
	quiet := fs.Bool("q", false, "no progress on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rounds < 3 {
		return fmt.Errorf("-rounds %d: at least 3, for a median worth the name", *rounds)
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("e2e needs root (namespaces, XDP, nftables); running as uid %d", uid)
	}
	if !canPin() {
		return errors.New("e2e needs two CPUs: one for the appliance alone, one for everything else")
	}
	opts := e2eOptions{Rounds: *rounds, Duration: *dur, Warmup: 300 * time.Millisecond, Workers: *workers, Progress: stderr}
	for _, m := range strings.Split(*modes, ",") {
		if !slices.Contains(e2eModes, m) {
			return fmt.Errorf("-modes: %q is none of %v", m, e2eModes)
		}
		opts.Modes = append(opts.Modes, m)
	}
	if *quiet {
		opts.Progress = nil
	}
	results, err := runE2E(ctx, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	return printE2E(stdout, results, opts)
}
