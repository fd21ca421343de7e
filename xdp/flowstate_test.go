package xdp

// Flow state: pins made during table transitions keep established flows on
// their backend; pins to removed backends are ignored and cleaned up; a flood
// of new flows cannot push pinned flows off; Maintain expires idle pins only.

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/internal/packet"
)

// fsWorld is a datapath with backends A=1, B=2, C=3 (distinct MACs) and one
// L2 DSR VIP per family.
type fsWorld struct {
	d    *Datapath
	macs map[string]uint32
	vip4 VIPKey
	vip6 VIPKey
}

const (
	fsA, fsB, fsC = uint32(1), uint32(2), uint32(3)
	fsM           = 251 // table size
	fsGrace       = 30 * time.Second
)

func fsBackend(id uint32, up bool) Backend {
	return Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 6, byte(id)}), IfIndex: 1,
		NextHopMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x06, byte(id)}, SrcMAC: fxEgressMAC, Up: up}
}

func newFSWorld(t *testing.T, o Options) *fsWorld {
	t.Helper()
	if o.TransitionGrace == 0 {
		o.TransitionGrace = fsGrace
	}
	w := &fsWorld{
		d:    fxOpen(t, o),
		macs: map[string]uint32{},
		vip4: VIPKey{Addr: netip.MustParseAddr("198.19.6.1"), Port: 80, Proto: TCP},
		vip6: VIPKey{Addr: netip.MustParseAddr("2001:db8:106::1"), Port: 80, Proto: TCP},
	}
	for _, id := range []uint32{fsA, fsB, fsC} {
		b := fsBackend(id, true)
		w.macs[b.NextHopMAC.String()] = id
		if err := w.d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []VIPKey{w.vip4, w.vip6} {
		if err := w.d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 0x600d}); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func (w *fsWorld) setAll(t *testing.T, k VIPKey, id uint32) {
	t.Helper()
	if err := w.d.SetTable(k, fxFill(fsM, id)); err != nil {
		t.Fatal(err)
	}
}

// fsFrame is a TCP packet of the flow client:port -> vip.
func fsFrame(vip VIPKey, port uint16, flags packet.TCPFlags) []byte {
	return fxIn(fxIP(fsClient(vip, port), fxAP(vip.Addr, vip.Port), flags, nil), nil)
}

// fsClient is the client's side of flow port to vip.
func fsClient(vip VIPKey, port uint16) netip.AddrPort {
	if vip.Addr.Is6() {
		return fxAP(netip.MustParseAddr(fmt.Sprintf("2001:db8:7::%x", port)), port)
	}
	return fxAP(netip.AddrFrom4([4]byte{198, 18, 7, byte(port % 251)}), port)
}

func fsFlowName(vip VIPKey, port uint16) string { return fsClient(vip, port).String() }

// send runs one packet of flow port and returns the backend it went to.
func (w *fsWorld) send(t *testing.T, vip VIPKey, port uint16, flags packet.TCPFlags) uint32 {
	t.Helper()
	ret, out := fxRun(t, w.d.Program(), fsFrame(vip, port, flags))
	if ret != fxTX {
		t.Fatalf("flow %d: verdict %s, want XDP_TX", port, fxVerdict(ret))
	}
	id, ok := w.macs[net.HardwareAddr(out[:6]).String()]
	if !ok {
		t.Fatalf("flow %d: sent to unknown MAC %s", port, net.HardwareAddr(out[:6]))
	}
	return id
}

// expect sends a packet and checks its backend and the events it moved.
func (w *fsWorld) expect(t *testing.T, vip VIPKey, port uint16, flags packet.TCPFlags, want uint32, events ...string) {
	t.Helper()
	before, _ := fxCounters(t, w.d)
	got := w.send(t, vip, port, flags)
	after, _ := fxCounters(t, w.d)
	if got != want {
		t.Errorf("flow %d (%v): went to backend %d, want %d", port, flags, got, want)
	}
	wantEv := map[string]uint64{}
	for _, e := range events {
		wantEv[e]++
	}
	for _, e := range []string{"event/pin_created", "event/pin_hit", "event/pin_stale", "event/pin_table_full", "event/pin_bucket_busy"} {
		if d := after[e] - before[e]; d != wantEv[e] {
			t.Errorf("flow %d: %s moved by %d, want %d", port, e, d, wantEv[e])
		}
	}
}

// pins lists the pinned flows as "client:port" -> backend id.
func (w *fsWorld) pins(t *testing.T) map[string]uint32 {
	t.Helper()
	out := map[string]uint32{}
	if err := w.d.Flows(func(f Flow) bool {
		out[f.Src.String()] = f.BackendID
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func (w *fsWorld) checkPins(t *testing.T, vip VIPKey, want map[uint16]uint32) {
	t.Helper()
	got := w.pins(t)
	wantNamed := map[string]uint32{}
	for port, id := range want {
		wantNamed[fsFlowName(vip, port)] = id
	}
	if fmt.Sprint(got) != fmt.Sprint(wantNamed) {
		t.Errorf("pins %v, want %v", got, wantNamed)
	}
}

// endTransitions runs Maintain as if the grace period (and Maintain's one
// second margin) had passed: the loader's clock runs ahead for the call. Pins
// look older by the same amount, so idle is large.
func (w *fsWorld) endTransitions(t *testing.T) MaintainResult {
	t.Helper()
	saved := w.d.nowMono
	w.d.nowMono = func() time.Duration { return saved() + w.d.opts.TransitionGrace + 2*time.Second }
	defer func() { w.d.nowMono = saved }()
	res, err := w.d.Maintain(24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range w.d.VIPs() {
		if v.Transition != 0 {
			t.Errorf("VIP %s still in transition after Maintain", v.Key)
		}
	}
	return res
}

func (w *fsWorld) inTransition(t *testing.T, k VIPKey) bool {
	t.Helper()
	for _, v := range w.d.VIPs() {
		if v.Key == k {
			return v.Transition > 0
		}
	}
	t.Fatalf("no VIP %s", k)
	return false
}

func TestEstablishedFlowKeepsBackendAcrossTableChanges(t *testing.T) {
	for _, fam := range []string{"IPv4", "IPv6"} {
		t.Run(fam, func(t *testing.T) {
			w := newFSWorld(t, Options{})
			vip := w.vip4
			if fam == "IPv6" {
				vip = w.vip6
			}
			const f, g, h, late = 40001, 40002, 40003, 40004

			w.setAll(t, vip, fsA)
			// Steady state: no transition, no state.
			w.expect(t, vip, f, packet.TCPSyn, fsA)
			w.expect(t, vip, f, packet.TCPAck, fsA)
			w.checkPins(t, vip, nil)

			// All slots move to B. The established flow f stays on A and is
			// pinned on its first packet; later packets follow the pin.
			w.setAll(t, vip, fsB)
			if !w.inTransition(t, vip) {
				t.Fatal("no transition after SetTable")
			}
			w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_created")
			w.expect(t, vip, f, packet.TCPAck|packet.TCPPsh, fsA, "event/pin_hit")
			// A new flow's SYN takes the new table and is pinned there.
			w.expect(t, vip, g, packet.TCPSyn, fsB, "event/pin_created")
			w.expect(t, vip, g, packet.TCPAck, fsB, "event/pin_hit")
			w.checkPins(t, vip, map[uint16]uint32{f: fsA, g: fsB})

			// A second change (all C): pinned flows stay where they are, a new
			// SYN takes C.
			w.setAll(t, vip, fsC)
			w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_hit")
			w.expect(t, vip, g, packet.TCPAck, fsB, "event/pin_hit")
			w.expect(t, vip, h, packet.TCPSyn, fsC, "event/pin_created")
			w.checkPins(t, vip, map[uint16]uint32{f: fsA, g: fsB, h: fsC})
			if got, err := w.d.Table(vip); err != nil || len(got) != fsM || got[0] != fsC {
				t.Errorf("Table: %d slots, %v", len(got), err)
			}

			// The transition ends: pins stay and are still followed; a flow
			// never seen before follows the table and creates no pin.
			res := w.endTransitions(t)
			if res.Remaining != 3 || res.Expired != 0 || res.Stale != 0 {
				t.Errorf("Maintain: %+v, want 3 remaining, none expired", res)
			}
			w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_hit")
			w.expect(t, vip, g, packet.TCPAck, fsB, "event/pin_hit")
			w.expect(t, vip, h, packet.TCPAck, fsC, "event/pin_hit")
			w.expect(t, vip, late, packet.TCPAck, fsC)
			w.checkPins(t, vip, map[uint16]uint32{f: fsA, g: fsB, h: fsC})
		})
	}
}

// TestTransitionEndsOnTime checks the program's side of the grace period
// against the real clock: the loader's deadline and bpf_ktime_get_ns must be
// the same clock.
func TestTransitionEndsOnTime(t *testing.T) {
	const grace = time.Second
	w := newFSWorld(t, Options{TransitionGrace: grace})
	vip := w.vip4
	w.setAll(t, vip, fsA)
	start := time.Now()
	w.setAll(t, vip, fsB)
	set := time.Now() // the deadline is SetTable's clock reading plus grace: before this
	w.expect(t, vip, 40001, packet.TCPAck, fsA, "event/pin_created")
	if elapsed := time.Since(start); elapsed > grace/2 {
		t.Fatalf("SetTable and one packet took %v, too long to observe a %v grace period", elapsed, grace)
	}
	time.Sleep(time.Until(set.Add(grace + 50*time.Millisecond)))
	// Past the deadline the previous table is no longer consulted, even before
	// Maintain runs: an unpinned flow follows the current table.
	w.expect(t, vip, 40002, packet.TCPAck, fsB)
	w.expect(t, vip, 40001, packet.TCPAck, fsA, "event/pin_hit")
}

func TestRemovedBackendLosesItsFlows(t *testing.T) {
	for _, how := range []string{"deleted", "down"} {
		t.Run(how, func(t *testing.T) {
			w := newFSWorld(t, Options{})
			vip := w.vip4
			const f = 40001
			w.setAll(t, vip, fsA)
			w.setAll(t, vip, fsB)
			w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_created")
			w.setAll(t, vip, fsC)
			w.endTransitions(t)
			w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_hit")

			if how == "deleted" {
				if err := w.d.DeleteBackend(fsA); err != nil {
					t.Fatal(err)
				}
			} else if err := w.d.UpsertBackend(fsA, fsBackend(fsA, false)); err != nil {
				t.Fatal(err)
			}
			// The pin is ignored: the flow follows the table.
			w.expect(t, vip, f, packet.TCPAck, fsC, "event/pin_stale")
			res, err := w.d.Maintain(time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if res != (MaintainResult{Stale: 1}) {
				t.Errorf("Maintain: %+v, want one stale pin removed", res)
			}
			w.checkPins(t, vip, nil)
			w.expect(t, vip, f, packet.TCPAck, fsC)
		})
	}

	// During a transition too, a flow pinned to a removed backend never goes
	// to it.
	t.Run("deleted during a transition", func(t *testing.T) {
		w := newFSWorld(t, Options{})
		vip := w.vip6
		const f = 40001
		w.setAll(t, vip, fsA)
		w.setAll(t, vip, fsB)
		w.expect(t, vip, f, packet.TCPAck, fsA, "event/pin_created")
		w.setAll(t, vip, fsC)
		if err := w.d.DeleteBackend(fsA); err != nil {
			t.Fatal(err)
		}
		before, _ := fxCounters(t, w.d)
		if got := w.send(t, vip, f, packet.TCPAck); got == fsA {
			t.Errorf("flow pinned to a deleted backend still went to it")
		}
		after, _ := fxCounters(t, w.d)
		if d := after["event/pin_stale"] - before["event/pin_stale"]; d != 1 {
			t.Errorf("pin_stale moved by %d, want 1", d)
		}
	})
}

func TestFloodOfNewFlowsKeepsPinnedFlows(t *testing.T) {
	const maxFlows = 64
	w := newFSWorld(t, Options{MaxFlows: maxFlows})
	vip := w.vip4
	w.setAll(t, vip, fsA)
	w.setAll(t, vip, fsB) // every slot moved

	// Ten established flows are pinned to A.
	pinned := map[uint16]uint32{}
	for i := range uint16(10) {
		w.expect(t, vip, 1000+i, packet.TCPAck, fsA, "event/pin_created")
		pinned[1000+i] = fsA
	}
	// A flood of 1,000 new tuples (non-SYN, so each tries to pin) fills the
	// table; the rest are counted, not pinned, and evict nothing.
	before, _ := fxCounters(t, w.d)
	for i := range uint16(1000) {
		if got := w.send(t, vip, 20000+i, packet.TCPAck); got != fsA {
			t.Fatalf("flood flow %d went to %d, want the previous table's %d", i, got, fsA)
		}
	}
	// The table holds about 4 maxFlows pins, some buckets fill sooner than
	// others, and after the first refusal this CPU stops trying for a
	// while (the backoff): every flood packet either pinned its flow or
	// was counted, and the pins are the ten and the flood's.
	after, _ := fxCounters(t, w.d)
	created := after["event/pin_created"] - before["event/pin_created"]
	full := after["event/pin_table_full"] - before["event/pin_table_full"]
	if created+full != 1000 || created < maxFlows || full == 0 {
		t.Errorf("flood: %d pins created, %d refused for a full table; want at least %d, at least 1, 1000 in all", created, full, maxFlows)
	}
	pins := w.pins(t)
	if len(pins) != 10+int(created) {
		t.Errorf("%d pins, want %d", len(pins), 10+created)
	}
	for port, id := range pinned {
		if got := pins[fsFlowName(vip, port)]; got != id {
			t.Errorf("flow %d lost its pin to %d (now %d)", port, id, got)
		}
	}

	// A SYN flood of new tuples during the transition evicts nothing either
	// (SYNs whose slot moved try to pin to the current table). A SYN whose
	// pin fails goes where its flow's next packets, finding no pin, will
	// go: the previous table's backend.
	before, _ = fxCounters(t, w.d)
	for i := range uint16(500) {
		if got := w.send(t, vip, 50000+i, packet.TCPSyn); got != fsA {
			t.Fatalf("SYN %d went to %d, want the previous table's %d", i, got, fsA)
		}
	}
	after, _ = fxCounters(t, w.d)
	if created, full := after["event/pin_created"]-before["event/pin_created"], after["event/pin_table_full"]-before["event/pin_table_full"]; created != 0 || full != 500 {
		t.Errorf("SYN flood: %d pins created, %d refused, want 0 and 500", created, full)
	}

	// Another change and the end of the transition: the ten flows still go to
	// A, flood flows that got no pin follow the table.
	w.setAll(t, vip, fsC)
	w.endTransitions(t)
	for port, id := range pinned {
		w.expect(t, vip, port, packet.TCPAck, id, "event/pin_hit")
	}
	if _, ok := pins[fsFlowName(vip, 20999)]; !ok {
		w.expect(t, vip, 20999, packet.TCPAck, fsC)
	}
}

func TestMaintainExpiresOnlyIdlePins(t *testing.T) {
	w := newFSWorld(t, Options{})
	vip := w.vip6
	w.setAll(t, vip, fsA)
	// Pins restored (PinFlow) on a VIP in steady state are honoured.
	mk := func(port uint16, id uint32, idle time.Duration) Flow {
		in := fsFrame(vip, port, packet.TCPAck)
		return Flow{Src: fxAP(netip.AddrFrom16([16]byte(in[22:38])), port), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP, BackendID: id, Idle: idle}
	}
	for _, f := range []Flow{mk(1, fsB, 0), mk(2, fsC, 30*time.Second), mk(3, fsB, 90*time.Second), mk(4, fsC, 10*time.Minute), mk(6, fsC, 40*time.Second)} {
		if err := w.d.PinFlow(f); err != nil {
			t.Fatal(err)
		}
	}
	w.expect(t, vip, 1, packet.TCPAck, fsB, "event/pin_hit")
	// A hit refreshes the pin's last-seen stamp (it was 30 s old).
	w.expect(t, vip, 2, packet.TCPAck, fsC, "event/pin_hit")
	w.expect(t, vip, 5, packet.TCPAck, fsA)

	idle := map[string]time.Duration{}
	if err := w.d.Flows(func(f Flow) bool { idle[f.Src.String()] = f.Idle; return true }); err != nil {
		t.Fatal(err)
	}
	for port, want := range map[uint16]time.Duration{2: 0, 3: 90 * time.Second, 4: 10 * time.Minute, 6: 40 * time.Second} {
		// Stamps are ~1 ms (2^20 ns) apart: an idle time reads up to that short.
		if got := idle[fsFlowName(vip, port)]; got < want-2*time.Millisecond || got > want+5*time.Second {
			t.Errorf("flow %d idle %v, want about %v", port, got, want)
		}
	}

	res, err := w.d.Maintain(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res != (MaintainResult{Expired: 2, Remaining: 3}) {
		t.Errorf("Maintain(1m): %+v, want 2 expired and 3 remaining", res)
	}
	w.checkPins(t, vip, map[uint16]uint32{1: fsB, 2: fsC, 6: fsC})
	res, err = w.d.Maintain(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res != (MaintainResult{Expired: 1, Remaining: 2}) {
		t.Errorf("Maintain(20s): %+v, want 1 expired and 2 remaining", res)
	}
	w.checkPins(t, vip, map[uint16]uint32{1: fsB, 2: fsC})
	w.expect(t, vip, 1, packet.TCPAck, fsB, "event/pin_hit")
	w.expect(t, vip, 2, packet.TCPAck, fsC, "event/pin_hit")
	w.expect(t, vip, 4, packet.TCPAck, fsA)
	w.expect(t, vip, 6, packet.TCPAck, fsA)
}

// TestHandshakeAgreesWithoutPin: during a transition a SYN whose slot moved
// is pinned to the current backend. When the pin cannot be made (flow table
// full, or this CPU backing off after a failure), the flow's next packets
// find no pin: the SYN must go where they go, the previous backend while it
// is up, or the handshake is split between two backends.
func TestHandshakeAgreesWithoutPin(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fam      string
		full     bool // fill the flow table; else set every CPU's backoff
		prevDown bool
		want     uint32
	}{
		{name: "flow table full", fam: "IPv4", full: true, want: fsA},
		{name: "flow table full", fam: "IPv6", full: true, want: fsA},
		{name: "backoff", fam: "IPv4", want: fsA},
		{name: "backoff", fam: "IPv6", want: fsA},
		{name: "flow table full, previous backend down", fam: "IPv4", full: true, prevDown: true, want: fsB},
	} {
		t.Run(tc.name+"/"+tc.fam, func(t *testing.T) {
			const maxFlows = 8
			w := newFSWorld(t, Options{MaxFlows: maxFlows})
			vip := w.vip4
			if tc.fam == "IPv6" {
				vip = w.vip6
			}
			w.setAll(t, vip, fsA)
			const f = 40001
			filled := 0 // pins that fill the buckets of flow f
			if tc.full {
				flow := func(port uint16) Flow {
					in := fsFrame(vip, port, packet.TCPAck)
					src := netip.AddrFrom4([4]byte(in[26:30]))
					if vip.Addr.Is6() {
						src = netip.AddrFrom16([16]byte(in[22:38]))
					}
					return Flow{Src: fxAP(src, port), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP, BackendID: fsC}
				}
				for port := uint16(1000); w.d.pinRoom(flow(f)); port++ {
					switch err := w.d.PinFlow(flow(port)); {
					case err == nil:
						filled++
					case !errors.Is(err, ErrFull):
						t.Fatal(err)
					}
				}
			} else {
				bo := make([]lbFtBackoff, ebpf.MustPossibleCPU())
				for i := range bo {
					bo[i].Until = math.MaxUint64
				}
				if err := w.d.objs.PinBackoff.Put(uint32(0), bo); err != nil {
					t.Fatal(err)
				}
			}
			if tc.prevDown {
				if err := w.d.UpsertBackend(fsA, fsBackend(fsA, false)); err != nil {
					t.Fatal(err)
				}
			}
			w.setAll(t, vip, fsB) // every slot moved from A to B
			before, _ := fxCounters(t, w.d)
			statsBefore := map[uint32]Stats{}
			for _, id := range []uint32{fsA, fsB} {
				statsBefore[id], _ = w.d.BackendStats(id)
			}

			w.expect(t, vip, f, packet.TCPSyn, tc.want, "event/pin_table_full")
			w.expect(t, vip, f, packet.TCPAck, tc.want, "event/pin_table_full")
			w.expect(t, vip, f, packet.TCPAck|packet.TCPPsh, tc.want, "event/pin_table_full")

			after, _ := fxCounters(t, w.d)
			if d := after["event/tcp_syn"] - before["event/tcp_syn"]; d != 1 {
				t.Errorf("event/tcp_syn moved by %d, want 1", d)
			}
			if d := after["tx/dsr_l2"] - before["tx/dsr_l2"]; d != 3 {
				t.Errorf("tx/dsr_l2 moved by %d, want 3", d)
			}
			for _, id := range []uint32{fsA, fsB} {
				s, err := w.d.BackendStats(id)
				if err != nil {
					t.Fatal(err)
				}
				want := Stats{}
				if id == tc.want {
					want = Stats{Packets: 3, NewFlows: 1}
				}
				got := Stats{Packets: s.Packets - statsBefore[id].Packets, NewFlows: s.NewFlows - statsBefore[id].NewFlows}
				if got != want {
					t.Errorf("backend %d counted %d packets and %d new flows, want %d and %d", id, got.Packets, got.NewFlows, want.Packets, want.NewFlows)
				}
			}
			if pins := w.pins(t); len(pins) != filled {
				t.Errorf("%d pins, want only the %d that filled the table", len(pins), filled)
			}
		})
	}
}

// TestSetTableAgainKeepsTransition: writing the table a VIP has already (a
// restarted reconciler writes every table it wants once) does not end the
// running transition: the previous table stays consulted for the flows
// that have not sent their next packet yet.
func TestSetTableAgainKeepsTransition(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour})
	k := VIPKey{Addr: netip.MustParseAddr("198.19.12.1"), Port: 80, Proto: TCP}
	for id := uint32(1); id <= 2; id++ {
		if err := d.UpsertBackend(id, ccBackend(id, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 3}); err != nil {
		t.Fatal(err)
	}
	first, second := fxFill(251, 1), fxFill(251, 2)
	for _, table := range [][]uint32{first, second, second} {
		if err := d.SetTable(k, table); err != nil {
			t.Fatal(err)
		}
	}
	cur, prev, left, err := d.Tables(k)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cur, second) || !slices.Equal(prev, first) || left <= 0 {
		t.Errorf("after writing the same table again: current %v…, previous %v…, %v left; want the second table, the first as previous, the grace period running",
			cur[:3], prev[:min(3, len(prev))], left)
	}
}

// TestSYNRemovesStalePin: a new connection that reuses the addresses and
// ports of an earlier one, whose pin names a backend that is down, goes by
// the table and removes that pin, so the backend coming back up does not
// take the new connection over.
func TestSYNRemovesStalePin(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour})
	k := VIPKey{Addr: netip.MustParseAddr("198.19.13.1"), Port: 80, Proto: TCP}
	macs := map[string]uint32{}
	for id := uint32(1); id <= 2; id++ {
		b := ccBackend(id, 0)
		macs[b.NextHopMAC.String()] = id
		if err := d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 5}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(k, fxFill(251, 2)); err != nil {
		t.Fatal(err)
	}
	src, dst := fxAP(netip.MustParseAddr("198.18.13.1"), 40000), fxAP(k.Addr, 80)
	// The earlier connection was pinned to backend 1, which went down.
	if err := d.PinFlow(Flow{Src: src, Dst: dst, Proto: TCP, BackendID: 1}); err != nil {
		t.Fatal(err)
	}
	down := ccBackend(1, 0)
	down.Up = false
	if err := d.UpsertBackend(1, down); err != nil {
		t.Fatal(err)
	}
	send := func(flags packet.TCPFlags) uint32 {
		t.Helper()
		ret, out := fxRun(t, d.Program(), fxIn(fxIP(src, dst, flags, nil), nil))
		if ret != fxTX {
			t.Fatalf("verdict %s", fxVerdict(ret))
		}
		return macs[net.HardwareAddr(out[:6]).String()]
	}
	if got := send(packet.TCPSyn); got != 2 {
		t.Fatalf("the new connection's SYN went to %d, want 2 (the table's)", got)
	}
	if _, ok, err := d.LookupFlow(src, dst, TCP); err != nil || ok {
		t.Errorf("after the SYN the stale pin is still there (%v, %v)", ok, err)
	}
	// Backend 1 comes back up: the new connection stays on 2.
	if err := d.UpsertBackend(1, ccBackend(1, 0)); err != nil {
		t.Fatal(err)
	}
	if got := send(packet.TCPAck); got != 2 {
		t.Errorf("once backend 1 is up again the connection's ACK went to %d, want 2", got)
	}
}

// TestPinBackoffAfterAStreak: one pin that finds its buckets full does not
// stop a CPU's pins (a key's buckets can be full while the table has room);
// FT_FULL_STREAK (4) in a row do, for FT_BACKOFF_NS, even once there is
// room again. The test runs on one CPU: the backoff is per CPU.
func TestPinBackoffAfterAStreak(t *testing.T) {
	cpu, unpin, err := pinToCurrentCPU()
	if err != nil {
		t.Fatal(err)
	}
	defer unpin()
	w := newFSWorld(t, Options{MaxFlows: 8}) // 8 buckets of 2: every key's window is the whole table
	vip := w.vip4
	w.setAll(t, vip, fsA)
	flow := func(port uint16) Flow {
		return Flow{Src: fsClient(vip, port), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP, BackendID: fsC}
	}
	var filled []Flow
	for port := uint16(1000); ; port++ {
		err := w.d.PinFlow(flow(port))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		filled = append(filled, flow(port))
	}
	if len(filled) != 16 {
		t.Fatalf("%d pins fill the table, want 16", len(filled))
	}
	unpinOne := func() {
		t.Helper()
		f := filled[0]
		filled = filled[1:]
		key, tag, hash := pinKey(f)
		tb := w.d.pinTable(false)
		r, ok := tb.find(hash, key, tag)
		r.home = hash & tb.mask
		if !ok || !tb.delete(r) {
			t.Fatalf("removing the pin of %s", f.Src)
		}
	}
	w.setAll(t, vip, fsB) // every slot moved: a SYN is pinned to B, or goes to A without a pin
	for port := uint16(40001); port <= 40003; port++ {
		w.expect(t, vip, port, packet.TCPSyn, fsA, "event/pin_table_full")
	}
	unpinOne()
	w.expect(t, vip, 40004, packet.TCPSyn, fsB, "event/pin_created") // 3 failures in a row: no backoff
	backoff := func() lbFtBackoff {
		t.Helper()
		var bo []lbFtBackoff
		if err := w.d.objs.PinBackoff.Lookup(uint32(0), &bo); err != nil {
			t.Fatal(err)
		}
		return bo[cpu]
	}
	for port := uint16(40005); port <= 40008; port++ {
		w.expect(t, vip, port, packet.TCPSyn, fsA, "event/pin_table_full")
		if b := backoff(); port < 40008 && (b.Streak != uint32(port-40004) || b.Until != 0) {
			t.Errorf("after flow %d: backoff %+v, want a streak of %d and none yet", port, b, port-40004)
		}
	}
	// The fourth in a row: this CPU backs off for 100 ms from the coarse
	// clock's now (at most a tick behind the monotonic clock).
	now := monotonicNow()
	b := backoff()
	if b.Streak != 0 || time.Duration(b.Until) < now || time.Duration(b.Until) > now+100*time.Millisecond {
		t.Fatalf("after 4 failures in a row: backoff %+v at %v, want until about %v", b, now, now+100*time.Millisecond)
	}
	unpinOne()
	if d := monotonicNow() - now; d > 50*time.Millisecond {
		// A loaded host stopped the test too long to send the next SYN
		// within the backoff: its state above is what the test shows.
		t.Logf("%v after the fourth failure: no SYN sent within the backoff", d)
		return
	}
	w.expect(t, vip, 40009, packet.TCPSyn, fsA, "event/pin_table_full") // backing off, though there is room
	if _, ok, err := w.d.LookupFlow(flow(40009).Src, flow(40009).Dst, TCP); err != nil || ok {
		t.Errorf("flow 40009 pinned during the backoff (%v)", err)
	}
}

// TestPinBucketBusy: a pin that gives up at a bucket held locked (by user
// space here; by another CPU's descheduled program in production) is counted
// pin_bucket_busy, not pin_table_full, does not make the CPU back off, and
// leaves the flow to its previous backend until a later packet pins it.
func TestPinBucketBusy(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			w := newFSWorld(t, Options{})
			vip := w.vip4
			if v6 {
				vip = w.vip6
			}
			w.setAll(t, vip, fsA)
			w.setAll(t, vip, fsB) // every slot moved: a new flow is pinned to A
			tb := w.d.pinTable(v6)
			home := func(port uint16) uint32 {
				_, _, hash := pinKey(Flow{Src: fsClient(vip, port), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP})
				return hash & tb.mask
			}
			const port = 1000
			other := uint16(port + 1)
			for home(other) == home(port) {
				other++
			}
			if !tb.lock(home(port)) {
				t.Fatal("locking the flow's bucket")
			}
			locked := true
			defer func() {
				if locked {
					tb.unlock(home(port))
				}
			}()
			for range 5 { // no backoff: each packet tries again
				w.expect(t, vip, port, packet.TCPAck, fsA, "event/pin_bucket_busy")
			}
			w.expect(t, vip, other, packet.TCPAck, fsA, "event/pin_created")
			tb.unlock(home(port))
			locked = false
			w.expect(t, vip, port, packet.TCPAck, fsA, "event/pin_created")
			w.expect(t, vip, port, packet.TCPAck, fsA, "event/pin_hit")
			w.checkPins(t, vip, map[uint16]uint32{port: fsA, other: fsA})
		})
	}
}
