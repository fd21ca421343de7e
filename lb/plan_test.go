package lb

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// tableDP is a fake datapath that keeps the tables it is given, as the
// real one would hand them back.
type tableDP struct {
	fakeDP
	tables map[xdp.VIPKey][]uint32
}

func (f *tableDP) SetTables(tables map[xdp.VIPKey][]uint32) map[xdp.VIPKey]error {
	for k, t := range tables {
		f.tables[k] = append([]uint32(nil), t...)
	}
	return nil
}

// tableReader reads a VIP's current table back: from the fake or from the
// real datapath.
type tableReader func(xdp.VIPKey) []uint32

// observedMoves compares two tables read back from the datapath, naming the
// ids by the reconciler's status before and after.
func observedMoves(t *testing.T, before, after []uint32, namesBefore, namesAfter map[uint32]netip.AddrPort) (int, map[[2]netip.AddrPort]int) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("table size %d -> %d", len(before), len(after))
	}
	n := 0
	m := map[[2]netip.AddrPort]int{}
	for i := range before {
		from, to := namesBefore[before[i]], namesAfter[after[i]]
		if from != to {
			n++
			m[[2]netip.AddrPort{from, to}]++
		}
	}
	return n, m
}

func statusNames(st Status, k xdp.VIPKey) map[uint32]netip.AddrPort {
	out := map[uint32]netip.AddrPort{}
	for _, v := range st.VIPs {
		if v.Key != k {
			continue
		}
		for _, b := range v.Backends {
			out[b.ID] = b.Addr
		}
	}
	return out
}

func hundred() Service {
	s := Service{Name: "web", Addr: vip1, Proto: xdp.TCP, Ports: []uint16{80}, Mode: xdp.ModeDSRL2, TableSize: 65537}
	for i := 0; i < 100; i++ {
		s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), Weight: 1})
	}
	return s
}

// checkPlanMatchesApply plans each change, applies it, reads the tables back
// and asserts that the plan said exactly which slots move where.
func checkPlanMatchesApply(t *testing.T, r *Reconciler, read tableReader) {
	ctx := context.Background()
	var seed [16]byte
	copy(seed[:], "plan seed 123456")
	base := hundred()
	if st := r.Apply(ctx, State{Seed: seed, Services: []Service{base}}, nil); len(st.Errors) > 0 {
		t.Fatal(st.Errors)
	}
	k := xdp.VIPKey{Addr: vip1, Port: 80, Proto: xdp.TCP}
	added := hundred()
	added.Backends = append(added.Backends, Backend{Addr: netip.MustParseAddr("198.18.2.1"), Weight: 1})
	weighted := hundred()
	weighted.Backends = append(weighted.Backends, Backend{Addr: netip.MustParseAddr("198.18.2.1"), Weight: 1})
	weighted.Backends[7].Weight = 3
	steps := []struct {
		name string
		svc  Service
		want []string // the plan's changes
	}{
		{"add one backend to 100", added, []string{"backend 198.18.2.1 added"}},
		{"weight change", weighted, []string{"backend 198.18.1.8 weight 1 -> 3"}},
		{"no change", weighted, nil},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			state := State{Seed: seed, Services: []Service{s.svc}}
			before := append([]uint32(nil), read(k)...)
			namesBefore := statusNames(r.Status(), k)
			p := r.Plan(ctx, state, nil)
			if len(p.Errors) > 0 || len(p.VIPs) != 1 {
				t.Fatalf("plan: %+v", p)
			}
			v := p.VIPs[0]
			if diff := cmp.Diff(s.want, v.Changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if st := r.Apply(ctx, state, nil); len(st.Errors) > 0 {
				t.Fatal(st.Errors)
			}
			after := read(k)
			n, m := observedMoves(t, before, after, namesBefore, statusNames(r.Status(), k))
			if v.SlotsMoved != n {
				t.Errorf("plan: %d slots move; the datapath's table moved %d", v.SlotsMoved, n)
			}
			got := map[[2]netip.AddrPort]int{}
			for _, mv := range v.Moves {
				got[[2]netip.AddrPort{mv.From, mv.To}] = mv.Slots
			}
			if diff := cmp.Diff(m, got, addrCmp...); diff != "" {
				t.Errorf("moves, datapath (-) and plan (+):\n%s", diff)
			}
			if changed := p.Changed(); changed != (s.want != nil) {
				t.Errorf("Changed() = %v", changed)
			}
			t.Logf("%s: %d of %d slots move (%.2f%% of flows), %d pairs", s.name, n, len(after), 100*v.Moved, len(m))
			if s.want != nil && n == 0 {
				t.Errorf("no slot moved: the test proves nothing")
			}
		})
	}
}

func TestPlanMatchesApply(t *testing.T) {
	dp := &tableDP{tables: map[xdp.VIPKey][]uint32{}}
	r, _ := newTestReconciler(&dp.fakeDP, fakeNextHops{})
	r.dp = dp
	r.opts.MaxBackends = 1024
	r.ids.max = 1023
	checkPlanMatchesApply(t, r, func(k xdp.VIPKey) []uint32 { return dp.tables[k] })
}

// TestPlanMatchesApplyRealDatapath: the same against the XDP program's maps,
// the tables read back from the datapath.
func TestPlanMatchesApplyRealDatapath(t *testing.T) {
	testnet.RequirePrivileged(t)
	dp, err := xdp.Open(xdp.Options{PinPath: xdp.NoPin, MaxVIPs: 16, MaxBackends: 1024, MaxFlows: 1024, TransitionGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	r := NewReconciler(dp, fakeNextHops{}, Options{MaxBackends: 1024})
	checkPlanMatchesApply(t, r, func(k xdp.VIPKey) []uint32 {
		tab, err := dp.Table(k)
		if err != nil {
			t.Fatal(err)
		}
		return tab
	})
}

// TestPlanWritesNothing: a plan of a different state leaves the datapath and
// the reconciler as they were (the next Apply of the old state writes
// nothing), and plans additions, removals and errors.
func TestPlanWritesNothing(t *testing.T) {
	dp := &fakeDP{}
	r, _ := newTestReconciler(dp, fakeNextHops{})
	ctx := context.Background()
	var seed [16]byte
	old := State{Seed: seed, Services: []Service{web(bk(1, 1), bk(2, 1))}}
	r.Apply(ctx, old, nil)
	dp.take()
	bad := dns()
	bad.TableSize = 100
	p := r.Plan(ctx, State{Seed: seed, Services: []Service{dns(), {Name: "bad", Addr: vip2, Proto: xdp.TCP, Ports: []uint16{1}, TableSize: 100}}}, nil)
	if ops := dp.take(); len(ops) > 0 {
		t.Errorf("Plan wrote %v", ops)
	}
	var got []string
	for _, v := range p.VIPs {
		got = append(got, fmt.Sprintf("%s %s %s moved %d", v.Action, v.Service, v.Key, v.SlotsMoved))
	}
	want := []string{"remove web 198.18.100.1:80/tcp moved 251", "add dns 198.18.100.2:53/udp moved 251"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}
	if len(p.Errors) != 1 || p.Errors[0].Service != "bad" {
		t.Errorf("errors %+v, want one for bad", p.Errors)
	}
	r.Apply(ctx, old, nil)
	if ops := dp.take(); len(ops) > 0 {
		t.Errorf("applying the old state after a plan wrote %v", ops)
	}
	// The ids a plan hands out are those Apply then gives.
	next := State{Seed: seed, Services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1))}}
	p = r.Plan(ctx, next, nil)
	st := r.Apply(ctx, next, nil)
	var planned, applied []uint32
	for _, b := range p.VIPs[0].Backends {
		planned = append(planned, b.ID)
	}
	for _, b := range st.VIPs[0].Backends {
		applied = append(applied, b.ID)
	}
	if diff := cmp.Diff(applied, planned); diff != "" {
		t.Errorf("ids (-applied +planned):\n%s", diff)
	}
}
