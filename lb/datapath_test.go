package lb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// TestReconcileRealDatapath reconciles into the real program and checks, for
// 1,000 5-tuples per family after each change, that every packet lands on the
// backend a Maglev table built here independently predicts
// (table[Slot(FlowHash, M)]).
func TestReconcileRealDatapath(t *testing.T) {
	testnet.RequirePrivileged(t)
	// No grace period: UDP packets (no SYN) of flows whose slot moved would
	// otherwise be pinned to their previous backend, as they should.
	dp, err := xdp.Open(xdp.Options{PinPath: xdp.NoPin, MaxVIPs: 16, MaxBackends: 256, MaxFlows: 1024, TransitionGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	nh := fakeNextHops{}
	r := NewReconciler(dp, loopbackNextHops{nh}, Options{MaxBackends: 256})
	var seed [16]byte
	copy(seed[:], "fleet seed 12345")
	vip4, vip6 := netip.MustParseAddr("198.18.100.1"), netip.MustParseAddr("2001:db8:100::1")
	backends := func(ids ...int) []Backend {
		var out []Backend
		for _, i := range ids {
			out = append(out, Backend{Addr: be(i), Weight: uint32(1 + i%3)})
		}
		return out
	}
	states := []struct {
		name string
		ids  []int
	}{
		{"five backends", []int{1, 2, 3, 4, 5}},
		{"one removed, one added", []int{1, 2, 4, 5, 6}},
		{"weights and a new one", []int{1, 2, 4, 5, 6, 7, 8}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range states {
		state := State{Seed: seed, Services: []Service{
			{Name: "v4", Addr: vip4, Proto: xdp.TCP, Ports: []uint16{443}, Mode: xdp.ModeDSRL2, TableSize: 1021, Backends: backends(s.ids...)},
			{Name: "v6", Addr: vip6, Proto: xdp.UDP, Ports: []uint16{0}, Mode: xdp.ModeDSRL2, TableSize: 2039, Backends: backends(s.ids...)},
		}}
		st := r.Apply(context.Background(), state, nil)
		if len(st.Errors) > 0 {
			t.Fatalf("%s: %+v", s.name, st.Errors)
		}
		for _, v := range st.VIPs {
			// The prediction: a table built from the status's ids.
			var mb []MaglevBackend
			macOf := map[uint32]string{}
			for _, b := range v.Backends {
				mb = append(mb, MaglevBackend{ID: b.ID, Addr: b.Addr, Weight: b.Weight})
				hop, _ := nh.Resolve(context.Background(), b.Addr.Addr())
				macOf[b.ID] = hop.MAC.String()
			}
			table, err := BuildMaglev(seed, v.TableSize, mb)
			if err != nil {
				t.Fatal(err)
			}
			misses := 0
			for i := 0; i < 1000; i++ {
				var client netip.Addr
				var frame []byte
				sport := uint16(1024 + rng.IntN(60000))
				dport := v.Key.Port
				if dport == 0 {
					dport = uint16(1 + rng.IntN(65535))
				}
				if v.Key.Addr.Is4() {
					client = netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(256)), byte(rng.IntN(256))})
					frame = packet.MustBuild(packet.Ethernet{Src: net.HardwareAddr{2, 0, 0, 0, 0, 0xa}, Dst: net.HardwareAddr{2, 0, 0, 0, 0, 2},
						Payload: packet.IPv4{Src: client, Dst: v.Key.Addr, TTL: 64, Payload: packet.TCP{SrcPort: sport, DstPort: dport, Flags: packet.TCPSyn}}})
				} else {
					var a [16]byte
					copy(a[:], netip.MustParseAddr("2001:db8:5::").AsSlice())
					a[14], a[15] = byte(rng.IntN(256)), byte(rng.IntN(256))
					a[10] = byte(rng.IntN(256))
					client = netip.AddrFrom16(a)
					frame = packet.MustBuild(packet.Ethernet{Src: net.HardwareAddr{2, 0, 0, 0, 0, 0xa}, Dst: net.HardwareAddr{2, 0, 0, 0, 0, 2},
						Payload: packet.IPv6{Src: client, Dst: v.Key.Addr, HopLimit: 64, Payload: packet.UDP{SrcPort: sport, DstPort: dport, Payload: []byte("q")}}})
				}
				verdict, out, err := dp.Program().Test(frame)
				if err != nil {
					t.Fatal(err)
				}
				h := xdp.FlowHash(netip.AddrPortFrom(client, sport), netip.AddrPortFrom(v.Key.Addr, dport), v.Key.Proto, HashSeed(seed))
				want := macOf[table[xdp.Slot(h, len(table))]]
				if got := net.HardwareAddr(out[:6]).String(); verdict != 3 || got != want {
					if misses++; misses <= 5 {
						t.Errorf("%s: %s %s:%d -> %s:%d: verdict %d to %s, want XDP_TX to %s", s.name, v.Key, client, sport, v.Key.Addr, dport, verdict, got, want)
					}
				}
			}
			if misses > 0 {
				t.Errorf("%s: %s: %d of 1000 packets not on the predicted backend", s.name, v.Key, misses)
			}
		}
	}
}

// loopbackNextHops puts every backend behind ifindex 1, the ingress of
// BPF_PROG_TEST_RUN, so that the program answers XDP_TX.
type loopbackNextHops struct{ NextHops }

func (l loopbackNextHops) Resolve(ctx context.Context, a netip.Addr) (xdp.NextHop, error) {
	nh, err := l.NextHops.Resolve(ctx, a)
	nh.IfIndex = 1
	return nh, err
}

// BenchmarkReconcileScale applies 1,000 VIPs × 100 backends from cold to the
// real datapath, then adds one backend to one VIP, and reports the maps'
// memory.
func BenchmarkReconcileScale(b *testing.B) {
	testnet.RequirePrivileged(b)
	const vips, perVIP = 1000, 100
	var cold, add []time.Duration
	var mem map[string]uint64
	for i := 0; i < b.N; i++ {
		dp, err := xdp.Open(xdp.Options{PinPath: xdp.NoPin, MaxVIPs: 1024, MaxBackends: 1 << 17, MaxFlows: 1 << 16})
		if err != nil {
			b.Fatal(err)
		}
		r := NewReconciler(dp, loopbackNextHops{fakeNextHops{}}, Options{MaxBackends: 1 << 17})
		state := State{}
		for v := 0; v < vips; v++ {
			s := Service{Name: fmt.Sprintf("svc%d", v), Addr: netip.AddrFrom4([4]byte{198, 19, byte(v >> 8), byte(v)}), Proto: xdp.TCP, Ports: []uint16{80}, Mode: xdp.ModeDSRL2}
			for j := 0; j < perVIP; j++ {
				s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, byte(j), byte(v % 250)}), Weight: 1})
			}
			state.Services = append(state.Services, s)
		}
		st := r.Apply(context.Background(), state, nil)
		if len(st.Errors) > 0 {
			b.Fatal(st.Errors[0])
		}
		cold = append(cold, st.Duration)
		state.Services[500].Backends = append(state.Services[500].Backends, Backend{Addr: netip.MustParseAddr("198.18.200.1"), Weight: 1})
		st = r.Apply(context.Background(), state, nil)
		if len(st.Errors) > 0 {
			b.Fatal(st.Errors[0])
		}
		add = append(add, st.Duration)
		if mem, err = dp.Memory(); err != nil {
			b.Fatal(err)
		}
		dp.Close()
	}
	med := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	b.ReportMetric(float64(med(cold).Milliseconds()), "ms/cold-apply")
	b.ReportMetric(float64(med(add).Microseconds())/1000, "ms/add-one")
	var total uint64
	for _, n := range mem {
		total += n
	}
	b.ReportMetric(float64(total)/(1<<20), "MiB-maps")
	b.Logf("map memory: %v", mem)
}
