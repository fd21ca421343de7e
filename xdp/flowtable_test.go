package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestFlowTableBuckets: keys of one home bucket fill it, then overflow into
// the next buckets (counted in the home's ovf, wrapping at the table's end),
// are found there and removed from there; a full window refuses a key.
func TestFlowTableBuckets(t *testing.T) {
	tb := newFlowTable(16, pin4Geom)
	key := func(i uint32) []uint32 { return []uint32{i, 2, 3} }
	const home = 14 // its window of ftProbe buckets wraps: 14, 15, 0, ...
	for i := uint32(0); i < 2*ftProbe; i++ {
		if err := tb.insert(home, key(i), 6, []uint32{100 + i, 0}, false); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		r, ok := tb.find(home, key(i), 6)
		if want := (home + i/2) % 16; !ok || r.bucket != want {
			t.Fatalf("key %d: found %v in bucket %d, want bucket %d", i, ok, r.bucket, want)
		}
	}
	if got := *tb.word(home, 0); got != 2*ftProbe-2 {
		t.Errorf("home ovf %d, want %d", got, 2*ftProbe-2)
	}
	if err := tb.insert(home, key(99), 6, []uint32{1, 0}, false); !errors.Is(err, ErrFull) {
		t.Errorf("insert into a full window: %v, want ErrFull", err)
	}
	if err := tb.insert(home, key(3), 6, []uint32{1, 0}, false); !errors.Is(err, errFTExists) {
		t.Errorf("insert of a key there: %v, want errFTExists", err)
	}
	if _, ok := tb.find(home, key(3), 17); ok {
		t.Errorf("key found under another tag")
	}
	// A key of the next home goes past the full buckets, to the last of its
	// window, and counts in its own home's ovf.
	if err := tb.insert(home+1, key(200), 6, []uint32{1, 0}, false); err != nil {
		t.Fatal(err)
	}
	if r, ok := tb.find(home+1, key(200), 6); !ok || r.bucket != (home+ftProbe)%16 || *tb.word(home+1, 0) != 1 {
		t.Errorf("key of the next home: found %v in bucket %d (ovf %d), want bucket %d (ovf 1)", ok, r.bucket, *tb.word(home+1, 0), (home+ftProbe)%16)
	}
	// Replace, then a delete that read the entry before the replace fails.
	r, _ := tb.find(home, key(5), 6)
	r.home = home
	if err := tb.insert(home, key(5), 6, []uint32{555, 0}, true); err != nil {
		t.Fatal(err)
	}
	if tb.delete(r) || !tb.live(r) {
		t.Errorf("a delete of an entry replaced since succeeded")
	}
	val := make([]uint32, 2)
	if r, _ = tb.find(home, key(5), 6); !tb.value(r, val) || val[0] != 555 {
		t.Errorf("replaced value %d, want 555", val[0])
	}
	// Deleting every displaced key of the home brings its ovf back to 0;
	// its own keys stay.
	for i := uint32(2); i < 2*ftProbe; i++ {
		r, ok := tb.find(home, key(i), 6)
		r.home = home
		if !ok || !tb.delete(r) {
			t.Fatalf("deleting key %d failed", i)
		}
		if tb.live(r) {
			t.Fatalf("key %d still live", i)
		}
	}
	if got := *tb.word(home, 0); got != 0 {
		t.Errorf("home ovf %d after the deletes, want 0", got)
	}
	n := 0
	tb.walk(func(r ftRef, tag uint32, w []uint32) bool { n++; return true })
	if n != 3 {
		t.Errorf("walk found %d entries, want 3", n)
	}
}

// onCPU runs fn on a goroutine locked to an OS thread bound to cpu.
func onCPU(cpu int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("binding to CPU %d: %w", cpu, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// TestConcurrentPins runs the program on two CPUs at once, each pinning
// flows both CPUs see (the same new flows, raced) and flows of its own, while
// Maintain expires pins made idle beforehand: afterwards every flow is pinned
// exactly once, to the previous table's backend, every idle pin is gone, no
// live one is, and the counters are exact (a pin that gave up at a bucket the
// other CPU held is counted pin_bucket_busy, never pin_table_full).
func TestConcurrentPins(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs")
	}
	d := fxOpen(t, Options{TransitionGrace: time.Hour, MaxFlows: 1 << 14})
	for _, fam := range []string{"IPv4", "IPv6"} {
		t.Run(fam, func(t *testing.T) {
			vip := VIPKey{Addr: netip.MustParseAddr("198.19.9.1"), Port: 80, Proto: TCP}
			client := func(k, n int) netip.AddrPort {
				return fxAP(netip.AddrFrom4([4]byte{198, 18, byte(10 + k), byte(n >> 8)}), uint16(n))
			}
			if fam == "IPv6" {
				vip.Addr = netip.MustParseAddr("2001:db8::9:1")
				client = func(k, n int) netip.AddrPort {
					return fxAP(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(10 + k), 14: byte(n >> 8)}), uint16(n))
				}
			}
			if err := d.UpsertVIP(vip, VIP{Mode: ModeDSRL2, HashSeed: 99}); err != nil {
				t.Fatal(err)
			}
			for id := uint32(1); id <= 2; id++ {
				if err := d.UpsertBackend(id, ccBackend(id, 0)); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range []uint32{1, 2} { // every slot moves from 1 to 2
				if err := d.SetTable(vip, fxFill(251, id)); err != nil {
					t.Fatal(err)
				}
			}
			// Idle pins, to be expired while the CPUs pin.
			const idle = 500
			for n := range idle {
				f := Flow{Src: client(3, n), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP, BackendID: 1, Idle: time.Hour}
				if err := d.PinFlow(f); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := fxCounters(t, d)
			const shared, own = 1000, 1000
			// run sends one packet of each flow cpu sees: the shared ones,
			// then its own.
			run := func(cpu int) error {
				out := make([]byte, 512)
				for n := range shared + own {
					c := client(0, n) // shared
					if n >= shared {
						c = client(1+cpu, n)
					}
					in := fxIn(fxIP(c, fxAP(vip.Addr, vip.Port), packet.TCPAck, nil), nil)
					ret, err := d.Program().Run(&ebpf.RunOptions{Data: in, DataOut: out[:len(in)+256]})
					if err != nil || ret != fxTX {
						return fmt.Errorf("CPU %d, %s: verdict %s, %v", cpu, c, fxVerdict(ret), err)
					}
				}
				return nil
			}
			var cpus, maint sync.WaitGroup
			errs := make([]error, 3)
			expired := 0
			done := make(chan struct{})
			for cpu := range 2 {
				cpus.Add(1)
				go func() { defer cpus.Done(); errs[cpu] = onCPU(cpu, func() error { return run(cpu) }) }()
			}
			maint.Add(1)
			go func() {
				defer maint.Done()
				for {
					res, err := d.Maintain(30 * time.Minute)
					if err != nil {
						errs[2] = err
						return
					}
					expired += res.Expired
					select {
					case <-done:
						return
					default:
					}
				}
			}()
			cpus.Wait()
			close(done)
			maint.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			res, err := d.Maintain(30 * time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			expired += res.Expired
			if expired != idle {
				t.Errorf("%d pins expired, want the %d idle ones", expired, idle)
			}
			// A CPU gives up at a bucket the other kept locked for 2,048
			// tries (on a loaded VM, its vCPU can be descheduled holding
			// the lock): that flow is counted pin_bucket_busy and stays
			// unpinned unless the other CPU was pinning it. One more
			// packet of every flow, one at a time, pins those and
			// follows the others' pins.
			raced, _ := fxCounters(t, d)
			busy := raced["event/pin_bucket_busy"] - before["event/pin_bucket_busy"]
			for cpu := range 2 {
				if err := run(cpu); err != nil {
					t.Fatal(err)
				}
			}
			after, _ := fxCounters(t, d)
			if busy > 0 {
				t.Logf("%d pins gave up at a bucket the other CPU held", busy)
			}
			if got, want := raced["event/pin_created"]-before["event/pin_created"], uint64(shared+2*own); got > want || got+busy < want {
				t.Errorf("event/pin_created moved by %d while the CPUs raced (%d busy), want %d", got, busy, want)
			}
			if got, want := after["event/pin_created"]-before["event/pin_created"], uint64(shared+2*own); got != want {
				t.Errorf("event/pin_created moved by %d, want %d", got, want)
			}
			if got := after["event/pin_bucket_busy"] - raced["event/pin_bucket_busy"]; got != 0 {
				t.Errorf("event/pin_bucket_busy moved by %d on one CPU, want 0", got)
			}
			if got := after["event/pin_table_full"] - before["event/pin_table_full"]; got != 0 {
				t.Errorf("event/pin_table_full moved by %d, want 0", got)
			}
			seen := map[Flow]int{}
			if err := d.Flows(func(f Flow) bool {
				if f.Dst.Addr() != vip.Addr {
					return true
				}
				f.Idle = 0
				seen[f]++
				return true
			}); err != nil {
				t.Fatal(err)
			}
			want := map[Flow]int{}
			for k := range 3 {
				for n := range shared + own {
					if k == 0 && n >= shared || k > 0 && n < shared {
						continue
					}
					want[Flow{Src: client(k, n), Dst: fxAP(vip.Addr, vip.Port), Proto: TCP, BackendID: 1}] = 1
				}
			}
			for f, n := range seen {
				if want[f] != n {
					t.Errorf("flow %s -> %s to %d: %d pins, want %d", f.Src, f.Dst, f.BackendID, n, want[f])
				}
			}
			for f := range want {
				if seen[f] == 0 {
					t.Errorf("flow %s -> %s lost its pin", f.Src, f.Dst)
				}
			}
			if err := d.DeleteVIP(vip); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestUpgradeCopiesOldPins: the pins of an earlier release's ct4 and ct6
// hash maps, found pinned at open, are copied into the flow tables, their
// flows go to their pinned backends, and the old maps' pins are removed.
func TestUpgradeCopiesOldPins(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	opts := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128, TransitionGrace: time.Hour}
	d, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	vip4 := VIPKey{Addr: netip.MustParseAddr("198.18.100.1"), Port: 80, Proto: TCP}
	vip6 := VIPKey{Addr: netip.MustParseAddr("2001:db8::100:1"), Port: 80, Proto: TCP}
	for id := uint32(1); id <= 2; id++ {
		if err := d.UpsertBackend(id, ccBackend(id, 0)); err != nil {
			t.Fatal(err)
		}
	}
	src4, src6 := netip.MustParseAddrPort("198.18.0.10:40000"), netip.MustParseAddrPort("[2001:db8::10]:40000")
	for _, v := range []struct {
		k   VIPKey
		src netip.AddrPort
	}{{vip4, src4}, {vip6, src6}} {
		if err := d.UpsertVIP(v.k, VIP{Mode: ModeDSRL2, HashSeed: 7}); err != nil {
			t.Fatal(err)
		}
		if err := d.SetTable(v.k, fxFill(251, 1)); err != nil {
			t.Fatal(err)
		}
		// What the earlier program did when it pinned the flow: the
		// VIP's flag and the flow's filter bit (the pin itself is in
		// the old maps below).
		f := Flow{Src: v.src, Dst: fxAP(v.k.Addr, v.k.Port), Proto: TCP, BackendID: 2}
		if err := d.PinFlow(f); err != nil {
			t.Fatal(err)
		}
		key, tag, hash := pinKey(f)
		r, _ := d.pinTable(v.src.Addr().Is6()).find(hash, key, tag)
		r.home = hash & d.pinTable(v.src.Addr().Is6()).mask
		d.pinTable(v.src.Addr().Is6()).delete(r)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The earlier release's maps, with the pins.
	now := uint64(monotonicNow())
	for _, m := range []struct {
		name string
		key  any
		size uint32
	}{
		{"ct4", lbFlow4{Saddr: leUint32(src4.Addr().AsSlice()), Daddr: leUint32(vip4.Addr.AsSlice()), Sport: port(src4.Port()), Dport: port(80), Proto: 6}, 16},
		{"ct6", lbFlow6{Saddr: src6.Addr().As16(), Daddr: vip6.Addr.As16(), Sport: port(src6.Port()), Dport: port(80), Proto: 6}, 40},
	} {
		old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: m.name, Type: ebpf.Hash, KeySize: m.size, ValueSize: 16, MaxEntries: 128, Pinning: ebpf.PinByName},
			ebpf.MapOptions{PinPath: pin})
		if err != nil {
			t.Fatal(err)
		}
		if err := old.Put(m.key, lbCtValue{BackendId: 2, LastSeen: now}); err != nil {
			t.Fatal(err)
		}
		old.Close()
	}

	d, err = Open(opts)
	if err != nil {
		t.Fatalf("opening over an earlier release's pins: %v", err)
	}
	defer func() {
		if err := d.Unpin(); err != nil {
			t.Error(err)
		}
		d.Close()
	}()
	for _, name := range []string{"ct4", "ct6"} {
		if _, err := os.Stat(filepath.Join(pin, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still pinned: %v", name, err)
		}
	}
	for _, c := range []struct {
		src netip.AddrPort
		vip VIPKey
	}{{src4, vip4}, {src6, vip6}} {
		dst := fxAP(c.vip.Addr, c.vip.Port)
		if id, ok, err := d.LookupFlow(c.src, dst, TCP); err != nil || !ok || id != 2 {
			t.Errorf("%s -> %s after the upgrade: backend %d, pinned %v, %v; want 2", c.src, dst, id, ok, err)
		}
		in := fxIn(fxIP(c.src, dst, packet.TCPAck, nil), nil)
		opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
		ret, err := d.Program().Run(&opts)
		if err != nil || ret != fxTX {
			t.Fatalf("%s: verdict %s, %v", c.src, fxVerdict(ret), err)
		}
		if got, want := opts.DataOut[5], byte(2); got != want {
			t.Errorf("%s -> %s went to backend %d, want its pinned %d", c.src, dst, got, want)
		}
	}
	// A second open finds nothing left to copy.
	d.Close()
	if d, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	if id, ok, err := d.LookupFlow(src4, fxAP(vip4.Addr, 80), TCP); err != nil || !ok || id != 2 {
		t.Errorf("after a second open: backend %d, pinned %v, %v; want 2", id, ok, err)
	}
}
