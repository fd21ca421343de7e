package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/internal/testnet"
)

// TestForward runs `bench forward` with a handful of frames per case: the
// topology builds, xdplb's sample frames reach the backend as they should in
// both DSR modes with counters that match, every case delivers frames to its
// sink, and every namespace is gone afterwards.
func TestForward(t *testing.T) {
	results, progress, names := testForward(t, fwdOptions{})
	if len(results) != len(fwdCases) {
		t.Errorf("%d results, want one per case (%d)", len(results), len(fwdCases))
	}
	for _, r := range results {
		if len(r.Samples) != 1 || r.Samples[0].Delivered == 0 || r.MppsPerCPU <= 0 {
			t.Errorf("%s: samples %+v: want one that delivered frames", r.Case, r.Samples)
		}
		if r.PerWakeup <= 0 {
			t.Errorf("%s: %v frames per wake-up: the appliance's thread forwarded frames, so it ran", r.Case, r.PerWakeup)
		}
		if r.Generator != genLiveFrames && r.Generator != genPacketSocket {
			t.Errorf("%s: generator %q, want %q or %q", r.Case, r.Generator, genLiveFrames, genPacketSocket)
		}
	}
	for _, c := range fwdCases {
		if c.XDPLB && !strings.Contains(progress, c.Name+": sample frames checked") {
			t.Errorf("%s: its sample frames were not checked", c.Name)
		}
	}
	assertGone(t, names)
}

// testForward runs the forward benchmark as opts says, with one short round
// of 64 flows, and returns its results, its progress output and the
// namespaces it made.
func testForward(t *testing.T, opts fwdOptions) (results []fwdResult, progress string, namespaces []string) {
	t.Helper()
	testnet.RequirePrivileged(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var out strings.Builder
	opts.Rounds, opts.Duration, opts.Flows, opts.Progress = 1, 50*time.Millisecond, 64, &out
	opts.topology = func(ns []string) { namespaces = ns }
	results, err := runForward(ctx, opts)
	t.Logf("\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	return results, out.String(), namespaces
}

// assertGone checks that the named network namespaces were removed.
func assertGone(t *testing.T, names []string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatal("the benchmark reported no namespaces")
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(testnet.NetnsDir, n)); err == nil {
			t.Errorf("namespace %s is still there", n)
		}
	}
}

// TestForwardVersus runs an xdplb case beside the same case run by another
// build's program (here the lb object of this build, loaded a second time):
// the other program is the one on the interface during its case (attach
// checks the program ID), its sample frames reach the backend as this
// build's do, and this build's program is back on the interface after it.
func TestForwardVersus(t *testing.T) {
	results, progress, names := testForward(t, fwdOptions{
		Cases:  regexp.MustCompile(`^(xdp_tx_hairpin|xdplb_dsr_l2_onearm)$`),
		Versus: "../xdp/lb_bpfel.o",
	})
	var got []string
	for _, r := range results {
		got = append(got, r.Case)
		if len(r.Samples) != 1 || r.Samples[0].Delivered == 0 {
			t.Errorf("%s: samples %+v: want one that delivered frames", r.Case, r.Samples)
		}
		if strings.HasSuffix(r.Case, "_versus") && r.Budget != 0 {
			t.Errorf("%s: budget %v: another build's case is not judged", r.Case, r.Budget)
		}
	}
	if want := []string{"xdp_tx_hairpin", "xdplb_dsr_l2_onearm", "xdplb_dsr_l2_onearm_versus"}; !slices.Equal(got, want) {
		t.Errorf("cases %q, want %q", got, want)
	}
	if !strings.Contains(progress, "xdplb_dsr_l2_onearm_versus: sample frames checked") {
		t.Error("the other build's sample frames were not checked")
	}
	assertGone(t, names)
}

// TestSwapProgram runs xdp_tx_swap's program on a frame: it goes back
// (XDP_TX) with its MACs swapped and every other byte as it was. (Its
// bounds check, a frame shorter than the two MACs, cannot be run:
// BPF_PROG_TEST_RUN takes no XDP frame shorter than an Ethernet header.)
func TestSwapProgram(t *testing.T) {
	testnet.RequirePrivileged(t)
	prog, err := swapProgram()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	dst, src := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}, net.HardwareAddr{0x06, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	frame := udpFrame(src, dst, fwdGenAddr.Addr(), fwdVIP, fwdBasePort, fwdPort)
	want := slices.Clone(frame)
	copy(want[0:6], src)
	copy(want[6:12], dst)
	out := make([]byte, len(frame))
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	if ret != xdpTX || !bytes.Equal(out, want) {
		t.Errorf("verdict %d, frame\n%x\nwant verdict %d (XDP_TX), frame\n%x", ret, out, xdpTX, want)
	}
}
