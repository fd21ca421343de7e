package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

//go:embed demo.yaml
var demoConfig string

// runDemo builds a namespace topology (client, appliance, three backends),
// runs the real daemon (`xdplb run`) in the appliance's namespace on an
// embedded configuration, drives TCP connections through both VIPs and
// shows what happened, then removes everything (unless --keep).
func runDemo(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	conns := fs.Int("connections", 1000, "TCP connections to make to each VIP")
	keep := fs.Bool("keep", false, "leave everything running until interrupted, to explore")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb demo [flags]\n\n"+
			"Runs the appliance on an embedded configuration in network namespaces (nothing\n"+
			"outside them is touched; only 198.18.0.0/15 and 2001:db8::/32 are used), drives\n"+
			"traffic and shows where the connections went.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (network namespaces and XDP); run it with sudo")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	fmt.Fprintln(out, "== building the topology: client 198.18.0.10, appliance 198.18.0.2, backends 198.18.0.11-13 (and 2001:db8::…) around a bridge")
	topo, err := testnet.NewTopology(testnet.TopologyConfig{Backends: 3})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if err := topo.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleaning up:", err)
		}
	}()
	srv, err := scenario.StartServers(topo, false)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer srv.Close()

	// The daemon's files in a temporary directory, its pins on a bpffs of
	// their own, so the demo leaves nothing behind.
	dir, err := os.MkdirTemp("", "xdplb-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bpffs := filepath.Join(dir, "bpf")
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("demo: mounting a bpffs: %w", err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	if err := os.WriteFile(cfgPath, []byte(strings.ReplaceAll(demoConfig, "DIR", dir)), 0o644); err != nil {
		return err
	}
	socket := filepath.Join(dir, "xdplb.sock")

	fmt.Fprintf(out, "== starting `xdplb run --config %s` in the appliance's namespace\n", cfgPath)
	logf, err := os.Create(filepath.Join(dir, "xdplb.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	daemon := topo.LB.NS.Command(context.Background(), self, "run", "--config", cfgPath)
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = daemon.Process.Kill()
		}
		_, _ = detachAll(filepath.Join(bpffs, "xdplb"), io.Discard)
	}()
	if err := waitReady(ctx, socket, exited); err != nil {
		log, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("demo: %w\n%s", err, log)
	}

	for _, vip := range []string{"198.18.100.1", "2001:db8:100::1"} {
		start := time.Now()
		counts, err := srv.Connections(ctx, netip.MustParseAddr(vip), *conns, 8)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", vip, err)
		}
		fmt.Fprintf(out, "\n== %d TCP connections from the client to %s port 80 in %v\n", *conns, vip, time.Since(start).Round(time.Millisecond))
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "BACKEND\tCONNECTIONS\tSHARE")
		names := make([]string, 0, len(counts))
		for n := range counts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%d\t%.1f%%\n", n, counts[n], 100*float64(counts[n])/float64(*conns))
		}
		tw.Flush()
	}

	fmt.Fprintf(out, "\n== xdplb vips --socket %s\n", socket)
	vips := exec.CommandContext(ctx, self, "vips", "--socket", socket)
	vips.Stdout, vips.Stderr = out, out
	if err := vips.Run(); err != nil {
		return fmt.Errorf("demo: xdplb vips: %w", err)
	}
	fmt.Fprintln(out, "\n== metrics (excerpt of http://127.0.0.1:9650/metrics in the appliance's namespace)")
	if err := printMetrics(out, topo.LB.NS); err != nil {
		return err
	}

	if *keep {
		fmt.Fprintf(out, "\n== running until interrupted (Ctrl-C). Try:\n"+
			"  %s status --socket %s\n"+
			"  %s explain --socket %s --from 198.18.0.10:40000 --to 198.18.100.1:80/tcp\n"+
			"  ip netns exec %s curl http://198.18.100.1/    # (no HTTP server: the backend answers with its name)\n"+
			"  ip netns exec %s curl -s http://127.0.0.1:9650/metrics\n",
			self, socket, self, socket, topo.Client.NS.Name, topo.LB.NS.Name)
		select {
		case <-ctx.Done():
		case err := <-exited:
			return fmt.Errorf("demo: xdplb run exited: %v", err)
		}
	}
	fmt.Fprintln(out, "\n== cleaning up")
	return nil
}

// waitReady waits until the daemon answers on its control socket.
func waitReady(ctx context.Context, socket string, exited <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var st StatusInfo
		if err := controlplane.Call(ctx, socket, Request{Command: "status"}, &st); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("xdplb run exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("xdplb run not ready after 15 s")
		}
	}
}

// printMetrics prints the per-VIP, per-backend and datapath metrics that are
// not zero.
func printMetrics(out io.Writer, ns *testnet.NS) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.Dial}}
	resp, err := client.Get("http://127.0.0.1:9650/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		l := s.Text()
		if strings.HasPrefix(l, "#") || strings.HasSuffix(l, " 0") {
			continue
		}
		for _, p := range []string{"xdplb_vip_", "xdplb_backend_packets_total", "xdplb_datapath_packets_total", "xdplb_config_info"} {
			if strings.HasPrefix(l, p) {
				fmt.Fprintln(out, l)
			}
		}
	}
	return s.Err()
}
