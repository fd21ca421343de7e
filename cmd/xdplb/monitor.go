package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/xdp"
)

// multiFlag is a flag that may be repeated, each value also a comma list.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }

func (m *multiFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}

func runMonitor(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("monitor", "xdplb monitor [--vip VIP:PORT/PROTO] [--backend ADDR] [--reason REASON] [--type TYPE,...] [--sample N] [--socket PATH] [-o table|json]",
		"Streams the datapath's events as they happen, until interrupted: packets dropped\n"+
			"(with their reason and headers), flows pinned during a table transition, ICMP\n"+
			"errors forwarded to a backend, ICMP errors sent to a client, echo replies.\n"+
			"Several monitors may run at once. One that reads too slowly loses events and is\n"+
			"told how many; the datapath never waits for it. With -o json, one event a line.")
	var f MonitorFilter
	var types multiFlag
	c.fs.StringVar(&f.VIP, "vip", "", "only events of flows to this VIP (ADDR:PORT/PROTO)")
	c.fs.StringVar(&f.Backend, "backend", "", "only events of flows sent or pinned to this backend (ADDR or ADDR:PORT)")
	c.fs.StringVar(&f.Reason, "reason", "", "only events of this reason (no_backend, or drop/no_backend; see docs/metrics.md)")
	c.fs.Var(&types, "type", "only events of these types: "+strings.Join(controlplane.MonitorTypes, ", ")+" (repeat or separate with commas)")
	c.fs.IntVar(&f.Sample, "sample", 1, "show one event in N of those that match")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if f.VIP != "" {
		k, err := xdp.ParseVIPKey(f.VIP)
		if err != nil {
			return usageError{fmt.Sprintf("monitor: --vip %v", err)}
		}
		f.VIP = k.String()
	}
	for _, t := range types {
		if !contains(controlplane.MonitorTypes, t) {
			return usageError{fmt.Sprintf("monitor: --type %q: want one of %s", t, strings.Join(controlplane.MonitorTypes, ", "))}
		}
	}
	if f.Sample < 1 {
		return usageError{fmt.Sprintf("monitor: --sample %d: want 1 or more", f.Sample)}
	}
	f.Types = types
	return controlplane.Stream(ctx, c.socket, Request{Command: "monitor", Filter: &f}, func(data json.RawMessage) error {
		if c.output == "json" {
			_, err := fmt.Fprintf(out, "%s\n", data)
			return err
		}
		var e MonitorEvent
		if err := json.Unmarshal(data, &e); err != nil {
			return fmt.Errorf("decoding an event: %w", err)
		}
		_, err := io.WriteString(out, monitorLine(e))
		return err
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// monitorLine is an event for people: a line, and the headers indented on
// a second one.
func monitorLine(e MonitorEvent) string {
	ts := e.Time.In(cliNow().Location()).Format("15:04:05.000000")
	switch e.Type {
	case "start":
		return fmt.Sprintf("%s listening for datapath events (Ctrl-C stops)\n", ts)
	case "lost":
		var parts []string
		if e.Lost > 0 {
			parts = append(parts, fmt.Sprintf("%d %s lost by this monitor, which read too slowly", e.Lost, plural(int(e.Lost), "event", "events")))
		}
		if e.DatapathLost > 0 {
			parts = append(parts, fmt.Sprintf("%d %s lost by every monitor: the datapath's ring was full", e.DatapathLost, plural(int(e.DatapathLost), "event", "events")))
		}
		return fmt.Sprintf("%s !!! %s\n", ts, strings.Join(parts, "; "))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-10s %-28s", ts, e.Type, e.Reason)
	if e.Interface != "" {
		fmt.Fprintf(&b, " on %s:", e.Interface)
	}
	if e.Flow != "" {
		fmt.Fprintf(&b, " %s/%s", e.Flow, e.Protocol)
		if e.SYN {
			b.WriteString(" SYN")
		}
	}
	if e.Backend != "" || e.BackendID != 0 {
		verb := "to"
		if e.Type == "pin" {
			verb = "pinned to"
		}
		fmt.Fprintf(&b, " %s %s (id %d)", verb, dash(e.Backend), e.BackendID)
	}
	if e.VIP != "" {
		fmt.Fprintf(&b, " [%s %s]", e.Service, e.VIP)
	}
	b.WriteString("\n")
	if e.Headers != "" {
		fmt.Fprintf(&b, "    %d bytes: %s\n", e.FrameLen, e.Headers)
	}
	return b.String()
}
