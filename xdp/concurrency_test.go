package xdp

// Map updates under traffic: table swaps and backend rewrites while packets
// run must never drop a packet nor send one anywhere but a backend of the old
// or the new set.

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
)

func ccBackend(id uint32, mtu int) Backend {
	return Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 8, byte(id)}), IfIndex: 1,
		NextHopMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x08, byte(id)}, SrcMAC: fxEgressMAC, MTU: mtu, Up: true}
}

// ccTraffic runs the frames through the program from two goroutines until ctx
// ends, and reports what went wrong (at most a few messages) and how many
// packets ran.
type ccTraffic struct {
	runs   atomic.Int64
	bad    atomic.Int64
	mu     sync.Mutex
	errors []string
}

func (c *ccTraffic) fail(format string, args ...any) {
	c.bad.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errors) < 10 {
		c.errors = append(c.errors, fmt.Sprintf(format, args...))
	}
}

func (c *ccTraffic) run(ctx context.Context, w *sync.WaitGroup, d *Datapath, frames [][]byte, allowed map[string]bool) {
	defer w.Done()
	out := make([]byte, 2048)
	for ctx.Err() == nil {
		for _, in := range frames {
			opts := &ebpf.RunOptions{Data: in, DataOut: out[:len(in)+256]}
			ret, err := d.Program().Run(opts)
			c.runs.Add(1)
			if err != nil {
				c.fail("run: %v", err)
				continue
			}
			if ret != fxTX {
				c.fail("verdict %s", fxVerdict(ret))
				continue
			}
			if mac := net.HardwareAddr(opts.DataOut[:6]).String(); !allowed[mac] {
				c.fail("sent to %s, not a backend of either set", mac)
			}
		}
	}
}

func ccFrames() [][]byte {
	var frames [][]byte
	for i := range 200 {
		port := uint16(30000 + i)
		flags := packet.TCPAck | packet.TCPPsh
		if i%3 == 0 {
			flags = packet.TCPSyn
		}
		var l packet.Layer
		if i%2 == 0 {
			l = fxIP(fxAP(netip.AddrFrom4([4]byte{198, 18, 9, byte(i)}), port), fxAP(netip.MustParseAddr("198.19.8.1"), 80), flags, []byte("data"))
		} else {
			l = fxIP(fxAP(netip.MustParseAddr(fmt.Sprintf("2001:db8:9::%x", i)), port), fxAP(netip.MustParseAddr("2001:db8:108::1"), 80), flags, []byte("data"))
		}
		frames = append(frames, fxIn(l, nil))
	}
	return frames
}

// ccMinRounds is the fewest update rounds ccRun runs, however long they take:
// a round waits for RCU grace periods (Sync, SetTable during a transition,
// rewriting a half in use moments ago), tens of milliseconds each on a loaded
// machine.
const ccMinRounds = 20

// ccRun runs traffic while update runs in a loop, for dur and at least
// ccMinRounds rounds, then checks.
func ccRun(t *testing.T, d *Datapath, dur time.Duration, allowedIDs []uint32, update func(i int) error) {
	t.Helper()
	allowed := map[string]bool{}
	for _, id := range allowedIDs {
		allowed[ccBackend(id, 0).NextHopMAC.String()] = true
	}
	before, _ := fxCounters(t, d)
	frames := ccFrames()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var tr ccTraffic
	var wg sync.WaitGroup
	wg.Add(2)
	go tr.run(ctx, &wg, d, frames[:100], allowed)
	go tr.run(ctx, &wg, d, frames[100:], allowed)

	updates := 0
	var updateErr error
	for end := time.Now().Add(dur); updates < ccMinRounds || time.Now().Before(end); updates++ {
		if updateErr = update(updates); updateErr != nil {
			break
		}
	}
	cancel()
	wg.Wait()
	if updateErr != nil {
		t.Fatalf("update %d: %v", updates, updateErr)
	}
	after, _ := fxCounters(t, d)
	t.Logf("%d packets, %d update rounds, %d pins created, %d pin hits, %d stale pins", tr.runs.Load(), updates,
		after["event/pin_created"]-before["event/pin_created"], after["event/pin_hit"]-before["event/pin_hit"],
		after["event/pin_stale"]-before["event/pin_stale"])
	if n := tr.bad.Load(); n > 0 {
		t.Errorf("%d of %d packets went wrong, first ones: %v", n, tr.runs.Load(), tr.errors)
	}
	if n := after["drop/no_backend"] - before["drop/no_backend"]; n != 0 {
		t.Errorf("drop/no_backend moved by %d", n)
	}
	if tr.runs.Load() < 1000 {
		t.Errorf("only %d packets in %d update rounds: the test proves little", tr.runs.Load(), updates)
	}
}

func TestUpdatesUnderTraffic(t *testing.T) {
	// Short grace periods so that transitions start and end during the run;
	// room for table ids held in quarantine.
	d := fxOpen(t, Options{MaxVIPs: 1024, TransitionGrace: 30 * time.Millisecond})
	vips := []VIPKey{
		{Addr: netip.MustParseAddr("198.19.8.1"), Port: 80, Proto: TCP},
		{Addr: netip.MustParseAddr("2001:db8:108::1"), Port: 80, Proto: TCP},
	}
	for i, k := range vips {
		mode := ModeDSRL2
		if k.Addr.Is6() {
			mode = ModeDSRIPIP // 6in4 toward the IPv4 backends
		}
		if err := d.UpsertVIP(k, VIP{Mode: mode, HashSeed: uint32(i + 7)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetEncapSource(fxEncap4, fxEncap6); err != nil {
		t.Fatal(err)
	}
	for id := uint32(1); id <= 5; id++ {
		if err := d.UpsertBackend(id, ccBackend(id, 0)); err != nil {
			t.Fatal(err)
		}
	}
	setAll := func(ids []uint32, seed uint64) error {
		for _, k := range vips {
			if err := d.SetTable(k, fxTable(251, ids, seed)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setAll([]uint32{1, 2, 3}, 0); err != nil {
		t.Fatal(err)
	}

	t.Run("table swaps and backend rewrites", func(t *testing.T) {
		sets := [][]uint32{{1, 2, 3}, {2, 3, 4}}
		ccRun(t, d, 2*time.Second, []uint32{1, 2, 3, 4}, func(i int) error {
			if err := setAll(sets[i%2], uint64(i)); err != nil {
				return err
			}
			// Rewrite every entry (the value is replaced as a whole).
			for id := uint32(1); id <= 4; id++ {
				if err := d.UpsertBackend(id, ccBackend(id, 1500*(i%2))); err != nil {
					return err
				}
			}
			// Drop every pin now and then, so that flows go back to the
			// tables (and get pinned again in the next transition).
			if i%2 == 1 {
				if _, err := d.Maintain(0); err != nil {
					return err
				}
			}
			return nil
		})
	})

	t.Run("backends added and removed in order", func(t *testing.T) {
		// 1 and 5 take turns: the entry is written before a table names it,
		// and deleted only after the table stops naming it and no packet
		// that saw the old table is still running (Sync), as the
		// reconciler does.
		if err := d.DeleteBackend(5); err != nil {
			t.Fatal(err)
		}
		ccRun(t, d, time.Second, []uint32{1, 2, 3, 4, 5}, func(i int) error {
			in, out := uint32(5), uint32(1)
			if i%2 == 1 {
				in, out = 1, 5
			}
			if err := d.UpsertBackend(in, ccBackend(in, 0)); err != nil {
				return err
			}
			if err := setAll([]uint32{in, 2, 3, 4}, uint64(i)); err != nil {
				return err
			}
			if err := d.Sync(); err != nil {
				return err
			}
			if err := d.DeleteBackend(out); err != nil {
				return err
			}
			if i%2 == 1 {
				if _, err := d.Maintain(0); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// TestTransitionsUnderTraffic swaps tables in a rotation A, B, C, A, ... with
// every slot moving each time and a grace period longer than the test, while
// packets of never-seen flows run. A packet sees the VIP's state before or
// after a swap, never a table being written: a non-SYN packet of a new flow
// goes to the previous table's backend, a SYN to the current one's if it was
// pinned there, else (the flow table is small and fills up) to the previous
// one's, where its flow's next packets will go. A table
// that is rewritten in place while packets still read it as the previous
// table shows up as a packet sent to the backend being written.
func TestTransitionsUnderTraffic(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour, MaxFlows: 4096})
	vip := VIPKey{Addr: netip.MustParseAddr("198.19.9.1"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(vip, VIP{Mode: ModeDSRL2, HashSeed: 99}); err != nil {
		t.Fatal(err)
	}
	macs := map[string]uint32{}
	for id := uint32(1); id <= 3; id++ {
		b := ccBackend(id, 0)
		macs[b.NextHopMAC.String()] = id
		if err := d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	// Table g names backend g%3+1 in every slot. State g is "current table g,
	// previous table g-1"; started and done bracket the swap to state g.
	backendOf := func(g int64) uint32 { return uint32(g%3) + 1 }
	var started, done atomic.Int64
	set := func(g int64) error {
		started.Store(g)
		err := d.SetTable(vip, fxFill(251, backendOf(g)))
		done.Store(g)
		return err
	}
	for g := int64(0); g <= 1; g++ {
		if err := set(g); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var tr ccTraffic
	var checked atomic.Int64
	var wg sync.WaitGroup
	for k := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, 512)
			for n := 1; ctx.Err() == nil; n++ {
				client := fxAP(netip.AddrFrom4([4]byte{198, 18, byte(10 + k), byte(n >> 16)}), uint16(n))
				flags := packet.TCPAck
				if n%4 == 0 {
					flags = packet.TCPSyn
				}
				in := fxIn(fxIP(client, fxAP(vip.Addr, vip.Port), flags, nil), nil)
				from := done.Load()
				opts := &ebpf.RunOptions{Data: in, DataOut: out[:len(in)+256]}
				ret, err := d.Program().Run(opts)
				to := started.Load()
				tr.runs.Add(1)
				if err != nil || ret != fxTX {
					tr.fail("%s: verdict %s, %v", client, fxVerdict(ret), err)
					continue
				}
				pinned := false
				if flags == packet.TCPSyn {
					if _, pinned, err = d.LookupFlow(client, fxAP(vip.Addr, vip.Port), TCP); err != nil {
						tr.fail("%s: %v", client, err)
						continue
					}
				}
				if to-from >= 2 {
					continue // every backend is possible
				}
				// The packet saw one of the states from..to.
				allowed := map[uint32]bool{}
				for s := from; s <= to; s++ {
					if pinned {
						allowed[backendOf(s)] = true
					} else {
						allowed[backendOf(s-1)] = true
					}
				}
				got := macs[net.HardwareAddr(opts.DataOut[:6]).String()]
				checked.Add(1)
				if !allowed[got] {
					tr.fail("%s (%v, pinned %v) during swaps %d..%d went to backend %d, want one of %v", client, flags, pinned, from, to, got, allowed)
				}
			}
		}()
	}
	g := int64(2)
	for ; ctx.Err() == nil; g++ {
		if err := set(g); err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("swap %d: %v", g, err)
		}
	}
	wg.Wait()
	t.Logf("%d swaps, %d packets, %d checked", g-2, tr.runs.Load(), checked.Load())
	if n := tr.bad.Load(); n > 0 {
		t.Errorf("%d of %d packets went wrong, first ones: %v", n, tr.runs.Load(), tr.errors)
	}
	if g-2 < 10 || checked.Load() < 1000 {
		t.Errorf("only %d swaps and %d checked packets: the test proves little", g-2, checked.Load())
	}
}

// TestBackendEntryWritesUnderTraffic deletes and re-creates a backend entry
// in a loop while packets keep reading it: during a transition whose previous
// table names it in every slot, every non-SYN packet of a flow without a pin
// looks the entry up (and pins to it, or follows its pin while the table has
// room). A packet must go to that backend or, when it finds no usable entry,
// to the current table's: never read an entry half deleted or half written.
func TestBackendEntryWritesUnderTraffic(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour, MaxFlows: 64})
	vip := VIPKey{Addr: netip.MustParseAddr("198.19.10.1"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(vip, VIP{Mode: ModeDSRL2, HashSeed: 5}); err != nil {
		t.Fatal(err)
	}
	const x, y = uint32(1), uint32(2)
	allowed := map[string]bool{}
	for _, id := range []uint32{x, y} {
		b := ccBackend(id, 0)
		allowed[b.NextHopMAC.String()] = true
		if err := d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	// Every slot moved from x to y moments ago.
	if err := d.SetTable(vip, fxFill(251, x)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(vip, fxFill(251, y)); err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for i := range 200 {
		client := fxAP(netip.AddrFrom4([4]byte{198, 18, 10, byte(i)}), uint16(20000+i))
		frames = append(frames, fxIn(fxIP(client, fxAP(vip.Addr, vip.Port), packet.TCPAck, nil), nil))
	}
	before, _ := fxCounters(t, d)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var tr ccTraffic
	var wg sync.WaitGroup
	wg.Add(1)
	go tr.run(ctx, &wg, d, frames, allowed)
	rounds := 0
	for end := time.Now().Add(2 * time.Second); rounds < ccMinRounds || time.Now().Before(end); rounds++ {
		err := d.DeleteBackend(x)
		if err == nil {
			err = d.UpsertBackend(x, ccBackend(x, 0))
		}
		if err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("round %d: %v", rounds, err)
		}
	}
	cancel()
	wg.Wait()
	after, _ := fxCounters(t, d)
	t.Logf("%d packets, %d rounds of delete and re-create, %d pin hits, %d stale pins", tr.runs.Load(), rounds,
		after["event/pin_hit"]-before["event/pin_hit"], after["event/pin_stale"]-before["event/pin_stale"])
	if n := tr.bad.Load(); n > 0 {
		t.Errorf("%d of %d packets went wrong, first ones: %v", n, tr.runs.Load(), tr.errors)
	}
	for _, c := range []string{"drop/no_backend", "drop/redirect_failed"} {
		if n := after[c] - before[c]; n != 0 {
			t.Errorf("%s moved by %d", c, n)
		}
	}
	if tr.runs.Load() < 1000 {
		t.Errorf("only %d packets in %d rounds: the test proves little", tr.runs.Load(), rounds)
	}
}
