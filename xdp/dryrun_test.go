package xdp

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// dpSnapshot is everything a packet may change in a datapath's maps: the
// global counters, the VIP's and the backends' stats and the pins.
type dpSnapshot struct {
	Counters map[string]uint64
	VIP      Stats
	Backends map[uint32]Stats
	Flows    map[string]snapFlow // by "src>dst"
}

// snapFlow is a pinned flow as the map holds it: its backend and its
// last-seen stamp (which a touch would move), not Idle (which the clock
// moves).
type snapFlow struct {
	BackendID uint32
	LastSeen  uint32
	State     uint32 // the entry's state word: a touch or a delete moves it
}

func snapshot(t *testing.T, d *Datapath, k VIPKey, ids []uint32) dpSnapshot {
	t.Helper()
	s := dpSnapshot{Backends: map[uint32]Stats{}, Flows: map[string]snapFlow{}}
	s.Counters, _ = fxCounters(t, d)
	var err error
	if s.VIP, err = d.VIPStats(k); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if s.Backends[id], err = d.BackendStats(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.walkFlows(func(f Flow, e pinEntry) bool {
		s.Flows[f.Src.String()+">"+f.Dst.String()] = snapFlow{BackendID: f.BackendID, LastSeen: e.seen, State: uint32(e.ref.state)}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// snapshotDiff is cmp.Diff of two snapshots.
func snapshotDiff(a, b dpSnapshot) string {
	return cmp.Diff(a, b, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }))
}

// dryWorld is a VIP in transition: its table moved from first to second
// moments ago, every backend up; and two more services: a port-0 UDP one
// with the second table, and an IPv6 one without a table.
type dryWorld struct {
	key, any, empty VIPKey
	seed            uint32
	first, second   []uint32
	ids             []uint32
}

func newDryWorld() dryWorld {
	ids := []uint32{41, 42, 43, 44}
	return dryWorld{
		key:   VIPKey{Addr: netip.MustParseAddr("198.19.20.1"), Port: 80, Proto: TCP},
		any:   VIPKey{Addr: netip.MustParseAddr("198.19.20.2"), Port: 0, Proto: UDP},
		empty: VIPKey{Addr: netip.MustParseAddr("2001:db8:20::1"), Port: 80, Proto: TCP},
		seed:  0xd1e5eed,
		// second drains backend 41: its slots move to the others.
		first: fxTable(31, ids, 7), second: fxTable(31, ids[1:], 8),
		ids: ids,
	}
}

func (w dryWorld) apply(t *testing.T, d *Datapath) {
	t.Helper()
	for _, id := range w.ids {
		b := Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 20, byte(id)}), IfIndex: 1,
			NextHopMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x20, byte(id)}, SrcMAC: fxEgressMAC, Up: true}
		if err := d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.UpsertVIP(w.key, VIP{Mode: ModeDSRL2, HashSeed: w.seed}); err != nil {
		t.Fatal(err)
	}
	for _, table := range [][]uint32{w.first, w.second} {
		if err := d.SetTable(w.key, table); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []VIPKey{w.any, w.empty} {
		if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: w.seed}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetTable(w.any, w.second); err != nil {
		t.Fatal(err)
	}
}

// movedClient is a client whose flow's slot names another backend in the
// second table than in the first.
func (w dryWorld) movedClient(t *testing.T, from uint16) netip.AddrPort {
	t.Helper()
	dst := netip.AddrPortFrom(w.key.Addr, w.key.Port)
	for port := from; port < from+1000; port++ {
		src := netip.AddrPortFrom(fxClient4, port)
		slot := Slot(FlowHash(src, dst, TCP, w.seed), len(w.first))
		if w.first[slot] != w.second[slot] {
			return src
		}
	}
	t.Fatal("no client port whose slot moved")
	return netip.AddrPort{}
}

// TestDryRun runs packets through the dry-run build of a datapath that
// reopened the maps an earlier instance pinned, and checks that the dry
// run reports what the program then does (verdict, reason, backend, pin,
// output bytes) while changing nothing.
func TestDryRun(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	opts := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128, TransitionGrace: time.Hour}
	w := newDryWorld()
	first, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	w.apply(t, first)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	dst := netip.AddrPortFrom(w.key.Addr, w.key.Port)

	// compare dry-runs frame, checks that nothing changed, then runs the
	// program on it and compares.
	compare := func(t *testing.T, frame []byte) DryRunResult {
		t.Helper()
		before := snapshot(t, d, w.key, w.ids)
		dry, err := d.DryRun(frame)
		if err != nil {
			t.Fatal(err)
		}
		if diff := snapshotDiff(before, snapshot(t, d, w.key, w.ids)); diff != "" {
			t.Errorf("the dry run changed the datapath (-before +after):\n%s", diff)
		}
		verdict, out := fxRun(t, d.Program(), frame)
		after := snapshot(t, d, w.key, w.ids)
		if dry.Verdict != verdict {
			t.Errorf("dry run verdict %s, program %s", fxVerdict(dry.Verdict), fxVerdict(verdict))
		}
		if got := after.Counters[dry.Reason] - before.Counters[dry.Reason]; got != 1 {
			t.Errorf("dry run reason %s: the program moved that counter by %d", dry.Reason, got)
		}
		if verdict == fxTX || verdict == fxRedirect {
			if diff := packet.Diff(out, dry.Out); diff != "" {
				t.Errorf("dry run output differs from the program's (-program +dry):\n%s", diff)
			}
			if got := after.Backends[dry.BackendID].Packets - before.Backends[dry.BackendID].Packets; got != 1 {
				t.Errorf("dry run backend %d: the program counted %d packets for it", dry.BackendID, got)
			}
		} else if dry.Out != nil {
			t.Errorf("dry run output for verdict %s", fxVerdict(verdict))
		}
		pinned := after.Counters["event/pin_created"] - before.Counters["event/pin_created"]
		if (dry.Pin != "") != (pinned == 1) {
			t.Errorf("dry run pin %q; the program created %d pins", dry.Pin, pinned)
		}
		return dry
	}

	t.Run("moved slot, non-SYN: previous backend, pinned", func(t *testing.T) {
		src := w.movedClient(t, 40000)
		slot := Slot(FlowHash(src, dst, TCP, w.seed), len(w.first))
		dry := compare(t, fxIn(fxIP(src, dst, packet.TCPAck, []byte("data")), nil))
		want := DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: w.first[slot], Pin: "create"}
		dry.Out = nil
		if diff := cmp.Diff(want, dry); diff != "" {
			t.Errorf("dry run (-want +got):\n%s", diff)
		}
		if id, ok, err := d.LookupFlow(src, dst, TCP); err != nil || !ok || id != w.first[slot] {
			t.Errorf("after the program's run: pin %d, %v, %v; want %d", id, ok, err, w.first[slot])
		}
	})
	t.Run("moved slot, SYN: current backend, pinned", func(t *testing.T) {
		src := w.movedClient(t, 41000)
		slot := Slot(FlowHash(src, dst, TCP, w.seed), len(w.first))
		dry := compare(t, fxIn(fxIP(src, dst, packet.TCPSyn, nil), nil))
		if dry.BackendID != w.second[slot] || dry.Pin != "create" {
			t.Errorf("dry run: backend %d, pin %q; want %d, create", dry.BackendID, dry.Pin, w.second[slot])
		}
	})
	t.Run("pinned flow: its last-seen stamp stays", func(t *testing.T) {
		src := w.movedClient(t, 42000)
		if err := d.PinFlow(Flow{Src: src, Dst: dst, Proto: TCP, BackendID: 44, Idle: time.Minute}); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, d, w.key, w.ids)
		dry, err := d.DryRun(fxIn(fxIP(src, dst, packet.TCPAck, nil), nil))
		if err != nil {
			t.Fatal(err)
		}
		if dry.BackendID != 44 || dry.Pin != "" {
			t.Errorf("dry run: backend %d, pin %q; want 44 and no pin", dry.BackendID, dry.Pin)
		}
		if diff := snapshotDiff(before, snapshot(t, d, w.key, w.ids)); diff != "" {
			t.Errorf("the dry run changed the datapath (-before +after):\n%s", diff)
		}
		compare(t, fxIn(fxIP(src, dst, packet.TCPAck, nil), nil))
		key := src.String() + ">" + dst.String()
		if after := snapshot(t, d, w.key, w.ids).Flows[key].LastSeen; after == before.Flows[key].LastSeen {
			t.Errorf("after the program's run the pin's last-seen stamp is unchanged: not touched, so the check above proves nothing")
		}
	})
	t.Run("stale pin: replaced", func(t *testing.T) {
		src := w.movedClient(t, 43000)
		if err := d.PinFlow(Flow{Src: src, Dst: dst, Proto: TCP, BackendID: 63}); err != nil { // no such backend
			t.Fatal(err)
		}
		dry := compare(t, fxIn(fxIP(src, dst, packet.TCPAck, nil), nil))
		if dry.Pin != "replace" {
			t.Errorf("dry run pin %q, want replace", dry.Pin)
		}
	})
	t.Run("not a VIP", func(t *testing.T) {
		dry := compare(t, fxIn(fxIP(netip.AddrPortFrom(fxClient4, 1), netip.AddrPortFrom(fxOther4, 80), packet.TCPAck, nil), nil))
		if dry.Verdict != XDPPass || dry.Reason != "pass/not_vip" || dry.BackendID != 0 {
			t.Errorf("dry run %+v, want XDP_PASS pass/not_vip", dry)
		}
	})
}

// TestDryRunFixtures runs every datapath fixture through the dry-run build:
// each must get the fixture's verdict, reason and output (redirects and
// failed redirects included), and move no counter.
func TestDryRunFixtures(t *testing.T) {
	env := fxNewEnv(t)
	datapaths := map[*fixtureSetup]*Datapath{}
	datapath := func(t *testing.T, s *fixtureSetup) *Datapath {
		if d, ok := datapaths[s]; ok {
			return d
		}
		d := fxOpen(t, Options{})
		fixtureWorld.apply(t, d, env)
		if s != nil {
			env.do(t, func() { s.apply(t, d) })
		}
		datapaths[s] = d
		return d
	}
	fs := datapathFixtures()
	for _, f := range fs {
		datapath(t, f.setup)
	}
	for _, f := range fs {
		t.Run(f.name, func(t *testing.T) {
			d := datapaths[f.setup]
			env.do(t, func() {
				before, _ := fxCounters(t, d)
				r, err := d.DryRun(f.in)
				if err != nil {
					t.Fatal(err)
				}
				after, _ := fxCounters(t, d)
				if r.Verdict != f.wantVerdict || r.Reason != f.wantCounter {
					t.Errorf("dry run: %s %s, want %s %s", fxVerdict(r.Verdict), r.Reason, fxVerdict(f.wantVerdict), f.wantCounter)
				}
				if r.Verdict == fxTX || r.Verdict == fxRedirect {
					want := f.wantOut
					if want == nil {
						want = f.in
					}
					if diff := packet.Diff(want, r.Out); diff != "" {
						t.Errorf("dry run output (-want +got):\n%s", diff)
					}
				}
				for name, v := range after {
					if v != before[name] {
						t.Errorf("the dry run moved counter %s by %d", name, v-before[name])
					}
				}
			})
		})
	}
}
