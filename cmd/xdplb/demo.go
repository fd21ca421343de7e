package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// runDemo builds a namespace topology (client, appliance, three backends),
// attaches the datapath with one IPv4 and one IPv6 VIP in L2 DSR, drives TCP
// connections through both and prints what happened, then removes everything.
func runDemo(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	conns := fs.Int("connections", 1000, "TCP connections to make to each VIP")
	mode := fs.String("mode", "dsr-l2", "forwarding mode: dsr-l2 or dsr-ipip")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb demo [flags]\n\n"+
			"Runs the appliance in network namespaces (nothing outside them is touched; only\n"+
			"198.18.0.0/15 and 2001:db8::/32 are used) and shows where connections went.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	var m xdp.Mode
	switch *mode {
	case "dsr-l2":
		m = xdp.ModeDSRL2
	case "dsr-ipip":
		m = xdp.ModeDSRIPIP
	default:
		return usageError{fmt.Sprintf("demo: --mode %q is neither dsr-l2 nor dsr-ipip", *mode)}
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (network namespaces and XDP); run it with sudo")
	}

	fmt.Fprintln(out, "== building the topology: client 198.18.0.10, appliance 198.18.0.2, backends 198.18.0.11-13 (and 2001:db8::…)")
	topo, err := testnet.NewTopology(testnet.TopologyConfig{Backends: 3})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if err := topo.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleaning up:", err)
		}
	}()
	app, err := scenario.Start(ctx, topo, scenario.Options{Mode: m})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer app.Close()
	fmt.Fprintf(out, "== xdplb attached to %s of the appliance (ifindex %d, %s mode); VIPs %s and %s, port %d, %s, 3 backends\n",
		app.Attached.Interface, app.Attached.IfIndex, app.Attached.Mode, scenario.VIP4, scenario.VIP6, scenario.Port, m)

	for _, k := range scenario.Keys() {
		start := time.Now()
		counts, err := app.Connections(ctx, k.Addr, *conns, 8)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", k, err)
		}
		fmt.Fprintf(out, "\n== %d TCP connections from the client to %s in %v\n", *conns, k, time.Since(start).Round(time.Millisecond))
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
		s, err := app.DP.VIPStats(k)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "VIP counters: packets %d, bytes %d, new flows (SYNs) %d\n", s.Packets, s.Bytes, s.NewFlows)
	}

	fmt.Fprintln(out, "\n== datapath counters (non-zero)")
	cs, err := app.DP.Counters()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tREASON\tPACKETS")
	for _, c := range cs {
		if c.Value > 0 {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", c.Action, c.Reason, c.Value)
		}
	}
	tw.Flush()
	fmt.Fprintln(out, "\n== cleaning up")
	return nil
}
