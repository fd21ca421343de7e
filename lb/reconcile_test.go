package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/xdp"
)

// fakeDP records every write as one line, and fails the writes failOn
// matches.
type fakeDP struct {
	ops    []string
	failOn func(op string) bool
}

func (f *fakeDP) do(op string) error {
	if f.failOn != nil && f.failOn(op) {
		f.ops = append(f.ops, op+" FAILED")
		return errors.New("injected failure")
	}
	f.ops = append(f.ops, op)
	return nil
}

func (f *fakeDP) UpsertVIP(k xdp.VIPKey, v xdp.VIP) error {
	return f.do(fmt.Sprintf("UpsertVIP %s %s", k, v.Mode))
}

func (f *fakeDP) DeleteVIP(k xdp.VIPKey) error { return f.do("DeleteVIP " + k.String()) }

func (f *fakeDP) SetTables(tables map[xdp.VIPKey][]uint32) map[xdp.VIPKey]error {
	keys := make([]xdp.VIPKey, 0, len(tables))
	for k := range tables {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	errs := map[xdp.VIPKey]error{}
	for _, k := range keys {
		if err := f.setTable(k, tables[k]); err != nil {
			errs[k] = err
		}
	}
	return errs
}

func (f *fakeDP) setTable(k xdp.VIPKey, table []uint32) error {
	counts := SlotCounts(table)
	ids := make([]int, 0, len(counts))
	for id := range counts {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%d:%d", id, counts[uint32(id)]))
	}
	return f.do(fmt.Sprintf("SetTable %s [%s]", k, strings.Join(parts, " ")))
}

func (f *fakeDP) UpsertBackend(id uint32, b xdp.Backend) error {
	state := "up"
	if !b.Up {
		state = "down"
	}
	return f.do(fmt.Sprintf("UpsertBackend %d %s %s", id, b.Addr, state))
}

func (f *fakeDP) Sync() error { return f.do("Sync") }

func (f *fakeDP) DeleteBackend(id uint32) error { return f.do(fmt.Sprintf("DeleteBackend %d", id)) }

func (f *fakeDP) take() []string {
	ops := f.ops
	f.ops = nil
	return ops
}

// fakeNextHops resolves every address to a MAC made of it, except those in
// fail.
type fakeNextHops struct{ fail map[netip.Addr]bool }

func (f fakeNextHops) Resolve(_ context.Context, a netip.Addr) (xdp.NextHop, error) {
	if f.fail[a] {
		return xdp.NextHop{}, fmt.Errorf("no route to %s", a)
	}
	b := a.As16()
	return xdp.NextHop{IfIndex: 2, Interface: "eth0", SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, MAC: net.HardwareAddr{2, 0, b[12], b[13], b[14], b[15]}, Via: a, MTU: 1500}, nil
}

var (
	vip1 = netip.MustParseAddr("198.18.100.1")
	vip2 = netip.MustParseAddr("198.18.100.2")
	be   = func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}) }
)

func web(backends ...Backend) Service {
	return Service{Name: "web", Addr: vip1, Proto: xdp.TCP, Ports: []uint16{80}, Mode: xdp.ModeDSRL2, TableSize: 251, Backends: backends}
}

func dns() Service {
	return Service{Name: "dns", Addr: vip2, Proto: xdp.UDP, Ports: []uint16{53}, Mode: xdp.ModeDSRIPIP, TableSize: 251,
		Backends: []Backend{{Addr: be(7), Weight: 1}}}
}

func bk(i int, w uint32) Backend { return Backend{Addr: be(i), Weight: w} }

var addrCmp = []cmp.Option{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestReconciler(dp *fakeDP, nh NextHops) (*Reconciler, *clock) {
	r := NewReconciler(dp, nh, Options{MaxBackends: 64, IDQuarantine: time.Minute})
	c := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	r.now = c.now
	return r, c
}

// TestReconcileWrites asserts the exact, ordered datapath writes of each
// kind of change, and that nothing else is written.
func TestReconcileWrites(t *testing.T) {
	dp := &fakeDP{}
	r, c := newTestReconciler(dp, fakeNextHops{})
	ctx := context.Background()
	var seed [16]byte
	down := map[netip.Addr]bool{}
	health := func(k BackendKey) bool { return !down[k.Backend.Addr()] }
	apply := func(services ...Service) Status {
		return r.Apply(ctx, State{Seed: seed, Services: services}, health)
	}

	steps := []struct {
		name     string
		services []Service
		before   func()
		want     []string
	}{
		{
			name:     "add",
			services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1)), dns()},
			want: []string{
				// Entries and VIPs of every service, then all tables in one batch.
				"UpsertBackend 1 198.18.0.11 up", "UpsertBackend 2 198.18.0.12 up", "UpsertBackend 3 198.18.0.13 up",
				"UpsertVIP 198.18.100.1:80/tcp dsr-l2",
				"UpsertBackend 4 198.18.0.17 up", "UpsertVIP 198.18.100.2:53/udp dsr-ipip",
				"SetTable 198.18.100.1:80/tcp [1:84 2:84 3:83]", "SetTable 198.18.100.2:53/udp [4:251]",
			},
		},
		{
			name:     "same state again writes nothing",
			services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1)), dns()},
			want:     nil,
		},
		{
			name:     "add a backend: its entry before the table, the other service untouched",
			services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1), bk(4, 1)), dns()},
			want:     []string{"UpsertBackend 5 198.18.0.14 up", "SetTable 198.18.100.1:80/tcp [1:63 2:63 3:63 5:62]"},
		},
		{
			name:     "drain: out of the table, entry kept up",
			services: []Service{web(bk(1, 1), bk(2, 0), bk(3, 1), bk(4, 1)), dns()},
			want:     []string{"SetTable 198.18.100.1:80/tcp [1:84 3:84 5:83]"},
		},
		{
			name:     "health down: entry marked down (pins not honoured), out of the table",
			services: []Service{web(bk(1, 1), bk(2, 0), bk(3, 1), bk(4, 1)), dns()},
			before:   func() { down[be(3)] = true },
			want:     []string{"UpsertBackend 3 198.18.0.13 down", "SetTable 198.18.100.1:80/tcp [1:126 5:125]"},
		},
		{
			name:     "remove a backend: the table stops referencing it, and no packet can use it, before its entry goes",
			services: []Service{web(bk(2, 0), bk(3, 1), bk(4, 1)), dns()},
			want:     []string{"SetTable 198.18.100.1:80/tcp [5:251]", "Sync", "DeleteBackend 1"},
		},
		{
			name:     "remove a service: VIP first, then (after running packets) its entries",
			services: []Service{web(bk(2, 0), bk(3, 1), bk(4, 1))},
			want:     []string{"DeleteVIP 198.18.100.2:53/udp", "Sync", "DeleteBackend 4"},
		},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		c.t = c.t.Add(time.Second)
		st := apply(s.services...)
		if len(st.Errors) != 0 {
			t.Errorf("%s: errors %+v", s.name, st.Errors)
		}
		if diff := cmp.Diff(s.want, dp.take()); diff != "" {
			t.Errorf("%s: writes (-want +got):\n%s", s.name, diff)
		}
	}
}

// TestReconcileFailedWrite fails the table write of a change: the writes made
// for it are undone, the error is reported, the service keeps its previous
// state, and the next Apply retries.
func TestReconcileFailedWrite(t *testing.T) {
	dp := &fakeDP{}
	r, c := newTestReconciler(dp, fakeNextHops{})
	ctx := context.Background()
	st := r.Apply(ctx, State{Services: []Service{web(bk(1, 1), bk(2, 1))}}, nil)
	if len(st.Errors) != 0 {
		t.Fatal(st.Errors)
	}
	dp.take()
	before := r.Status().VIPs

	dp.failOn = func(op string) bool { return strings.HasPrefix(op, "SetTable") }
	c.t = c.t.Add(time.Second)
	st = r.Apply(ctx, State{Services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1))}}, nil)
	wantOps := []string{"UpsertBackend 3 198.18.0.13 up", "SetTable 198.18.100.1:80/tcp [1:84 2:84 3:83] FAILED", "DeleteBackend 3"}
	if diff := cmp.Diff(wantOps, dp.take()); diff != "" {
		t.Errorf("writes of the failed apply (-want +got):\n%s", diff)
	}
	wantErr := []ServiceError{{Service: "web", VIP: "198.18.100.1:80/tcp", Err: "writing table: injected failure"}}
	if diff := cmp.Diff(wantErr, st.Errors); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, st.VIPs, addrCmp...); diff != "" {
		t.Errorf("status after the failure should show the previous state (-before +after):\n%s", diff)
	}

	dp.failOn = nil
	c.t = c.t.Add(time.Second)
	st = r.Apply(ctx, State{Services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1))}}, nil)
	if len(st.Errors) != 0 {
		t.Fatal(st.Errors)
	}
	// The id given back by the failed apply is not handed out at once.
	wantOps = []string{"UpsertBackend 4 198.18.0.13 up", "SetTable 198.18.100.1:80/tcp [1:84 2:84 4:83]"}
	if diff := cmp.Diff(wantOps, dp.take()); diff != "" {
		t.Errorf("writes of the retry (-want +got):\n%s", diff)
	}

	// A failure in the middle of a new service's backends removes what was
	// written and adds no VIP.
	dp.failOn = func(op string) bool { return op == "UpsertBackend 6 198.18.0.12 up" }
	st = r.Apply(ctx, State{Services: []Service{web(bk(1, 1), bk(2, 1), bk(3, 1)), {Name: "new", Addr: vip2, Proto: xdp.TCP, Ports: []uint16{443}, TableSize: 251, Backends: []Backend{bk(1, 1), bk(2, 1)}}}}, nil)
	wantOps = []string{"UpsertBackend 5 198.18.0.11 up", "UpsertBackend 6 198.18.0.12 up FAILED", "DeleteBackend 5"}
	if diff := cmp.Diff(wantOps, dp.take()); diff != "" {
		t.Errorf("writes of a failed new service (-want +got):\n%s", diff)
	}
	if len(st.Errors) != 1 || st.Errors[0].Service != "new" || len(st.VIPs) != 1 {
		t.Errorf("status = %+v, want one error for \"new\" and only web applied", st)
	}
}

// TestReconcileIDs checks that ids are stable while a backend exists and are
// not reused for another backend during the quarantine.
func TestReconcileIDs(t *testing.T) {
	dp := &fakeDP{}
	r, c := newTestReconciler(dp, fakeNextHops{})
	ctx := context.Background()
	ids := func() map[netip.Addr]uint32 {
		out := map[netip.Addr]uint32{}
		for _, v := range r.Status().VIPs {
			for _, b := range v.Backends {
				out[b.Addr.Addr()] = b.ID
			}
		}
		return out
	}
	r.Apply(ctx, State{Services: []Service{web(bk(1, 1), bk(2, 1))}}, nil)
	first := ids()
	c.t = c.t.Add(time.Second)
	r.Apply(ctx, State{Services: []Service{web(bk(2, 3))}}, nil) // backend 1 leaves, 2 changes weight
	if got := ids()[be(2)]; got != first[be(2)] {
		t.Errorf("backend 2 changed id from %d to %d", first[be(2)], got)
	}
	c.t = c.t.Add(time.Second)
	r.Apply(ctx, State{Services: []Service{web(bk(2, 3), bk(3, 1))}}, nil)
	if got := ids()[be(3)]; got == first[be(1)] {
		t.Errorf("new backend 3 got id %d of removed backend 1 within the quarantine", got)
	}
	// After the quarantine the id can be handed out again: churn through
	// more backends than there are ids.
	reused := false
	for round := 0; round < 30 && !reused; round++ {
		c.t = c.t.Add(2 * time.Minute)
		var bs []Backend
		for j := 0; j < 5; j++ {
			bs = append(bs, bk(50+round*5+j, 1))
		}
		r.Apply(ctx, State{Services: []Service{web(bs...)}}, nil)
		for _, id := range ids() {
			if id == first[be(1)] {
				reused = true
			}
		}
	}
	if !reused {
		t.Errorf("id %d of removed backend 1 never reused after the quarantine", first[be(1)])
	}
}

// TestReconcileStatus checks the snapshot: backends with id, weight, health
// and slots; an unresolvable backend is reported and gets no slots.
func TestReconcileStatus(t *testing.T) {
	dp := &fakeDP{}
	r, c := newTestReconciler(dp, fakeNextHops{fail: map[netip.Addr]bool{be(3): true}})
	st := r.Apply(context.Background(), State{Services: []Service{web(bk(1, 2), bk(2, 1), bk(3, 1))}}, func(k BackendKey) bool { return true })
	want := Status{
		LastApply: c.t,
		VIPs: []VIPStatus{{
			Key: xdp.VIPKey{Addr: vip1, Port: 80, Proto: xdp.TCP}, Service: "web", Mode: xdp.ModeDSRL2, TableSize: 251,
			Backends: []BackendStatus{
				{Addr: netip.AddrPortFrom(be(1), 0), ID: 1, Weight: 2, Healthy: true, Slots: 167},
				{Addr: netip.AddrPortFrom(be(2), 0), ID: 2, Weight: 1, Healthy: true, Slots: 84},
				{Addr: netip.AddrPortFrom(be(3), 0), ID: 3, Weight: 1, Healthy: true, Error: "no route to 198.18.0.13"},
			},
		}},
	}
	if diff := cmp.Diff(want, st, addrCmp...); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

// TestReconcileRecover gives a new reconciler what an earlier instance left in
// the datapath: the backends it still wants keep their entries (same id), a
// new one gets a fresh id, and the VIP and entries nothing wants are removed.
func TestReconcileRecover(t *testing.T) {
	dp := &fakeDP{}
	r, _ := newTestReconciler(dp, fakeNextHops{})
	keep := xdp.VIPKey{Addr: vip1, Port: 80, Proto: xdp.TCP}
	stale := xdp.VIPKey{Addr: vip2, Port: 53, Proto: xdp.UDP}
	ap := func(i int) netip.AddrPort { return netip.AddrPortFrom(be(i), 0) }
	r.Recover([]xdp.VIPKey{keep, stale}, map[uint32]xdp.Backend{
		5: {Addr: be(1), Owner: backendOwner(keep, ap(1))},
		6: {Addr: be(2), Owner: backendOwner(keep, ap(2))},
		9: {Addr: be(7), Owner: backendOwner(stale, ap(7))},
	})
	st := r.Apply(context.Background(), State{Services: []Service{web(bk(1, 1), bk(3, 1))}}, nil)
	if len(st.Errors) != 0 {
		t.Fatal(st.Errors)
	}
	want := []string{
		"DeleteVIP 198.18.100.2:53/udp",
		"UpsertBackend 5 198.18.0.11 up", // taken over: same id
		"UpsertBackend 1 198.18.0.13 up", // new: an id not in use
		"UpsertVIP 198.18.100.1:80/tcp dsr-l2",
		"SetTable 198.18.100.1:80/tcp [1:125 5:126]",
		"Sync", "DeleteBackend 6", "DeleteBackend 9",
	}
	if diff := cmp.Diff(want, dp.take()); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	// Nothing is left to take over: the same state writes nothing.
	r.Apply(context.Background(), State{Services: []Service{web(bk(1, 1), bk(3, 1))}}, nil)
	if ops := dp.take(); len(ops) != 0 {
		t.Errorf("second apply wrote %q", ops)
	}
}
