package xdp

import (
	"bytes"
	"testing"

	"github.com/xdplb/xdplb/internal/testnet"
)

// TestBenchFloorGrow checks the floor of the cases whose program changes
// the frame's length: each case knows its growth (20 bytes of IPv4 in
// front of an IPv4 or IPv6 packet to an IPv4 backend, none for L2), and
// the floor changes the length on every other run only, so that with the
// restore it makes one bpf_xdp_adjust_head a run,
// as the restore does after the program: after an odd number of runs the
// frame is the original with the growth in front, after an even number it
// is the original.
func TestBenchFloorGrow(t *testing.T) {
	testnet.RequirePrivileged(t)
	s, err := NewBenchSuite(BenchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	want := map[string]int{"established_l2": 0, "established_ipip": 20, "established_ipip_ipv6": 20, "established_l2_ipv6": 0}
	for _, c := range s.Cases() {
		grow, ok := want[c.Name]
		if !ok {
			continue
		}
		delete(want, c.Name)
		if err := c.Prepare(); err != nil {
			t.Fatal(err)
		}
		if c.grow != grow {
			t.Errorf("%s: growth %d, want %d", c.Name, c.grow, grow)
		}
		if grow == 0 {
			continue
		}
		d, err := c.dp()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.BenchFloor(c.frame, c.grow, 3); err != nil { // sets bench_floor_grow
			t.Fatal(err)
		}
		b, err := d.benchObjects(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, repeat := range []int{1, 2, 3, 4} {
			_, verdict, out, _, err := d.benchRun(b.BenchFrames, b.XdplbBenchFloorGrow, c.frame, repeat)
			if err != nil {
				t.Fatal(err)
			}
			if verdict != XDPPass {
				t.Errorf("%s: floor verdict %d after %d runs, want XDP_PASS", c.Name, verdict, repeat)
			}
			wantLen := len(c.frame.Data)
			if repeat%2 == 1 {
				wantLen += grow
			}
			if len(out) != wantLen || !bytes.Equal(out[len(out)-len(c.frame.Data):], c.frame.Data) {
				t.Errorf("%s: after %d runs of the floor the frame is %d bytes (%x), want %d ending in the original", c.Name, repeat, len(out), out, wantLen)
			}
		}
	}
	for name := range want {
		t.Errorf("no case %s", name)
	}
}
