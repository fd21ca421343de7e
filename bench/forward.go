package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/xdp"
)

// The forward benchmark's addresses: the generator's link, the backend's
// link, and the VIP.
var (
	fwdGenAddr  = netip.MustParsePrefix("198.18.1.1/24")
	fwdLBIn     = netip.MustParsePrefix("198.18.1.2/24")
	fwdLBOut    = netip.MustParsePrefix("198.18.2.1/24")
	fwdSinkAddr = netip.MustParsePrefix("198.18.2.2/24")
	fwdVIP      = netip.MustParseAddr("198.18.100.1")
	// fwdOneArmBackend is the backend of the one-arm cases: on the
	// generator's link, its MAC the generator's veth's (a permanent
	// neighbour entry in the appliance's namespace).
	fwdOneArmBackend = netip.MustParseAddr("198.18.1.3")
)

const (
	fwdPort     = 53
	fwdBasePort = 1024
	// fwdBudget is the least share of the hairpin's rate per vCPU xdplb
	// should forward at.
	fwdBudget = 0.70
)

// fwdCase is one program on the appliance's ingress interface.
type fwdCase struct {
	Name  string
	About string
	// XDPLB: the case runs xdplb in Mode; else a trivial program.
	XDPLB bool
	Mode  xdp.Mode
	// Hairpin: the frames come back to the generator's namespace (counted
	// there) instead of going on to the backend's.
	Hairpin bool
	// OneArm: xdplb's backend is on the link the frames came in by (DSR's
	// usual one-arm layout): they leave by XDP_TX out of the ingress veth,
	// as the hairpin's do, and are counted on the generator's side.
	OneArm bool
	// Swap: the hairpin's program reads the frame's Ethernet header and
	// swaps its MACs before XDP_TX (Hairpin is set too).
	Swap bool
	// Versus: the xdplb case run by another build's program (the lb object
	// at this path, -versus) on the same maps.
	Versus string
}

var fwdCases = []fwdCase{
	{Name: "xdp_tx_hairpin", About: "trivial XDP_TX: every frame back out of the ingress veth, untouched, counted on the generator's side", Hairpin: true},
	{Name: "xdp_tx_swap", About: "trivial XDP_TX that swaps the frame's MACs first: the hairpin plus the cost of touching the frame", Hairpin: true, Swap: true},
	{Name: "xdp_redirect", About: "trivial XDP_REDIRECT through a device map to the backend's veth, untouched"},
	{Name: "xdplb_dsr_l2", About: "xdplb, DSR L2: backend MAC written, redirected to the backend's veth", XDPLB: true, Mode: xdp.ModeDSRL2},
	{Name: "xdplb_dsr_ipip", About: "xdplb, DSR IPIP: outer IPv4 header toward the backend, redirected to its veth", XDPLB: true, Mode: xdp.ModeDSRIPIP},
	{Name: "xdplb_dsr_l2_onearm", About: "xdplb, DSR L2, one-arm: the backend on the generator's link, its MAC written, XDP_TX back out of the ingress veth (as the hairpin), counted on the generator's side", XDPLB: true, Mode: xdp.ModeDSRL2, OneArm: true},
	{Name: "xdplb_dsr_ipip_onearm", About: "xdplb, DSR IPIP, one-arm: outer IPv4 header toward the backend on the generator's link, XDP_TX back out of the ingress veth", XDPLB: true, Mode: xdp.ModeDSRIPIP, OneArm: true},
}

// fwdOptions configure the forward benchmark.
type fwdOptions struct {
	Rounds   int
	Duration time.Duration // of one measurement
	Warmup   time.Duration
	Flows    int
	SinkCPU  int
	Cases    *regexp.Regexp
	// Versus, if set, is another build's lb object (xdp/lb_bpfel.o): each
	// xdplb case is also run by its program, beside this build's.
	Versus   string
	Progress io.Writer // nil: quiet
	// topology, if set, is told the namespaces the benchmark made (tests
	// check that they are gone afterwards).
	topology func(namespaces []string)
}

// fwdSample is one measurement of one case.
type fwdSample struct {
	Delivered uint64        // frames counted at the sink
	Offered   uint64        // frames the generator made
	Wall      time.Duration // generator time
	CPU       time.Duration // the appliance's NAPI thread
	CPUBusy   time.Duration // the appliance CPU's busy time (/proc/stat), everything on it
	Dropped   uint64        // frames the egress veth dropped (peer's ring full)
	Wakeups   uint64        // times the appliance's NAPI thread was scheduled in
}

// MppsPerCPU is the delivered rate per second of the appliance thread's CPU
// time.
func (s fwdSample) MppsPerCPU() float64 {
	if s.CPU <= 0 {
		return 0
	}
	return float64(s.Delivered) / s.CPU.Seconds() / 1e6
}

// FramesPerWakeup is how many frames the appliance's thread forwarded each
// time it was woken, on average.
func (s fwdSample) FramesPerWakeup() float64 {
	if s.Wakeups == 0 {
		return 0
	}
	return float64(s.Delivered) / float64(s.Wakeups)
}

// Mpps is the delivered rate in wall time.
func (s fwdSample) Mpps() float64 { return float64(s.Delivered) / s.Wall.Seconds() / 1e6 }

// Util is the share of the wall time the appliance's thread ran.
func (s fwdSample) Util() float64 { return s.CPU.Seconds() / s.Wall.Seconds() }

// fwdNet is the forward benchmark's topology: generator ns —veth— appliance
// ns —veth— backend ns.
type fwdNet struct {
	g0, a0, a1, s0 *iface
	namespaces     []*testnet.NS

	genCount, sinkCount *ebpf.Map
	sinkDrop, sinkPass  *ebpf.Program
	genDrop, genPass    *ebpf.Program
	genSink, sinkLink   link.Link
	progs               []*ebpf.Program
	maps                []*ebpf.Map
	gen                 *generator
	frame               []byte
	dp                  *xdp.Datapath
	rec                 *lb.Reconciler
	backend             netip.Addr // the VIP's backend now
	hairpin, redirect   *ebpf.Program
	swap                *ebpf.Program
}

func newFwdNet(ctx context.Context, flows, sinkCPU int) (_ *fwdNet, err error) {
	n := &fwdNet{}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	id := shortID()
	var gen, app, sink *testnet.NS
	for _, p := range []struct {
		ns     **testnet.NS
		prefix string
	}{{&gen, "xfgen"}, {&app, "xflb"}, {&sink, "xfsink"}} {
		if *p.ns, err = newBenchNS(p.prefix); err != nil {
			return nil, err
		}
		n.namespaces = append(n.namespaces, *p.ns)
	}
	mac := func(b4, b5 byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0x78, 0x6c, 0x01, b4, b5} }
	n.g0 = &iface{NS: gen, Name: "f" + id + "g0", MAC: mac(1, 1), Addr: fwdGenAddr}
	n.a0 = &iface{NS: app, Name: "f" + id + "a0", MAC: mac(1, 2), Addr: fwdLBIn}
	n.a1 = &iface{NS: app, Name: "f" + id + "a1", MAC: mac(2, 1), Addr: fwdLBOut}
	n.s0 = &iface{NS: sink, Name: "f" + id + "s0", MAC: mac(2, 2), Addr: fwdSinkAddr}
	if err := addVeth(n.a0, n.g0); err != nil {
		return nil, err
	}
	if err := addVeth(n.a1, n.s0); err != nil {
		return nil, err
	}

	// The sinks: count and drop on the backend's veth and, for the
	// hairpin, on the generator's.
	if n.genCount, err = newCounter(); err != nil {
		return nil, err
	}
	n.maps = append(n.maps, n.genCount)
	if n.sinkCount, err = newCounter(); err != nil {
		return nil, err
	}
	n.maps = append(n.maps, n.sinkCount)
	if n.genDrop, err = sinkProgram(n.genCount, 0, xdpDrop); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.genDrop)
	if n.genPass, err = sinkProgram(n.genCount, 0, xdpPass); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.genPass)
	if n.sinkDrop, err = sinkProgram(n.sinkCount, 0, xdpDrop); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.sinkDrop)
	if n.sinkPass, err = sinkProgram(n.sinkCount, 0, xdpPass); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.sinkPass)
	if n.genSink, err = attachXDP(n.g0, n.genDrop); err != nil {
		return nil, err
	}
	if n.sinkLink, err = attachXDP(n.s0, n.sinkDrop); err != nil {
		return nil, err
	}
	for _, e := range []*iface{n.g0, n.s0} {
		threads, err := threadedNAPI(e.NS, e.Name)
		if err != nil {
			return nil, err
		}
		if err := placeThreads(threads, sinkCPU, true); err != nil {
			return nil, err
		}
	}

	// The generator and the trivial programs.
	n.frame = udpFrame(n.g0.MAC, n.a0.MAC, fwdGenAddr.Addr(), fwdVIP, fwdBasePort, fwdPort)
	if n.gen, err = newGenerator(n.frame, flows, fwdBasePort); err != nil {
		return nil, err
	}
	if n.hairpin, err = hairpinProgram(); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.hairpin)
	if n.swap, err = swapProgram(); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.swap)
	var devmap *ebpf.Map
	if err := app.Do(func() error { devmap, err = newDevmap(n.a1.Index); return err }); err != nil {
		return nil, err
	}
	n.maps = append(n.maps, devmap)
	if n.redirect, err = redirectProgram(devmap, n.a1.Index); err != nil {
		return nil, err
	}
	n.progs = append(n.progs, n.redirect)

	// xdplb, set up as the daemon does: the datapath on the appliance's
	// interfaces (the egress one too: that makes it a tx port), backends
	// through the reconciler with next hops resolved in the appliance's
	// namespace.
	if n.dp, err = xdp.Open(xdp.Options{PinPath: xdp.NoPin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 1 << 16}); err != nil {
		return nil, err
	}
	if err := app.Do(func() error { _, err := n.dp.Attach(n.a1.Name, xdp.AttachNative); return err }); err != nil {
		return nil, err
	}
	if err := n.dp.SetEncapSource(netip.PrefixFrom(fwdLBOut.Addr(), 32), netip.Prefix{}); err != nil {
		return nil, err
	}
	// The one-arm backend's neighbour entry: the generator's veth answers
	// no ARP for it.
	if err := app.Netlink().NeighAdd(&netlink.Neigh{LinkIndex: n.a0.Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: fwdOneArmBackend.AsSlice(), HardwareAddr: n.g0.MAC}); err != nil {
		return nil, fmt.Errorf("neighbour entry of the one-arm backend: %w", err)
	}
	n.rec = lb.NewReconciler(n.dp, scenario.NextHops{NS: app}, lb.Options{MaxBackends: 64})
	if err := waitUp(ctx, n.g0, n.a0, n.a1, n.s0); err != nil {
		return nil, err
	}
	return n, nil
}

// backend is c's backend address.
func (c fwdCase) backend() netip.Addr {
	if c.OneArm {
		return fwdOneArmBackend
	}
	return fwdSinkAddr.Addr()
}

// setMode points the VIP at c's backend in c's mode. A change of backend
// would start a table transition (the previous table consulted, every flow
// pinned) that the next cases would pay for: the service goes first, so
// that every case starts without one.
func (n *fwdNet) setMode(ctx context.Context, c fwdCase) error {
	if n.backend.IsValid() && n.backend != c.backend() {
		if st := n.rec.Apply(ctx, lb.State{Seed: maglevSeed}, nil); len(st.Errors) > 0 {
			return fmt.Errorf("removing the VIP: %s", st.Errors[0].Err)
		}
	}
	n.backend = c.backend()
	st := n.rec.Apply(ctx, lb.State{Seed: maglevSeed, Services: []lb.Service{{
		Name: "bench", Addr: fwdVIP, Proto: xdp.UDP, Ports: []uint16{fwdPort}, Mode: c.Mode,
		Backends: []lb.Backend{{Addr: c.backend(), Weight: 1}},
	}}}, nil)
	if len(st.Errors) > 0 {
		return fmt.Errorf("configuring the VIP (%s): %s", c.Name, st.Errors[0].Err)
	}
	return nil
}

// attach puts c's program on the appliance's ingress interface and returns
// its NAPI threads, pinned to the appliance's CPU, and how to take it off.
func (n *fwdNet) attach(ctx context.Context, c fwdCase) (threads []napiThread, detach func() error, err error) {
	if c.XDPLB {
		if err := n.setMode(ctx, c); err != nil {
			return nil, nil, err
		}
		err := n.a0.NS.Do(func() error { _, err := n.dp.Attach(n.a0.Name, xdp.AttachNative); return err })
		if err != nil {
			return nil, nil, err
		}
		detach = func() error { return n.a0.NS.Do(func() error { return n.dp.Detach(n.a0.Name) }) }
		if c.Versus != "" {
			restore, err := n.dp.BenchAttachFile(n.a0.Name, c.Versus)
			if err != nil {
				return nil, nil, errors.Join(err, detach())
			}
			plain := detach
			detach = func() error { return errors.Join(restore(), plain()) }
			if err := n.checkVersus(c); err != nil {
				return nil, nil, errors.Join(err, detach())
			}
		}
	} else {
		prog := n.redirect
		if c.Swap {
			prog = n.swap
		} else if c.Hairpin {
			prog = n.hairpin
		}
		l, err := attachXDP(n.a0, prog)
		if err != nil {
			return nil, nil, err
		}
		detach = l.Close
	}
	threads, err = threadedNAPI(n.a0.NS, n.a0.Name)
	if err == nil {
		err = placeThreads(threads, applianceCPU, true)
	}
	if err != nil {
		return nil, nil, errors.Join(err, detach())
	}
	return threads, detach, nil
}

// checkVersus checks that the program on the appliance's ingress interface
// is not this build's: a -versus case that measured this build would
// report no difference where there may be one.
func (n *fwdNet) checkVersus(c fwdCase) error {
	l, err := n.a0.NS.Netlink().LinkByIndex(n.a0.Index)
	if err != nil {
		return err
	}
	info, err := n.dp.Program().Info()
	if err != nil {
		return err
	}
	own, _ := info.ID()
	if x := l.Attrs().Xdp; x == nil || !x.Attached || x.ProgId == uint32(own) {
		return fmt.Errorf("check failed: %s: the program of %s does not run on %s", c.Name, c.Versus, n.a0.Name)
	}
	return nil
}

func (n *fwdNet) sinkOf(c fwdCase) *ebpf.Map {
	if c.Hairpin || c.OneArm {
		return n.genCount
	}
	return n.sinkCount
}

// egressOf is the appliance's interface c's frames leave by.
func (n *fwdNet) egressOf(c fwdCase) *iface {
	if c.Hairpin || c.OneArm {
		return n.a0
	}
	return n.a1
}

// xdplbForwarded is xdplb's count of frames it forwarded in c: sent back
// out (one-arm) or redirected.
func (n *fwdNet) xdplbForwarded(c fwdCase) (uint64, error) {
	action, reason := "redirect", "dsr_l2"
	if c.OneArm {
		action = "tx"
	}
	if c.Mode == xdp.ModeDSRIPIP {
		reason = "dsr_ipip"
	}
	return n.dp.Counter(action, reason)
}

// measure runs the generator for d and reads the counters around it. With
// c an xdplb case it checks that every frame xdplb forwarded reached the
// sink or was counted dropped by the egress veth.
func (n *fwdNet) measure(ctx context.Context, c fwdCase, threads []napiThread, d time.Duration) (fwdSample, error) {
	var s fwdSample
	sink := n.sinkOf(c)
	read := func() (count, fwd, pins, dropped, wakeups uint64, cpu, busy time.Duration, err error) {
		if count, err = readCounter(sink); err != nil {
			return
		}
		if c.XDPLB {
			if fwd, err = n.xdplbForwarded(c); err != nil {
				return
			}
			if pins, err = n.dp.Counter("event", "pin_hit"); err != nil {
				return
			}
		}
		st, err := linkStats(n.egressOf(c))
		if err != nil {
			return
		}
		dropped = st.TxDropped
		if cpu, err = threadsRuntime(threads); err != nil {
			return
		}
		if wakeups, err = threadsRuns(threads); err != nil {
			return
		}
		busy, _, err = cpuBusy(applianceCPU)
		return
	}
	c0, f0, p0, d0, w0, cpu0, busy0, err := read()
	if err != nil {
		return s, err
	}
	const chunk = 1 << 16
	start := time.Now()
	for time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		if err := n.gen.send(n.g0, chunk, otherCPU); err != nil {
			return s, err
		}
		s.Offered += chunk
	}
	s.Wall = time.Since(start)
	// Let the rings drain: for xdplb, until every frame it forwarded is
	// counted at the sink or dropped, for at most 2 s (a loaded host
	// takes longer than the 20 ms that suffice on a quiet one).
	var c1, f1, p1, d1, w1 uint64
	var cpu1, busy1 time.Duration
	for deadline := time.Now().Add(2 * time.Second); ; {
		time.Sleep(20 * time.Millisecond)
		if c1, f1, p1, d1, w1, cpu1, busy1, err = read(); err != nil {
			return s, err
		}
		if !c.XDPLB || (c1-c0)+(d1-d0) >= f1-f0 || time.Now().After(deadline) {
			break
		}
	}
	// Every case measures the program on its plain path: a packet that
	// follows a pin is in a table transition, which costs more.
	if p1 != p0 {
		return s, fmt.Errorf("check failed: %s: %d packets followed a pin: a table transition was under way", c.Name, p1-p0)
	}
	s.Delivered, s.Dropped, s.CPU, s.CPUBusy, s.Wakeups = c1-c0, d1-d0, cpu1-cpu0, busy1-busy0, w1-w0
	if c.XDPLB && s.Delivered+s.Dropped != f1-f0 {
		return s, fmt.Errorf("check failed: %s: xdplb forwarded %d frames, the backend counted %d and the egress veth dropped %d", c.Name, f1-f0, s.Delivered, s.Dropped)
	}
	if s.Delivered == 0 {
		return s, fmt.Errorf("check failed: %s: no frame reached the sink", c.Name)
	}
	return s, nil
}

// validate sends a few frames through xdplb as case c with the backend's
// sink passing them to a packet socket, and checks each against what xdplb
// should make of it, and the counters against the frames.
func (n *fwdNet) validate(ctx context.Context, c fwdCase) error {
	_, detach, err := n.attach(ctx, c)
	if err != nil {
		return err
	}
	defer detach()
	sinkLink, pass, drop, at := n.sinkLink, n.sinkPass, n.sinkDrop, n.s0
	if c.OneArm {
		sinkLink, pass, drop, at = n.genSink, n.genPass, n.genDrop, n.g0
	}
	if err := sinkLink.Update(pass); err != nil {
		return fmt.Errorf("letting the sink pass frames: %w", err)
	}
	defer sinkLink.Update(drop)
	capt, err := openCapture(at)
	if err != nil {
		return err
	}
	defer capt.Close()

	const frames = 16
	sink := n.sinkOf(c)
	c0, err := readCounter(sink)
	if err != nil {
		return err
	}
	f0, err := n.xdplbForwarded(c)
	if err != nil {
		return err
	}
	if err := n.gen.send(n.g0, frames, otherCPU); err != nil {
		return err
	}
	got, err := capt.read(frames, 3*time.Second)
	if err != nil {
		return err
	}
	time.Sleep(20 * time.Millisecond)
	c1, err := readCounter(sink)
	if err != nil {
		return err
	}
	f1, err := n.xdplbForwarded(c)
	if err != nil {
		return err
	}
	if len(got) != frames || c1-c0 != frames || f1-f0 != frames {
		return fmt.Errorf("check failed: %s: sent %d frames; captured %d at the backend, its sink counted %d, xdplb forwarded %d", c.Name, frames, len(got), c1-c0, f1-f0)
	}
	for i, f := range got {
		if err := n.checkFrame(c, f); err != nil {
			return fmt.Errorf("check failed: %s: frame %d: %w", c.Name, i, err)
		}
	}
	return nil
}

// checkFrame checks one frame of case c that reached the backend: from the
// appliance's egress MAC to the backend's, carrying the generator's IP packet
// unchanged (but for the source port the generator varies), in IPIP mode
// with its TTL one less inside an outer IPv4 header from the encap source to
// the backend.
func (n *fwdNet) checkFrame(c fwdCase, f []byte) error {
	mode, from, to := c.Mode, n.a1.MAC, n.s0.MAC
	if c.OneArm {
		from, to = n.a0.MAC, n.g0.MAC
	}
	if !bytes.Equal(f[0:6], to) || !bytes.Equal(f[6:12], from) {
		return fmt.Errorf("MACs %v -> %v, want %v -> %v", net.HardwareAddr(f[6:12]), net.HardwareAddr(f[0:6]), from, to)
	}
	inner := f[14:]
	if mode == xdp.ModeDSRIPIP {
		if len(f) < 34 {
			return fmt.Errorf("%d bytes, too short for IPIP", len(f))
		}
		outer := f[14:34]
		if err := packet.VerifyIPv4HeaderChecksum(outer); err != nil {
			return fmt.Errorf("outer header: %w", err)
		}
		src, dst := netip.AddrFrom4([4]byte(outer[12:16])), netip.AddrFrom4([4]byte(outer[16:20]))
		if outer[0] != 0x45 || outer[9] != 4 || src != fwdLBOut.Addr() || dst != c.backend() || int(outer[2])<<8|int(outer[3]) != len(f)-14 {
			return fmt.Errorf("outer header % x: want IPv4, protocol 4 (IPIP), %v -> %v, total length %d", outer, fwdLBOut.Addr(), c.backend(), len(f)-14)
		}
		inner = f[34:]
	}
	want := slices.Clone(n.frame[14:])
	if mode == xdp.ModeDSRIPIP {
		// The tunnel is a hop: the inner TTL is one less, as a router's.
		want[8]--
		want[10], want[11] = 0, 0
		sum := ipv4HeaderChecksum(want[:20])
		want[10], want[11] = byte(sum>>8), byte(sum)
	}
	if len(inner) != len(want) {
		return fmt.Errorf("inner packet of %d bytes, want %d", len(inner), len(want))
	}
	copy(want[frameSportOffset-14:], inner[frameSportOffset-14:frameSportOffset-12]) // the generator's source port
	if sport := int(inner[20])<<8 | int(inner[21]); sport < fwdBasePort {
		return fmt.Errorf("source port %d below the generator's %d", sport, fwdBasePort)
	}
	if d := packet.DiffIP(want, inner); d != "" {
		return fmt.Errorf("IP packet differs from the one sent (-want +got):\n%s", d)
	}
	return packet.VerifyPacket(inner)
}

func (n *fwdNet) Close() error {
	var errs []error
	if n.dp != nil {
		errs = append(errs, n.dp.Close())
	}
	for _, l := range []link.Link{n.genSink, n.sinkLink} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	for _, p := range n.progs {
		p.Close()
	}
	if n.gen != nil {
		errs = append(errs, n.gen.Close())
	}
	for _, m := range n.maps {
		m.Close()
	}
	for _, ns := range n.namespaces {
		errs = append(errs, ns.Close())
	}
	return errors.Join(errs...)
}

// fwdResult is one case over every round.
type fwdResult struct {
	Case       string      `json:"case"`
	About      string      `json:"-"`
	Generator  string      `json:"generator"` // how the frames were sent (generator.Kind)
	MppsPerCPU float64     `json:"mpps_per_vcpu"`
	Runs       []float64   `json:"mpps_per_vcpu_runs"`
	Mpps       float64     `json:"mpps_wall"`
	Util       float64     `json:"appliance_thread_util"`
	CPUBusy    float64     `json:"appliance_cpu_busy"`
	PerWakeup  float64     `json:"frames_per_wakeup"`
	Ratio      float64     `json:"ratio_to_hairpin,omitempty"`
	Ratios     []float64   `json:"ratio_to_hairpin_runs,omitempty"`
	Budget     float64     `json:"budget_ratio,omitempty"`
	Within     bool        `json:"within_budget"`
	Samples    []fwdSample `json:"samples"`
}

// runForward builds the topology, validates xdplb's output, then measures
// the cases round by round, interleaved.
func runForward(ctx context.Context, opts fwdOptions) ([]fwdResult, error) {
	var cases []fwdCase
	for _, c := range fwdCases {
		if opts.Cases == nil || opts.Cases.MatchString(c.Name) {
			cases = append(cases, c)
		}
	}
	if opts.Versus != "" {
		for _, c := range cases {
			if c.XDPLB {
				c.Name += "_versus"
				c.About = fmt.Sprintf("as %s, run by the program of %s", strings.TrimSuffix(c.Name, "_versus"), opts.Versus)
				c.Versus = opts.Versus
				cases = append(cases, c)
			}
		}
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("no case matches %q", opts.Cases)
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	n, err := newFwdNet(ctx, opts.Flows, opts.SinkCPU)
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
	for _, c := range cases {
		if c.XDPLB {
			if err := n.validate(ctx, c); err != nil {
				return nil, err
			}
			fmt.Fprintf(progress, "%s: sample frames checked at the backend, counters match\n", c.Name)
		}
	}
	samples := make([][]fwdSample, len(cases))
	for round := range opts.Rounds {
		// Alternate the order, so that drift hits every case alike.
		order := make([]int, len(cases))
		for i := range order {
			order[i] = i
			if round%2 == 1 {
				order[i] = len(cases) - 1 - i
			}
		}
		for _, i := range order {
			c := cases[i]
			threads, detach, err := n.attach(ctx, c)
			if err != nil {
				return nil, err
			}
			if opts.Warmup > 0 {
				if _, err := n.measure(ctx, c, threads, opts.Warmup); err != nil {
					return nil, errors.Join(err, detach())
				}
			}
			s, err := n.measure(ctx, c, threads, opts.Duration)
			if err := errors.Join(err, detach()); err != nil {
				return nil, err
			}
			samples[i] = append(samples[i], s)
			fmt.Fprintf(progress, "round %d %-28s %6.2f Mpps per vCPU, %5.2f Mpps, appliance thread %3.0f%% (CPU %d busy %3.0f%%), offered %5.2f Mpps, egress drops %d, %.0f frames per wake-up\n",
				round+1, c.Name, s.MppsPerCPU(), s.Mpps(), 100*s.Util(), applianceCPU, 100*s.CPUBusy.Seconds()/s.Wall.Seconds(), float64(s.Offered)/s.Wall.Seconds()/1e6, s.Dropped, s.FramesPerWakeup())
		}
	}
	var results []fwdResult
	hairpin := slices.IndexFunc(cases, func(c fwdCase) bool { return c.Hairpin && !c.Swap })
	for i, c := range cases {
		r := fwdResult{Case: c.Name, About: c.About, Samples: samples[i]}
		var mpps, util, busy, wake []float64
		for j, s := range samples[i] {
			wake = append(wake, s.FramesPerWakeup())
			r.Runs = append(r.Runs, s.MppsPerCPU())
			mpps = append(mpps, s.Mpps())
			util = append(util, s.Util())
			busy = append(busy, s.CPUBusy.Seconds()/s.Wall.Seconds())
			if hairpin >= 0 && i != hairpin {
				r.Ratios = append(r.Ratios, s.MppsPerCPU()/samples[hairpin][j].MppsPerCPU())
			}
		}
		r.MppsPerCPU, r.Mpps, r.Util, r.CPUBusy, r.PerWakeup = xdp.Median(r.Runs), xdp.Median(mpps), xdp.Median(util), xdp.Median(busy), xdp.Median(wake)
		if len(r.Ratios) > 0 {
			r.Ratio = xdp.Median(r.Ratios)
		}
		r.Generator = n.gen.Kind()
		// The budget is judged on live frames only: the feeder's lower
		// rate adds wake-ups to every case's cost per frame, which
		// brings the ratios toward 1 (docs/bench.md).
		if c.XDPLB && c.Versus == "" && hairpin >= 0 && r.Generator == genLiveFrames {
			r.Budget = fwdBudget
			r.Within = r.Ratio >= fwdBudget
		}
		results = append(results, r)
	}
	return results, nil
}

func spread(v []float64) (lo, hi float64) {
	if len(v) == 0 {
		return 0, 0
	}
	return slices.Min(v), slices.Max(v)
}

func printForward(w io.Writer, results []fwdResult, opts fwdOptions) error {
	var kind string
	if len(results) > 0 {
		kind = results[0].Generator
	}
	fmt.Fprintf(w, "%s\n%d rounds of %v per case, cases interleaved; %d UDP flows of 64-byte frames from the %s.\n"+
		"Mpps/vCPU: frames counted at the sink per second of CPU time of the appliance's NAPI thread (pinned alone to CPU %d);\n"+
		"ratio: to the hairpin's Mpps/vCPU in the same round.\n", machine(), opts.Rounds, opts.Duration, opts.Flows, generatorName(kind), applianceCPU)
	if kind == genPacketSocket {
		fmt.Fprintln(w, "The budget is judged on live frames only: the feeder's lower rate adds wake-ups to every case's cost per frame.")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tMpps/vCPU\truns min-max\tMpps wall\tthread busy\tframes/wake-up\tratio\tratio min-max\tbudget\t\t")
	for _, r := range results {
		lo, hi := spread(r.Runs)
		ratio, ratios, budget, verdict := "-", "-", "-", "info"
		if len(r.Ratios) > 0 {
			rlo, rhi := spread(r.Ratios)
			ratio, ratios = fmt.Sprintf("%.2f", r.Ratio), fmt.Sprintf("%.2f-%.2f", rlo, rhi)
		}
		if r.Budget > 0 {
			budget, verdict = fmt.Sprintf("≥ %.2f", r.Budget), "pass"
			if !r.Within {
				verdict = "MISS"
			}
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f-%.2f\t%.2f\t%.0f%%\t%.0f\t%s\t%s\t%s\t%s\t\n", r.Case, r.MppsPerCPU, lo, hi, r.Mpps, 100*r.Util, r.PerWakeup, ratio, ratios, budget, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "%s: %s.\n", r.Case, r.About)
	}
	fmt.Fprintln(w, "\nA missed budget is reported, not an error (docs/bench.md has the method).")
	return nil
}

// forward runs `bench forward`.
func forward(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the results as JSON")
	rounds := fs.Int("rounds", 5, "rounds; each measures every case once (at least 3)")
	dur := fs.Duration("duration", 2*time.Second, "length of one measurement")
	flows := fs.Int("flows", 4096, "UDP flows (source ports), a power of two")
	only := fs.String("case", "", "run only the cases whose name matches this regular expression")
	quiet := fs.Bool("q", false, "no progress on stderr")
	sinkCPU := fs.Int("sink-cpu", otherCPU, "the CPU of the sinks' NAPI threads")
	versus := fs.String("versus", "", "also run each xdplb case by the forwarding program of another build: its xdp/lb_bpfel.o (e.g. from `git show REV:xdp/lb_bpfel.o`)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rounds < 3 {
		return fmt.Errorf("-rounds %d: at least 3, for a median worth the name", *rounds)
	}
	re, err := regexp.Compile(*only)
	if err != nil {
		return fmt.Errorf("-case: %w", err)
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("forward needs root (namespaces, XDP); running as uid %d", uid)
	}
	if !canPin() {
		return errors.New("forward needs two CPUs: one for the appliance alone, one for the generator and the sinks")
	}
	opts := fwdOptions{Rounds: *rounds, Duration: *dur, Warmup: 300 * time.Millisecond, Flows: *flows, SinkCPU: *sinkCPU, Cases: re, Versus: *versus, Progress: stderr}
	if *quiet {
		opts.Progress = nil
	}
	results, err := runForward(ctx, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	return printForward(stdout, results, opts)
}

func buildUDP(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) ([]byte, error) {
	return packet.Build(packet.Ethernet{Dst: dstMAC, Src: srcMAC, Payload: packet.IPv4{
		Src: src, Dst: dst, TTL: 64, Flags: packet.IPv4DontFragment,
		Payload: packet.UDP{SrcPort: sport, DstPort: dport, NoChecksum: true, Payload: payload},
	}})
}

func ipv4HeaderChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
