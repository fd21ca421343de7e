package xdp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestPinFilter checks the filter in front of the flow tables: a pin the
// program makes sets its flow's bit in both halves; the flow follows its pin
// through a Maintain that rebuilds the filter; once the pin expires, the
// rebuilt half packets read no longer has the bit.
func TestPinFilter(t *testing.T) {
	testnet.RequirePrivileged(t)
	d, err := Open(Options{PinPath: NoPin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 64, TransitionGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	k := VIPKey{Addr: netip.MustParseAddr("198.18.100.9"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 42}); err != nil {
		t.Fatal(err)
	}
	mac := func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, i} }
	table := func(id uint32) []uint32 {
		t := make([]uint32, 251)
		for i := range t {
			t[i] = id
		}
		return t
	}
	for id := uint32(1); id <= 2; id++ {
		if err := d.UpsertBackend(id, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + id)}), IfIndex: 1, NextHopMAC: mac(byte(id)), SrcMAC: mac(0xee), Up: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetTable(k, table(1)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(k, table(2)); err != nil { // a transition: the ACK below is pinned to 1
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("198.18.0.10:40000")
	frame := packet.MustBuild(packet.Ethernet{Src: mac(0xa), Dst: mac(0xee), Payload: packet.IPv4{
		Src: src.Addr(), Dst: k.Addr, TTL: 64, Payload: packet.TCP{SrcPort: src.Port(), DstPort: 80, Flags: packet.TCPAck}}})
	send := func() byte {
		t.Helper()
		ret, out, err := d.Program().Test(frame)
		if err != nil || ret != 3 {
			t.Fatalf("verdict %d, %v", ret, err)
		}
		return out[5]
	}
	if got := send(); got != 1 {
		t.Fatalf("the established flow went to backend %d, want 1 (its previous table's)", got)
	}
	hash := FlowHash(src, netip.AddrPortFrom(k.Addr, 80), TCP, 42)
	isSet := func(half uint32) bool { return d.pinFilter.has(half, hash) }
	if !isSet(0) || !isSet(1) {
		t.Fatalf("the pin's filter bit: half 0 %v, half 1 %v; want both set", isSet(0), isSet(1))
	}

	// Maintain rebuilds the filter: the flow keeps its pin.
	if _, err := d.Maintain(time.Hour); err != nil {
		t.Fatal(err)
	}
	if active := d.settings.PinFilter; !isSet(active) {
		t.Errorf("after Maintain, the half packets read (%d) lost the pin's bit", active)
	}
	if got := send(); got != 1 {
		t.Errorf("after Maintain the pinned flow went to backend %d, want 1", got)
	}
	if v4, v6 := d.FlowCounts(); v4 != 1 || v6 != 0 {
		t.Errorf("FlowCounts after Maintain = %d, %d; want 1 IPv4 pin", v4, v6)
	}

	// The pin expires: the rebuilt half has no bit for it.
	d.nowMono = func() time.Duration { return monotonicNow() + 2*time.Hour }
	res, err := d.Maintain(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 1 {
		t.Fatalf("Maintain expired %d pins, want 1", res.Expired)
	}
	if v4, v6 := d.FlowCounts(); v4 != 0 || v6 != 0 {
		t.Errorf("FlowCounts after the expiry = %d, %d; want none", v4, v6)
	}
	if active := d.settings.PinFilter; isSet(active) {
		t.Errorf("after the pin expired, the half packets read (%d) still has its bit", active)
	}
}

// pfWorld is a datapath whose two VIPs (one per family) moved every slot
// from backend 1 to backend 2 moments ago: the first packet of a flow (not a
// SYN) pins it to 1.
type pfWorld struct {
	d    *Datapath
	vips []VIPKey
	macs map[string]uint32
}

func newPFWorld(t *testing.T, maxFlows int) *pfWorld {
	t.Helper()
	w := &pfWorld{
		d: fxOpen(t, Options{MaxFlows: maxFlows, TransitionGrace: time.Hour}),
		vips: []VIPKey{
			{Addr: netip.MustParseAddr("198.19.11.1"), Port: 80, Proto: TCP},
			{Addr: netip.MustParseAddr("2001:db8:111::1"), Port: 80, Proto: TCP},
		},
		macs: map[string]uint32{},
	}
	for id := uint32(1); id <= 3; id++ {
		b := ccBackend(id, 0)
		w.macs[b.NextHopMAC.String()] = id
		if err := w.d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range w.vips {
		if err := w.d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 11}); err != nil {
			t.Fatal(err)
		}
	}
	w.setAll(t, 1)
	w.setAll(t, 2)
	return w
}

func (w *pfWorld) setAll(t *testing.T, id uint32) {
	t.Helper()
	for _, k := range w.vips {
		if err := w.d.SetTable(k, fxFill(251, id)); err != nil {
			t.Fatal(err)
		}
	}
}

// flow is the n-th flow (of either family).
func (w *pfWorld) flow(n int) (src, dst netip.AddrPort) {
	k := w.vips[n%2]
	src = fxAP(netip.AddrFrom4([4]byte{198, 18, 11, byte(n >> 16)}), uint16(n))
	if k.Addr.Is6() {
		src = fxAP(netip.MustParseAddr(fmt.Sprintf("2001:db8:11::%x", n>>16)), uint16(n))
	}
	return src, fxAP(k.Addr, k.Port)
}

// send runs an ACK of flow n and returns the backend it went to (0: none).
func (w *pfWorld) send(n int) (uint32, error) {
	src, dst := w.flow(n)
	in := fxIn(fxIP(src, dst, packet.TCPAck, nil), nil)
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := w.d.Program().Run(opts)
	if err != nil {
		return 0, err
	}
	if ret != fxTX {
		return 0, fmt.Errorf("flow %s: verdict %s", src, fxVerdict(ret))
	}
	return w.macs[net.HardwareAddr(opts.DataOut[:6]).String()], nil
}

// check verifies that every pin has its bit in the half of the filter
// packets read, and, after one more table change (every slot to 3, the
// previous table naming 2), that every pinned flow still goes to its pin's
// backend.
func (w *pfWorld) check(t *testing.T) {
	t.Helper()
	seed := map[netip.Addr]uint32{}
	for _, k := range w.vips {
		seed[k.Addr] = 11
	}
	active := w.d.settings.PinFilter
	var flows []Flow
	if err := w.d.Flows(func(f Flow) bool { flows = append(flows, f); return true }); err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, f := range flows {
		if !w.d.pinFilter.has(active, FlowHash(f.Src, f.Dst, f.Proto, seed[f.Dst.Addr()])) {
			if missing++; missing <= 5 {
				t.Errorf("pin of %s -> %s (backend %d): its bit is clear in the half packets read", f.Src, f.Dst, f.BackendID)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d pins have no bit in the filter", missing, len(flows))
	}
	w.setAll(t, 3)
	byPort := map[netip.AddrPort]uint32{}
	for _, f := range flows {
		byPort[f.Src] = f.BackendID
	}
	astray := 0
	for n := 0; n < 1<<20 && len(byPort) > 0; n++ {
		src, _ := w.flow(n)
		want, ok := byPort[src]
		if !ok {
			continue
		}
		delete(byPort, src)
		got, err := w.send(n)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			if astray++; astray <= 5 {
				t.Errorf("flow %s pinned to backend %d went to %d", src, want, got)
			}
		}
	}
	if astray > 0 {
		t.Errorf("%d of %d pinned flows did not follow their pin", astray, len(flows))
	}
	if len(flows) == 0 {
		t.Error("no pins: the test proves nothing")
	}
}

// TestPinFilterKeepsPinsMadeDuringMaintain makes pins while Maintain walks
// the flow tables and rebuilds the pin filter: none may lose its bit, or its
// flow would skip the flow lookup and go by the table.
func TestPinFilterKeepsPinsMadeDuringMaintain(t *testing.T) {
	// Pins made right after Maintain walked the flow tables: the walk did
	// not see them, so only their own bits keep them visible.
	t.Run("after the walk", func(t *testing.T) {
		w := newPFWorld(t, 1024)
		for n := range 10 {
			if got, err := w.send(n); err != nil || got != 1 {
				t.Fatalf("flow %d went to %d (%v), want 1", n, got, err)
			}
		}
		made := 0
		w.d.afterFlowWalk = func() {
			for n := 10; n < 110; n++ {
				if got, err := w.send(n); err != nil || got != 1 {
					t.Errorf("flow %d went to %d (%v), want 1", n, got, err)
				}
				made++
			}
		}
		if _, err := w.d.Maintain(time.Hour); err != nil {
			t.Fatal(err)
		}
		w.d.afterFlowWalk = nil
		if v4, v6 := w.d.FlowCounts(); made != 100 || v4+v6 != 10 {
			t.Fatalf("%d flows sent during Maintain, %d pins counted by it; want 100 and the 10 from before", made, v4+v6)
		}
		w.check(t)
	})

	// Pins made all the time while Maintain runs in a loop, expiring most
	// pins, so that flows keep pinning again.
	t.Run("concurrently", func(t *testing.T) {
		const flows = 5000
		w := newPFWorld(t, 2*flows)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var sent atomic.Int64
		var sendErr atomic.Value
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n = (n + 1) % flows {
				if _, err := w.send(n); err != nil {
					sendErr.Store(err)
					return
				}
				sent.Add(1)
			}
		}()
		var expired int
		for range 20 {
			// Let flows pin again between two runs, however the
			// goroutines are scheduled.
			for from := sent.Load(); sent.Load() < from+1000 && sendErr.Load() == nil; {
				time.Sleep(time.Millisecond)
			}
			res, err := w.d.Maintain(0)
			if err != nil {
				cancel()
				wg.Wait()
				t.Fatal(err)
			}
			expired += res.Expired
		}
		// Pins made after the last Maintain, for the check to look at
		// (under load the sender may not have run since).
		for from := sent.Load(); sent.Load() < from+100 && sendErr.Load() == nil; {
			time.Sleep(time.Millisecond)
		}
		cancel()
		wg.Wait()
		if err := sendErr.Load(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d packets, %d pins expired by 20 Maintains", sent.Load(), expired)
		w.check(t)
	})
}

// TestMaintainKeepsRenewedPins: a pin Maintain's walk found stale (its
// backend went down) that the program replaced before Maintain removed it
// stays: the flow's next packets follow the new pin.
func TestMaintainKeepsRenewedPins(t *testing.T) {
	testnet.RequirePrivileged(t)
	w := newPFWorld(t, 1000)
	for n := range 10 {
		if got, err := w.send(n); err != nil || got != 1 {
			t.Fatalf("flow %d went to %d (%v), want 1 (the previous table's)", n, got, err)
		}
	}
	down := ccBackend(1, 0)
	down.Up = false
	if err := w.d.UpsertBackend(1, down); err != nil {
		t.Fatal(err)
	}
	w.d.afterFlowWalk = func() {
		// Each flow's next packet finds its pin stale and pins the flow
		// to the current table's backend.
		for n := range 10 {
			if got, err := w.send(n); err != nil || got != 2 {
				t.Errorf("flow %d went to %d (%v), want 2", n, got, err)
			}
		}
	}
	res, err := w.d.Maintain(time.Hour)
	w.d.afterFlowWalk = nil
	if err != nil {
		t.Fatal(err)
	}
	if res.Stale != 10 || res.Renewed != 10 {
		t.Errorf("Maintain: %+v, want 10 stale, all 10 renewed", res)
	}
	for n := range 10 {
		src, dst := w.flow(n)
		id, ok, err := w.d.LookupFlow(src, dst, TCP)
		if err != nil || !ok || id != 2 {
			t.Errorf("flow %d after Maintain: pinned %v to %d (%v), want pinned to 2", n, ok, id, err)
		}
	}
}
