package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/xdplb/xdplb/internal/controlplane"
)

// The CLI of announcing: xdplb bgp, drain, undrain and announce.

func runBGP(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("bgp", "xdplb bgp [--socket PATH] [-o table|json]",
		"Shows the BGP speaker (announce.bgp): the routes it announces and each peer\n"+
			"with its session state, how long the session has been established, the hold\n"+
			"time negotiated and the prefixes sent to and received from it.")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var b BGPInfo
	if err := c.call(ctx, Request{}, &b); err != nil {
		return err
	}
	b.Routes = nonNil(b.Routes)
	b.Peers = nonNil(b.Peers)
	slices.SortFunc(b.Peers, func(x, y BGPPeerInfo) int { return cmp.Compare(x.Address, y.Address) })
	return c.print(out, b, func(w io.Writer) error { return writeBGP(w, b, cliNow()) })
}

func writeBGP(w io.Writer, b BGPInfo, now time.Time) error {
	head := newTable()
	head.row("Local AS:", fmt.Sprint(b.LocalASN))
	head.row("Router ID:", b.RouterID)
	drained := "no"
	if b.Drained {
		drained = "yes (xdplb undrain announces again)"
	}
	head.row("Drained:", drained)
	routes := "none"
	if len(b.Routes) > 0 {
		routes = strings.Join(b.Routes, ", ")
	}
	head.row("Routes:", routes)
	if err := head.writeTo(w); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t := newTable()
	t.row("PEER", "ASN", "STATE", "UP", "HOLD", "SENT", "RECEIVED")
	for _, p := range b.Peers {
		up, hold := "-", "-"
		if !p.Since.IsZero() {
			up = age(now, p.Since)
		}
		if p.HoldTime > 0 {
			hold = p.HoldTime.String()
		}
		t.row(p.Address, fmt.Sprint(p.ASN), p.State, up, hold, fmt.Sprint(p.Sent), fmt.Sprint(p.Received))
	}
	return t.writeTo(w)
}

// drainPoll is how often drain reads the new-flow counters while it waits.
const drainPoll = 500 * time.Millisecond

func runDrain(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("drain", "xdplb drain [--quiet DURATION] [--timeout DURATION] [--no-wait] [--socket PATH] [-o table|json]",
		"Drains the appliance before maintenance: withdraws every BGP route, or tags them\n"+
			"with the GRACEFUL_SHUTDOWN community (RFC 8326) when announce.bgp.drain is\n"+
			"gracefulShutdown. Then it waits until no new flow has arrived for --quiet (the\n"+
			"datapath's new-flow counters of every VIP) and says so; established flows keep\n"+
			"being forwarded. The drain outlives a restart of the daemon; xdplb undrain ends it.\n"+
			"Exit status 1 when --timeout passes with new flows still arriving.")
	quiet := c.fs.Duration("quiet", 5*time.Second, "how long no new flow must arrive")
	timeout := c.fs.Duration("timeout", 5*time.Minute, "how long to wait at most")
	noWait := c.fs.Bool("no-wait", false, "return once the routes are withdrawn or tagged")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if *quiet <= 0 || *timeout <= 0 {
		return usageError{"drain: --quiet and --timeout must be above zero"}
	}
	var d DrainInfo
	if err := c.call(ctx, Request{}, &d); err != nil {
		return err
	}
	d.Routes = nonNil(d.Routes)
	if *noWait {
		return c.print(out, drainResult{DrainInfo: d}, func(w io.Writer) error { return writeDrained(w, d) })
	}
	if c.output == "table" {
		if err := writeDrained(out, d); err != nil {
			return err
		}
	}
	res, err := waitNoNewFlows(ctx, c.socket, *quiet, *timeout)
	if err != nil {
		return err
	}
	res.DrainInfo = d
	if err := c.print(out, res, func(w io.Writer) error { return writeQuiet(w, res) }); err != nil {
		return err
	}
	if !res.Quiet {
		return fmt.Errorf("drain: new flows still arrive after %v", *timeout)
	}
	return nil
}

// drainResult is what drain prints with -o json.
type drainResult struct {
	DrainInfo
	// Quiet says no new flow arrived for QuietFor; Waited is how long it
	// took from the drain; NewFlows counts the new flows meanwhile.
	Quiet    bool          `json:"quiet"`
	QuietFor time.Duration `json:"quietFor,omitempty"`
	Waited   time.Duration `json:"waited,omitempty"`
	NewFlows uint64        `json:"newFlows"`
}

func writeDrained(w io.Writer, d DrainInfo) error {
	var err error
	if d.Mode == "gracefulShutdown" {
		_, err = fmt.Fprintf(w, "drained: routes tagged GRACEFUL_SHUTDOWN (65535:0): %s\n", strings.Join(d.Routes, ", "))
	} else {
		_, err = fmt.Fprintln(w, "drained: every route withdrawn")
	}
	return err
}

func writeQuiet(w io.Writer, r drainResult) error {
	if !r.Quiet {
		_, err := fmt.Fprintf(w, "new flows still arrive after %v (%d since the drain)\n", r.Waited.Round(time.Second), r.NewFlows)
		return err
	}
	_, err := fmt.Fprintf(w, "no new flows for %v: drained %v after the drain (%d %s meanwhile)\n",
		r.QuietFor, (r.Waited - r.QuietFor).Round(100*time.Millisecond), r.NewFlows, plural(int(r.NewFlows), "new flow", "new flows"))
	return err
}

// newFlowCount sums the new-flow counters of every VIP.
func newFlowCount(ctx context.Context, socket string) (uint64, error) {
	var vs []VIPInfo
	if err := controlplane.Call(ctx, socket, Request{Command: "vips"}, &vs); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range vs {
		n += v.Stats.NewFlows
	}
	return n, nil
}

// waitNoNewFlows polls the new-flow counters until they have not moved for
// quiet, or timeout passes.
func waitNoNewFlows(ctx context.Context, socket string, quiet, timeout time.Duration) (drainResult, error) {
	start := time.Now()
	first, err := newFlowCount(ctx, socket)
	if err != nil {
		return drainResult{}, err
	}
	last, lastChange := first, start
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return drainResult{}, ctx.Err()
		case <-tick.C:
		}
		n, err := newFlowCount(ctx, socket)
		if err != nil {
			return drainResult{}, err
		}
		now := time.Now()
		if n != last {
			last, lastChange = n, now
		}
		switch {
		case now.Sub(lastChange) >= quiet:
			return drainResult{Quiet: true, QuietFor: quiet, Waited: now.Sub(start), NewFlows: last - first}, nil
		case now.Sub(start) >= timeout:
			return drainResult{Waited: now.Sub(start), NewFlows: last - first}, nil
		}
	}
}

func runUndrain(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("undrain", "xdplb undrain [--socket PATH] [-o table|json]",
		"Ends a drain: the BGP routes are announced again (without the\n"+
			"GRACEFUL_SHUTDOWN community).")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var d DrainInfo
	if err := c.call(ctx, Request{}, &d); err != nil {
		return err
	}
	d.Routes = nonNil(d.Routes)
	return c.print(out, d, func(w io.Writer) error {
		routes := "none yet"
		if len(d.Routes) > 0 {
			routes = strings.Join(d.Routes, ", ")
		}
		_, err := fmt.Fprintf(w, "undrained: routes announced: %s\n", routes)
		return err
	})
}

func runAnnounce(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("announce", "xdplb announce [--state active|standby] [--socket PATH] [-o table|json]",
		"With announce.l2.mode external, makes the L2 announcers answer ARP and NDP for\n"+
			"the VIPs (active; the gratuitous announcements go out at once) or fall silent\n"+
			"(standby): what an outside election such as keepalived's notify script calls.\n"+
			"Without --state it shows the mode and state.")
	state := c.fs.String("state", "", "active or standby")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	switch *state {
	case "", "active", "standby":
	default:
		return usageError{fmt.Sprintf("announce: --state %q: want active or standby", *state)}
	}
	var s L2StateInfo
	if err := c.call(ctx, Request{State: *state}, &s); err != nil {
		return err
	}
	s.VIPs = nonNil(s.VIPs)
	return c.print(out, s, func(w io.Writer) error {
		vips := "nothing"
		if len(s.VIPs) > 0 {
			vips = strings.Join(s.VIPs, ", ")
		}
		_, err := fmt.Fprintf(w, "L2 announcers: %s (mode %s), answering for %s\n", s.State, s.Mode, vips)
		return err
	})
}
