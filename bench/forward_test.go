package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// TestForward runs `bench forward` with a handful of frames per case: the
// topology builds, xdplb's sample frames reach the backend as they should in
// both DSR modes with counters that match, every case delivers frames to its
// sink, and every namespace is gone afterwards.
func TestForward(t *testing.T) {
	testnet.RequirePrivileged(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var names []string
	var progress strings.Builder
	results, err := runForward(ctx, fwdOptions{
		Rounds: 1, Duration: 50 * time.Millisecond, Flows: 64, Progress: &progress,
		topology: func(ns []string) { names = ns },
	})
	t.Logf("\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(fwdCases) {
		t.Errorf("%d results, want one per case (%d)", len(results), len(fwdCases))
	}
	for _, r := range results {
		if len(r.Samples) != 1 || r.Samples[0].Delivered == 0 || r.MppsPerCPU <= 0 {
			t.Errorf("%s: samples %+v: want one that delivered frames", r.Case, r.Samples)
		}
		if r.Generator != genLiveFrames && r.Generator != genPacketSocket {
			t.Errorf("%s: generator %q, want %q or %q", r.Case, r.Generator, genLiveFrames, genPacketSocket)
		}
	}
	for _, c := range fwdCases {
		if c.XDPLB && !strings.Contains(progress.String(), c.Name+": sample frames checked") {
			t.Errorf("%s: its sample frames were not checked", c.Name)
		}
	}
	assertGone(t, names)
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
