package xdp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestBenchAblateNAT checks that the NAT stages of `bench datapath -ablate`
// leave out what they name, and only in the ablation build it runs: without
// the inserts a run of SYNs translates them all and makes no flow, without
// the lookup an established flow's ACK finds none, and without the early
// reads the flows and the output are the same.
func TestBenchAblateNAT(t *testing.T) {
	testnet.RequirePrivileged(t)
	s, err := NewBenchSuite(BenchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cases := map[string]*BenchCase{}
	for _, c := range s.Cases() {
		cases[c.Name] = c
	}
	newFlow, est := cases["snat_new_flow"], cases["snat_established"]
	d, err := s.natDP()
	if err != nil {
		t.Fatal(err)
	}
	const repeat = 4096
	vip0 := netip.AddrPortFrom(s.natVIP(0).Addr, benchPort)
	first := netip.AddrPortFrom(benchNATClient, 0)
	last := netip.AddrPortFrom(benchNATClient, repeat-1)
	run := func(c *BenchCase, a Ablation) (uint32, []byte) {
		t.Helper()
		_, v, out, _, err := d.benchRunAblated(c.frame, repeat, a)
		if err != nil {
			t.Fatalf("%s, without %q: %v", c.Name, a, err)
		}
		return v, out
	}
	flows := func() int {
		n := 0
		for _, c := range []netip.AddrPort{first, last} {
			if _, ok := natFlow(d, c, vip0, TCP); ok {
				n++
			}
		}
		return n
	}

	for _, a := range []Ablation{ablationBuild, AblateNATPeek | ablationBuild} {
		if err := clearNAT(d); err != nil {
			t.Fatal(err)
		}
		v, out := run(newFlow, a)
		if v != XDPTx || flows() != 2 {
			t.Fatalf("SYNs, without %q: verdict %d, %d of the first and last flows made, want %d and 2", a, v, flows(), XDPTx)
		}
		want, err := newFlow.expect(newFlow.frame.Varied(repeat - 1))
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(want) {
			t.Errorf("SYNs, without %q: output\n got %x\nwant %x", a, out, want)
		}
	}
	if err := clearNAT(d); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(newFlow, AblateNATInsert|ablationBuild); v != XDPTx || flows() != 0 {
		t.Errorf("SYNs without natinsert: verdict %d, %d of the first and last flows made, want %d and none", v, flows(), XDPTx)
	}

	// The established flow's ACK, made by est's SYN.
	if _, err := est.dp(); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(est, ablationBuild); v != XDPTx {
		t.Errorf("established ACK: verdict %d, want %d", v, XDPTx)
	}
	if v, _ := run(est, AblateNATLookup|ablationBuild); v != XDPDrop {
		t.Errorf("established ACK without natlookup: verdict %d, want %d (no flow)", v, XDPDrop)
	}
}

// TestBenchRunFileOtherBuilds: -versus runs another build's bench wrapper
// on this datapath's maps (this build's own object here, which has them
// all); an object without the datapath's counters and services, such as
// the decap program's, is refused by name.
func TestBenchRunFileOtherBuilds(t *testing.T) {
	d := fxOpen(t, Options{})
	f := BenchFrame{Data: fxIn(fxIP(fxAP(fxClient4, 40000), fxAP(netip.MustParseAddr("198.19.200.1"), 80), packet.TCPAck, nil), nil)}
	if _, v, _, err := d.BenchRunFile("bench_bpfel.o", f, 1); err != nil || v != XDPPass {
		t.Errorf("this build's wrapper from its file: verdict %d, %v; want XDP_PASS (no VIP)", v, err)
	}
	_, _, _, err := d.BenchRunFile("decap_bpfel.o", f, 1)
	if err == nil || !strings.Contains(err.Error(), "it has no map stats: another datapath") {
		t.Errorf("the decap object: %v, want it refused as another datapath", err)
	}
}
