package xdp_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/xdp"
)

// benchRepeat is the packets of one sample: the 1M flows of the cold cases
// once each, as in `go run ./bench datapath`.
const benchRepeat = 1 << 20

// maglev builds the suite's tables as the daemon does.
func maglev(m int, backends []xdp.BenchBackend) ([]uint32, error) {
	in := make([]lb.MaglevBackend, len(backends))
	for i, b := range backends {
		in[i] = lb.MaglevBackend{ID: b.ID, Addr: netip.AddrPortFrom(b.Addr, 80), Weight: 1}
	}
	return lb.BuildMaglev([16]byte{'x', 'd', 'p', 'l', 'b', '-', 'b', 'e', 'n', 'c', 'h'}, m, in)
}

func newSuite(tb testing.TB) *xdp.BenchSuite {
	tb.Helper()
	s, err := xdp.NewBenchSuite(xdp.BenchConfig{BuildTable: maglev})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkDatapath measures every case of the datapath benchmark, one
// sample (case, floor, empty program; 2^20 packets each) per iteration, and
// reports the medians per packet. Each sample is checked (verdict, output,
// counters). Run with -benchtime 7x for the median of 7, as bench/ does:
//
//	go test -run '^$' -bench Datapath -benchtime 7x ./xdp
func BenchmarkDatapath(b *testing.B) {
	testnet.RequirePrivileged(b)
	s := newSuite(b)
	for _, c := range s.Cases() {
		b.Run(c.Name, func(b *testing.B) {
			if err := c.Prepare(); err != nil {
				b.Fatal(err)
			}
			var costs, cs, fs, es []time.Duration
			for b.Loop() {
				smp, err := c.Sample(benchRepeat, len(cs)%2 == 1)
				if err != nil {
					b.Fatal(err)
				}
				costs = append(costs, smp.Cost())
				cs, fs, es = append(cs, smp.Case), append(fs, smp.Floor), append(es, smp.Empty)
			}
			b.ReportMetric(float64(xdp.Median(costs).Nanoseconds()), "ns/packet")
			b.ReportMetric(float64(xdp.Median(es).Nanoseconds()), "empty-ns/packet")
			b.ReportMetric(float64(xdp.Median(cs).Nanoseconds()), "wrapper-ns/packet")
			b.ReportMetric(float64(xdp.Median(fs).Nanoseconds()), "restore-ns/packet")
		})
	}
}

// TestBenchCases runs every case of the datapath benchmark on a few
// thousand packets: each builds its state and checks one packet's verdict
// and exact output, then the last packet's and the counters of the run.
func TestBenchCases(t *testing.T) {
	testnet.RequirePrivileged(t)
	s := newSuite(t)
	for _, c := range s.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			if _, err := c.Sample(4096, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBenchFrames checks the suite's frames: well formed, checksums right,
// and the varied field where the cases say it is.
func TestBenchFrames(t *testing.T) {
	s, err := xdp.NewBenchSuite(xdp.BenchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range s.Cases() {
		f := c.Frame()
		if err := packet.VerifyFrame(f.Data); err != nil {
			t.Errorf("%s: frame: %v", c.Name, err)
		}
		if f.VaryCount == 0 {
			continue
		}
		last := f.Varied(f.VaryCount - 1)
		if got := f.Varied(f.VaryCount); string(got) != string(f.Data) {
			t.Errorf("%s: value %d is not value 0 again", c.Name, f.VaryCount)
		}
		for i := range last {
			if i < int(f.VaryOffset) || i >= int(f.VaryOffset)+4 {
				if last[i] != f.Data[i] {
					t.Errorf("%s: varying changed byte %d outside the field at %d", c.Name, i, f.VaryOffset)
				}
			}
		}
	}
}

// TestBenchVaried pins down BenchFrame.Varied, which the checks model the
// wrapper with: a big-endian add, carrying across bytes.
func TestBenchVaried(t *testing.T) {
	f := xdp.BenchFrame{Data: make([]byte, 20), VaryOffset: 4, VaryCount: 1 << 20}
	f.Data[7] = 0xff
	got := f.Varied(0x10001)
	want := []byte{0, 0, 0, 0, 0, 1, 1, 0}
	if string(got[:8]) != string(want) {
		t.Errorf("Varied(0x10001) = %x, want %x", got[:8], want)
	}
	if got := f.Varied(1<<20 + 1); got[7] != 0 || got[6] != 1 {
		t.Errorf("Varied(2^20+1) = %x: want the count to wrap", got[:8])
	}
}
