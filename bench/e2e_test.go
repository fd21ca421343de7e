package main

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// TestE2E runs `bench e2e` for one short round: for xdplb, nftables and
// HAProxy, UDP datagrams reach the backends (not through HAProxy, which does
// not do UDP), TCP connections are answered by every backend, and afterwards
// the namespaces and HAProxy are gone.
func TestE2E(t *testing.T) {
	testnet.RequirePrivileged(t)
	for _, tool := range []string{"nft", "haproxy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv(testnet.EnvRequirePrivileged) == "1" {
				t.Fatalf("%s is missing (make deps installs it): %v", tool, err)
			}
			t.Skipf("%s is missing (make deps installs it): %v", tool, err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var names []string
	var progress strings.Builder
	results, err := runE2E(ctx, e2eOptions{
		Rounds: 1, Duration: 300 * time.Millisecond, Workers: 4, Progress: &progress,
		topology: func(ns []string) { names = ns },
	})
	t.Logf("\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if len(r.Samples) != 1 {
			t.Fatalf("%s: %d samples, want 1", r.Mode, len(r.Samples))
		}
		s := r.Samples[0]
		if wantUDP := r.Mode != "haproxy"; (s.UDPDelivered > 0) != wantUDP {
			t.Errorf("%s: %d UDP datagrams delivered, want some: %v", r.Mode, s.UDPDelivered, wantUDP)
		}
		if s.Conns == 0 || len(s.PerServer) != e2eBackends {
			t.Errorf("%s: %d connections, per backend %v: want some on every backend", r.Mode, s.Conns, s.PerServer)
		}
		if r.Generator != genLiveFrames && r.Generator != genPacketSocket {
			t.Errorf("%s: generator %q, want %q or %q", r.Mode, r.Generator, genLiveFrames, genPacketSocket)
		}
	}
	assertGone(t, names)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "xdplb-bench-haproxy-") {
			t.Errorf("haproxy still runs: %s: %q", p, b)
		}
	}
}
