package dpfuzz

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/gpcheck"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// Env is the network namespace a fuzzing run happens in: the program's
// redirects need interfaces of the namespace that fills the tx ports and
// runs the program.
type Env struct {
	NS *testnet.NS
	// Ingress is the interface BPF_PROG_TEST_RUN makes frames arrive on by
	// default (the loopback, 1); TxPort is in the tx ports, NoPort is not.
	Ingress, TxPort, NoPort int
}

// NewEnv creates a namespace with a veth pair (TxPort and NoPort); Close
// removes it.
func NewEnv() (Env, error) {
	ns, err := testnet.NewNS("xfuzz")
	if err != nil {
		return Env{}, err
	}
	env := Env{NS: ns, Ingress: 1}
	fail := func(err error) (Env, error) {
		ns.Close()
		return Env{}, err
	}
	if err := ns.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xfuzz0"}, PeerName: "xfuzz1"}); err != nil {
		return fail(fmt.Errorf("adding a veth pair: %w", err))
	}
	for _, name := range []string{"xfuzz0", "xfuzz1"} {
		l, err := ns.Netlink().LinkByName(name)
		if err != nil {
			return fail(err)
		}
		if err := ns.Netlink().LinkSetUp(l); err != nil {
			return fail(err)
		}
		if name == "xfuzz0" {
			env.TxPort = l.Attrs().Index
		} else {
			env.NoPort = l.Attrs().Index
		}
	}
	return env, nil
}

// Close removes the namespace.
func (e Env) Close() error { return e.NS.Close() }

// World is a configuration written into a fresh datapath, next to its
// model.
type World struct {
	Config *Config
	DP     *xdp.Datapath
	Model  *xdp.FrameModel
	env    Env
	// Exact reads every counter around every frame (slow); otherwise only
	// the predicted verdict counter is read after each frame, and all of
	// them once in CheckCounters.
	Exact bool
	// Bugs counts the frames that met each known program bug
	// (xdp.FrameModel.Bugs).
	Bugs  map[string]int
	tally map[string]uint64
	ran   int
}

// maxFlows bounds the pins of a world whose configuration does not: far
// above what a world's frames create, so that no pin fails.
const maxFlows = 1 << 16

// maxNATFlows sizes the NAT tables: far above the flows a world's frames
// make (at most one per frame), so that no NAT flow fails for want of room
// (the model has no snat_table_full).
const maxNATFlows = 1 << 16

// Open writes cfg into a new datapath; the caller is in env's namespace.
// With knownBugs, the model predicts what the program does where it is
// known to break a rule (xdp.FrameModel.KnownBugs).
func Open(cfg *Config, env Env, knownBugs bool) (*World, error) {
	flows := maxFlows
	if cfg.MaxFlows > 0 {
		flows = cfg.MaxFlows
	}
	d, err := xdp.Open(xdp.Options{
		PinPath: xdp.NoPin, MaxVIPs: 64, MaxBackends: 128, MaxFlows: flows, MaxNATFlows: maxNATFlows,
		TransitionGrace: time.Hour, TTL: cfg.TTL, DisableEcho: cfg.DisableEcho,
	})
	if err != nil {
		return nil, err
	}
	if err := cfg.Apply(d, env); err != nil {
		d.Close()
		return nil, fmt.Errorf("applying the configuration: %w\n%s", err, cfg)
	}
	m := cfg.Model(env)
	m.KnownBugs = knownBugs
	return &World{Config: cfg, DP: d, Model: m, env: env, Bugs: map[string]int{}, tally: map[string]uint64{}}, nil
}

// Close closes the datapath.
func (w *World) Close() error { return w.DP.Close() }

// xdpMD is struct xdp_md as BPF_PROG_TEST_RUN takes it.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Divergence is a frame on which the program and the model disagree.
type Divergence struct {
	Frame   []byte
	Ingress int
	Config  *Config
	// What differs, one line each.
	Diffs []string
}

func (d *Divergence) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "program and model disagree on a frame arriving on ifindex %d:\n", d.Ingress)
	for _, l := range d.Diffs {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "frame: %s\n%s", hex.EncodeToString(d.Frame), d.Config)
	return b.String()
}

func counterName(c xdp.Counter) string { return c.Action + "/" + c.Reason }

func (w *World) counters() (map[string]uint64, error) {
	cs, err := w.DP.Counters()
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, c := range cs {
		m[counterName(c)] = c.Value
	}
	return m, nil
}

// Check runs frame, arriving on interface ingress, through the program and
// the model and returns a *Divergence when they disagree (or another error
// when the program could not run).
func (w *World) Check(frame []byte, ingress int) error {
	var before map[string]uint64
	var err error
	if w.Exact {
		if before, err = w.counters(); err != nil {
			return err
		}
	}
	for _, id := range w.Config.Step(w.Model, w.ran) {
		if err := w.DP.UpsertBackend(id, w.Model.State.Backends[id]); err != nil {
			return fmt.Errorf("flipping backend %d: %w", id, err)
		}
	}
	want := w.Model.Run(frame, ingress)
	opts := ebpf.RunOptions{
		Data: frame, DataOut: make([]byte, len(frame)+256),
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ingress)},
	}
	verdict, err := w.DP.Program().Run(&opts)
	if err != nil {
		return fmt.Errorf("running the program on %x: %w", frame, err)
	}
	w.ran++
	for _, b := range want.Bugs {
		w.Bugs[b]++
	}
	out := opts.DataOut
	w.tally[want.Counter]++
	for _, e := range want.Events {
		w.tally[e]++
	}

	var diffs []string
	if verdict != want.Verdict {
		diffs = append(diffs, fmt.Sprintf("verdict %s, model %s", verdictName(verdict), verdictName(want.Verdict)))
	}
	if verdict != xdp.XDPDrop && want.Verdict != xdp.XDPDrop && !bytes.Equal(out, want.Out) {
		diffs = append(diffs, "output differs: "+diffBytes(want.Out, out))
	}
	if (verdict == xdp.XDPTx || verdict == xdp.XDPRedirect) && len(want.Bugs) == 0 {
		diffs = append(diffs, checkOutput(frame, out, want.Counter)...)
	}
	if w.Exact {
		after, err := w.counters()
		if err != nil {
			return err
		}
		wantMoves := map[string]uint64{want.Counter: 1}
		for _, e := range want.Events {
			wantMoves[e]++
		}
		var names []string
		for n := range after {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if got := after[n] - before[n]; got != wantMoves[n] {
				diffs = append(diffs, fmt.Sprintf("counter %s moved by %d, model %d", n, got, wantMoves[n]))
			}
		}
	} else {
		action, reason, _ := strings.Cut(want.Counter, "/")
		got, err := w.DP.Counter(action, reason)
		if err != nil {
			return err
		}
		if got != w.tally[want.Counter] {
			// Another counter moved: find which, and start the tally
			// afresh from the counters.
			all, err := w.counters()
			if err != nil {
				return err
			}
			var moved []string
			for n, v := range all {
				if v != w.tally[n] && !strings.HasPrefix(n, "event/") {
					moved = append(moved, fmt.Sprintf("%s %+d", n, int64(v)-int64(w.tally[n])))
				}
			}
			slices.Sort(moved)
			diffs = append(diffs, fmt.Sprintf("counters moved: %s; model %s", strings.Join(moved, ", "), want.Counter))
			w.tally = all
		}
	}
	if len(diffs) > 0 {
		return &Divergence{Frame: bytes.Clone(frame), Ingress: ingress, Config: w.Config,
			Diffs: append([]string{fmt.Sprintf("model: %s %s (known program bugs met: %v)", want.Counter, strings.Join(want.Events, " "), want.Bugs)}, diffs...)}
	}
	return nil
}

// CheckCounters compares every global counter with the model's tally of
// the frames so far (the events included).
func (w *World) CheckCounters() []string {
	got, err := w.counters()
	if err != nil {
		return []string{err.Error()}
	}
	var diffs []string
	var names []string
	for n := range got {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if got[n] != w.tally[n] {
			diffs = append(diffs, fmt.Sprintf("counter %s is %d after %d frames, model %d", n, got[n], w.ran, w.tally[n]))
		}
	}
	return diffs
}

// checkOutput holds a frame sent to a backend or back to the client to
// gopacket's reading: sound when the frame that came in was (as far as
// gopacket can tell), and for the headers the program writes itself (the
// outer IPv4 header, its own ICMP errors) always.
func checkOutput(in, out []byte, counter string) []string {
	var diffs []string
	probs := gpcheck.Problems(out)
	switch {
	case counter == "tx/icmp_too_big" || counter == "tx/icmp_time_exceeded" || counter == "tx/snat_rst":
		for _, p := range probs {
			diffs = append(diffs, "output: "+p)
		}
	case len(probs) > 0 && len(gpcheck.Problems(in)) == 0:
		for _, p := range probs {
			diffs = append(diffs, "output of a sound frame: "+p)
		}
	}
	if strings.HasSuffix(counter, "dsr_ipip") && !gpcheck.OuterIPv4HeaderOK(out) {
		diffs = append(diffs, "output: the outer IPv4 header checksum is wrong (gopacket)")
	}
	return diffs
}

func verdictName(v uint32) string {
	switch v {
	case 0:
		return "XDP_ABORTED"
	case xdp.XDPDrop:
		return "XDP_DROP"
	case xdp.XDPPass:
		return "XDP_PASS"
	case xdp.XDPTx:
		return "XDP_TX"
	case xdp.XDPRedirect:
		return "XDP_REDIRECT"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// diffBytes says where two frames first differ.
func diffBytes(want, got []byte) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	return fmt.Sprintf("%d bytes, model %d; first difference at byte %d\n    program %s\n    model   %s",
		len(got), len(want), i, hex.EncodeToString(got), hex.EncodeToString(want))
}
