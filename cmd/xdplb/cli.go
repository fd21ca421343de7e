package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/xdp"
)

// The CLI: commands that ask the running daemon over its control socket and
// print the answer as a table (for people) or JSON (for programs).

// cliNow is the clock the CLI measures ages against; tests set it.
var cliNow = time.Now

// cliCommand holds the flags every control-socket command takes.
type cliCommand struct {
	name, synopsis, help string
	fs                   *flag.FlagSet
	socket               string
	output               string
}

func newCLICommand(name, synopsis, help string) *cliCommand {
	c := &cliCommand{name: name, synopsis: synopsis, help: help}
	c.fs = flag.NewFlagSet(name, flag.ContinueOnError)
	c.fs.SetOutput(io.Discard) // errors are returned; -h prints usage itself
	c.fs.Usage = func() {}
	c.fs.StringVar(&c.socket, "socket", defaultSocket, "control socket of the daemon to ask")
	c.fs.StringVar(&c.output, "o", "table", "output format: table or json")
	return c
}

// errHelp reports that parse printed the usage because of -h.
var errHelp = errors.New("help printed")

// parse parses args, flags and positional arguments in any order, and
// returns the positional ones. On -h it prints the usage to out and returns
// errHelp; other mistakes are usageErrors.
func (c *cliCommand) parse(args []string, out io.Writer) ([]string, error) {
	var pos []string
	for {
		err := c.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			c.usage(out)
			return nil, errHelp
		}
		if err != nil {
			return nil, usageError{fmt.Sprintf("%s: %v (see 'xdplb %s -h')", c.name, err, c.name)}
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if c.output != "table" && c.output != "json" {
		return nil, usageError{fmt.Sprintf("%s: -o %q: want table or json", c.name, c.output)}
	}
	return pos, nil
}

func (c *cliCommand) usage(out io.Writer) {
	fmt.Fprintf(out, "usage: %s\n\n%s\n\nflags:\n", c.synopsis, c.help)
	c.fs.SetOutput(out)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
}

// noArgs is a usageError for positional arguments a command does not take.
func (c *cliCommand) noArgs(pos []string) error {
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", c.name, pos[0])}
	}
	return nil
}

// call asks the daemon and decodes its answer into out.
func (c *cliCommand) call(ctx context.Context, req Request, out any) error {
	req.Command = c.name
	return controlplane.Call(ctx, c.socket, req, out)
}

// print writes v as indented JSON, or calls table.
func (c *cliCommand) print(out io.Writer, v any, table func(io.Writer) error) error {
	if c.output == "json" {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = out.Write(append(b, '\n'))
		return err
	}
	return table(out)
}

func runStatus(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("status", "xdplb status [--socket PATH] [-o table|json]",
		"Shows the running daemon: version and uptime, the running configuration, the\n"+
			"last reload and datapath update, the interfaces it is attached to and counts.")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var s StatusInfo
	if err := c.call(ctx, Request{}, &s); err != nil {
		return err
	}
	slices.SortFunc(s.Interfaces, func(a, b InterfaceInfo) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.IfIndex, b.IfIndex))
	})
	return c.print(out, s, func(w io.Writer) error { return writeStatus(w, s, cliNow()) })
}

func runVIPs(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("vips", "xdplb vips [--socket PATH] [-o table|json]",
		"Lists every VIP (address:port/protocol) with its service, forwarding mode,\n"+
			"backends (id, weight, health and share of the Maglev table) and counters.")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var vs []VIPInfo
	if err := c.call(ctx, Request{}, &vs); err != nil {
		return err
	}
	vs = nonNil(vs)
	for i := range vs {
		vs[i].Backends = nonNil(vs[i].Backends)
		slices.SortFunc(vs[i].Backends, func(a, b VIPBackendInfo) int {
			return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Address, b.Address))
		})
	}
	slices.SortFunc(vs, func(a, b VIPInfo) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), compareVIP(a.VIP, b.VIP))
	})
	return c.print(out, vs, func(w io.Writer) error { return writeVIPs(w, vs) })
}

func runBackends(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("backends", "xdplb backends [--socket PATH] [-o table|json]",
		"Lists every backend entry of the datapath: the VIP it serves, its weight and\n"+
			"state (up, down, or drain when its weight is 0), its Maglev slots, the next hop\n"+
			"packets to it leave through, its counters and any error.")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var bs []BackendInfo
	if err := c.call(ctx, Request{}, &bs); err != nil {
		return err
	}
	bs = nonNil(bs)
	slices.SortFunc(bs, func(a, b BackendInfo) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Service, b.Service),
			compareVIP(a.VIP, b.VIP), cmp.Compare(a.Address, b.Address))
	})
	return c.print(out, bs, func(w io.Writer) error { return writeBackends(w, bs) })
}

func runConntrack(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("conntrack", "xdplb conntrack [--vip VIP:PORT/PROTO] [--socket PATH] [-o table|json]",
		"Lists the pinned flows: the flows that a conntrack entry keeps on their backend\n"+
			"(made when a VIP's table changed while they were open), with the time since\n"+
			"their last packet; then the NAT flows of snat services: client, VIP, backend,\n"+
			"the SNAT source:port they leave with, their state and age. The daemon returns\n"+
			"at most 100000.")
	vip := c.fs.String("vip", "", "only the flows of this VIP (ADDR:PORT/PROTO)")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	var req Request
	if *vip != "" {
		k, err := xdp.ParseVIPKey(*vip)
		if err != nil {
			return usageError{fmt.Sprintf("conntrack: --vip %v", err)}
		}
		req.VIP = k.String()
	}
	var fs []FlowInfo
	if err := c.call(ctx, req, &fs); err != nil {
		return err
	}
	fs = nonNil(fs)
	slices.SortFunc(fs, func(a, b FlowInfo) int {
		return cmp.Or(compareVIP(a.VIP, b.VIP), compareAddrPort(a.Client, b.Client), cmp.Compare(a.BackendID, b.BackendID))
	})
	return c.print(out, fs, func(w io.Writer) error { return writeFlows(w, fs) })
}

func runMaglev(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("maglev", "xdplb maglev VIP:PORT/PROTO [--socket PATH] [-o table|json]",
		"Shows a VIP's Maglev table: its size and how many slots each backend holds.")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if len(pos) != 1 {
		return usageError{"maglev: want one argument, VIP:PORT/PROTO (see 'xdplb maglev -h')"}
	}
	k, err := xdp.ParseVIPKey(pos[0])
	if err != nil {
		return usageError{fmt.Sprintf("maglev: %v", err)}
	}
	var m MaglevInfo
	if err := c.call(ctx, Request{VIP: k.String()}, &m); err != nil {
		return err
	}
	m.Backends = nonNil(m.Backends)
	slices.SortFunc(m.Backends, func(a, b SlotsShare) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Address, b.Address))
	})
	return c.print(out, m, func(w io.Writer) error { return writeMaglev(w, m) })
}

func runExplain(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("explain", "xdplb explain --from IP:PORT --to VIP:PORT/PROTO [--syn] [--socket PATH] [-o table|json]",
		"Says which backend a packet from the client to the VIP goes to now, and why: a\n"+
			"conntrack entry pins its flow, or the Maglev table slot its flow hash selects.\n"+
			"Next to that reasoning (the datapath's Go model) it shows what the XDP program\n"+
			"itself does with the packet, run in a dry-run build against the live maps\n"+
			"(nothing is counted, pinned or sent). If the two disagree, that is a bug: the\n"+
			"command says so and exits with status 1.")
	from := c.fs.String("from", "", "client address and port (IP:PORT; an IPv6 address in brackets)")
	to := c.fs.String("to", "", "VIP, port and protocol (VIP:PORT/PROTO, e.g. 198.18.10.10:80/tcp)")
	syn := c.fs.Bool("syn", false, "explain a TCP SYN (a new connection) rather than a packet of an established one")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	switch {
	case *from == "":
		return usageError{"explain: --from is required"}
	case *to == "":
		return usageError{"explain: --to is required"}
	}
	src, err := netip.ParseAddrPort(*from)
	if err != nil {
		return usageError{fmt.Sprintf("explain: --from %q: want IP:PORT", *from)}
	}
	k, err := xdp.ParseVIPKey(*to)
	if err != nil {
		return usageError{fmt.Sprintf("explain: --to %v", err)}
	}
	var e ExplainInfo
	if err := c.call(ctx, Request{From: src.String(), VIP: k.String(), SYN: *syn}, &e); err != nil {
		return err
	}
	if err := c.print(out, e, func(w io.Writer) error { return writeExplain(w, e) }); err != nil {
		return err
	}
	if e.Program != nil && !e.Agree {
		return errors.New("explain: the datapath program and its model disagree; this is a bug, please report it with the output of -o json")
	}
	return nil
}

func runReload(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("reload", "xdplb reload [--plan] [--socket PATH] [-o table|json]",
		"Asks the daemon to read its configuration file again and apply what changed.\n"+
			"A file with errors is refused as a whole: the running configuration stays, and\n"+
			"the errors are printed (exit status 1). With --plan nothing is applied: it says\n"+
			"what the reload would change, as 'xdplb plan' does (exit status 0 nothing, 1\n"+
			"changes, 2 errors).")
	plan := c.fs.Bool("plan", false, "only say what the reload would change (see 'xdplb plan')")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if *plan {
		var p PlanInfo
		if err := controlplane.Call(ctx, c.socket, Request{Command: "plan"}, &p); err != nil {
			return exitStatus{planTrouble, err.Error()}
		}
		return printPlan(c, out, p)
	}
	var r ReloadInfo
	if err := c.call(ctx, Request{}, &r); err != nil {
		return err
	}
	failed := reloadFailed(r)
	if c.output == "json" {
		if err := c.print(out, r, nil); err != nil {
			return err
		}
	} else if !failed {
		var s StatusInfo
		sum := "unknown"
		if err := controlplane.Call(ctx, c.socket, Request{Command: "status"}, &s); err == nil {
			sum = shortSHA(s.Config.SHA256)
		}
		if _, err := fmt.Fprintf(out, "reloaded: %s (config sha256 %s)\n", r.Result, sum); err != nil {
			return err
		}
	}
	if failed {
		msg := "reload failed; the running configuration is unchanged"
		if len(r.Errors) > 0 {
			msg += ":\n  " + strings.Join(r.Errors, "\n  ")
		}
		return errors.New(msg)
	}
	return nil
}

func reloadFailed(r ReloadInfo) bool { return r.Result != "success" }

func helpIsNoError(err error) error {
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// compareVIP orders "ADDR:PORT/PROTO" strings by address, port and protocol;
// strings that do not parse come last, in byte order.
func compareVIP(a, b string) int {
	ka, erra := xdp.ParseVIPKey(a)
	kb, errb := xdp.ParseVIPKey(b)
	if erra != nil || errb != nil {
		return cmp.Or(cmp.Compare(boolInt(erra != nil), boolInt(errb != nil)), cmp.Compare(a, b))
	}
	return cmp.Or(ka.Addr.Compare(kb.Addr), cmp.Compare(ka.Port, kb.Port), cmp.Compare(ka.Proto, kb.Proto))
}

// compareAddrPort orders "ADDR:PORT" strings like compareVIP.
func compareAddrPort(a, b string) int {
	pa, erra := netip.ParseAddrPort(a)
	pb, errb := netip.ParseAddrPort(b)
	if erra != nil || errb != nil {
		return cmp.Or(cmp.Compare(boolInt(erra != nil), boolInt(errb != nil)), cmp.Compare(a, b))
	}
	return pa.Compare(pb)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// table aligns cells in columns with a tabwriter and trims the padding at
// the end of lines. Cells must not hold tabs or newlines; row replaces them.
type table struct {
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable() *table {
	t := &table{}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

var cellCleaner = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = cellCleaner.Replace(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) writeTo(w io.Writer) error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	var out bytes.Buffer
	for line := range strings.Lines(t.buf.String()) {
		out.WriteString(strings.TrimRight(line, " \n"))
		out.WriteByte('\n')
	}
	_, err := w.Write(out.Bytes())
	return err
}

func writeStatus(w io.Writer, s StatusInfo, now time.Time) error {
	t := newTable()
	t.row("Version:", s.Version)
	t.row("Uptime:", fmt.Sprintf("%s (started %s)", age(now, s.Started), clock(now, s.Started)))
	t.row("Config:", s.Config.File)
	t.row("  sha256:", shortSHA(s.Config.SHA256))
	t.row("  loaded:", when(now, s.Config.LoadedAt))
	if s.Config.SeedFile != "" {
		t.row("  seed:", "generated for this appliance, kept in "+s.Config.SeedFile+" (a fleet sets maglev.seed)")
	}

	r := s.LastReload
	switch {
	case r.At.IsZero() && r.Result == "":
		t.row("Last reload:", "none")
	case reloadFailed(r):
		t.row("Last reload:", fmt.Sprintf("%s (trigger %s), %s; the running configuration is unchanged", r.Result, r.Trigger, when(now, r.At)))
	default:
		t.row("Last reload:", fmt.Sprintf("%s (trigger %s), %s", r.Result, r.Trigger, when(now, r.At)))
	}
	for _, e := range r.Errors {
		t.row("", e)
	}

	a := s.Apply
	switch {
	case a.At.IsZero():
		t.row("Last apply:", "never")
	case len(a.Errors) == 0:
		t.row("Last apply:", fmt.Sprintf("%s, took %v, no errors", when(now, a.At), roundDuration(a.Duration)))
	default:
		t.row("Last apply:", fmt.Sprintf("%s, took %v, %d %s:", when(now, a.At), roundDuration(a.Duration), len(a.Errors), plural(len(a.Errors), "error", "errors")))
	}
	for _, e := range a.Errors {
		t.row("", e)
	}

	if len(s.Interfaces) == 0 {
		t.row("Interfaces:", "none")
	}
	for i, ifc := range s.Interfaces {
		key := ""
		if i == 0 {
			key = "Interfaces:"
		}
		t.row(key, ifc.Name, fmt.Sprintf("ifindex %d", ifc.IfIndex), ifc.Mode, fmt.Sprintf("program %d", ifc.ProgramID))
	}
	c := s.Counts
	t.row("Services:", fmt.Sprint(c.Services))
	t.row("VIPs:", fmt.Sprint(c.VIPs))
	t.row("Backends:", fmt.Sprint(c.Backends))
	t.row("Pinned flows:", fmt.Sprintf("%d IPv4, %d IPv6", c.Flows4, c.Flows6))
	if c.NATCapacity > 0 {
		t.row("NAT flows:", fmt.Sprintf("%d of %d", c.NATFlows, c.NATCapacity))
	}
	for i, a := range s.Announced {
		key := ""
		if i == 0 {
			key = "Announced:"
		}
		vips := "nothing"
		if len(a.VIPs) > 0 {
			vips = strings.Join(a.VIPs, ", ")
		}
		name := a.Interface
		if a.State != "" {
			name += " (" + a.State + ")"
		}
		t.row(key, name, vips)
	}
	// The sources of services, when there are others than the file.
	if len(s.Sources) > 1 {
		for i, src := range s.Sources {
			key := ""
			if i == 0 {
				key = "Sources:"
			}
			updated := "nothing yet"
			if !src.Updated.IsZero() {
				updated = "updated " + when(now, src.Updated)
			}
			cols := []string{key, src.Name, fmt.Sprintf("%d %s", src.Services, plural(src.Services, "service", "services")), updated}
			if src.Synced != nil {
				watch := "not synced"
				if *src.Synced {
					watch = "synced"
				}
				if !src.LastEvent.IsZero() {
					watch += ", last event " + when(now, src.LastEvent)
				}
				cols = append(cols, watch)
			}
			if src.Leader != nil {
				role := "follower"
				if *src.Leader {
					role = "leader"
				}
				cols = append(cols, role+" ("+src.Identity+")")
			}
			t.row(cols...)
		}
	}
	for i, c := range s.Conflicts {
		key := ""
		if i == 0 {
			key = "Conflicts:"
		}
		what := c.VIP
		if what == "" {
			what = "service name"
		}
		t.row(key, fmt.Sprintf("%s %s: %s held by %s (%s) since %s, left out", c.Source, c.Service, what, c.HeldBy, c.Owner, clock(now, c.Since)))
	}
	return t.writeTo(w)
}

func writeVIPs(w io.Writer, vs []VIPInfo) error {
	t := newTable()
	t.row("SERVICE", "VIP", "MODE", "BACKENDS", "PACKETS", "BYTES")
	for _, v := range vs {
		first := "(none)"
		if len(v.Backends) > 0 {
			first = vipBackend(v.Backends[0])
		}
		t.row(v.Service, v.VIP, v.Mode, first, fmt.Sprint(v.Stats.Packets), fmt.Sprint(v.Stats.Bytes))
		for _, b := range v.Backends[min(1, len(v.Backends)):] {
			t.row("", "", "", vipBackend(b), "", "")
		}
	}
	return t.writeTo(w)
}

func vipBackend(b VIPBackendInfo) string {
	health := "healthy"
	if !b.Healthy {
		health = "down"
	}
	return fmt.Sprintf("%s (id %d, weight %d, %s, %s)", b.Address, b.ID, b.Weight, health, percent(b.Share))
}

func writeBackends(w io.Writer, bs []BackendInfo) error {
	t := newTable()
	t.row("ID", "SERVICE", "VIP", "ADDRESS", "WEIGHT", "STATE", "SLOTS", "NEXT HOP", "PACKETS", "BYTES", "HEALTH CHECK", "ERROR")
	for _, b := range bs {
		t.row(fmt.Sprint(b.ID), b.Service, b.VIP, b.Address, fmt.Sprint(b.Weight), backendState(b),
			fmt.Sprint(b.Slots), nextHop(b), fmt.Sprint(b.Stats.Packets), fmt.Sprint(b.Stats.Bytes), healthCheck(b.Health), dash(b.Error))
	}
	return t.writeTo(w)
}

// healthCheck says a backend's check state, since when, and the last result
// ("-" without a check).
func healthCheck(h *HealthInfo) string {
	if h == nil {
		return "-"
	}
	out := h.State
	if !h.Since.IsZero() {
		out += " since " + h.Since.UTC().Format(time.RFC3339)
	}
	switch {
	case h.LastResult == "":
	case h.LastError != "":
		out += ", last " + h.LastResult + ": " + h.LastError
	default:
		out += ", last " + h.LastResult
	}
	return out
}

// backendState is drain for a backend of weight 0 (it gets no new flows
// whatever its health), else up or down by its health.
func backendState(b BackendInfo) string {
	switch {
	case b.Weight == 0:
		return "drain"
	case b.Healthy:
		return "up"
	}
	return "down"
}

func nextHop(b BackendInfo) string {
	switch {
	case b.NextHopMAC == "" && b.Interface == "":
		return "-"
	case b.Interface == "":
		return b.NextHopMAC
	case b.NextHopMAC == "":
		return "?@" + b.Interface
	}
	return b.NextHopMAC + "@" + b.Interface
}

// writeFlows writes the pinned flows, then the NAT flows (if any) in a
// table of their own.
func writeFlows(w io.Writer, fs []FlowInfo) error {
	secs := func(s float64) string { return roundDuration(time.Duration(s * float64(time.Second))).String() }
	pins, nat := newTable(), newTable()
	pins.row("CLIENT", "VIP", "BACKEND", "IDLE")
	nat.row("CLIENT", "VIP", "BACKEND", "SOURCE", "STATE", "AGE", "IDLE")
	var npins, nnat int
	for _, f := range fs {
		if f.Source != "" {
			nnat++
			nat.row(f.Client, f.VIP, fmt.Sprintf("%s (id %d)", dash(f.Backend), f.BackendID), f.Source, f.State, secs(f.AgeSec), secs(f.IdleSec))
			continue
		}
		npins++
		pins.row(f.Client, f.VIP, fmt.Sprintf("%s (id %d)", dash(f.Backend), f.BackendID), secs(f.IdleSec))
	}
	if npins > 0 || nnat == 0 {
		if err := pins.writeTo(w); err != nil {
			return err
		}
	}
	if nnat == 0 {
		return nil
	}
	if npins > 0 {
		if _, err := fmt.Fprintln(w, "\nNAT flows (snat services):"); err != nil {
			return err
		}
	}
	return nat.writeTo(w)
}

func writeMaglev(w io.Writer, m MaglevInfo) error {
	head := newTable()
	head.row("VIP:", m.VIP)
	head.row("Table size:", fmt.Sprint(m.TableSize))
	if err := head.writeTo(w); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t := newTable()
	t.row("ID", "ADDRESS", "WEIGHT", "SLOTS", "SHARE")
	for _, b := range m.Backends {
		t.row(fmt.Sprint(b.ID), b.Address, fmt.Sprint(b.Weight), fmt.Sprint(b.Slots), percent(b.Share))
	}
	return t.writeTo(w)
}

func writeExplain(w io.Writer, e ExplainInfo) error {
	if e.Program != nil && !e.Agree {
		if _, err := fmt.Fprintf(w, "!!! THE DATAPATH PROGRAM DISAGREES WITH ITS MODEL: %s.\n!!! This is a bug: please report it with the output of -o json.\n\n", e.Disagreement); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(w, "%s\n\n", e.Text); err != nil {
		return err
	}
	t := newTable()
	t.row("From:", e.From)
	vip := e.VIP
	if e.Service != "" {
		vip += " (service " + e.Service + ")"
	}
	t.row("VIP:", vip)
	if e.Packet != "" {
		t.row("Packet:", e.Packet)
	}
	t.row("Flow hash:", fmt.Sprintf("0x%08x", e.Hash))
	if e.TableSize > 0 {
		t.row("Slot:", fmt.Sprintf("%d of %d", e.Slot, e.TableSize))
	} else {
		t.row("Slot:", "- (empty table)")
	}
	if e.Backend != "" {
		t.row("Backend:", fmt.Sprintf("%s (id %d)", e.Backend, e.BackendID))
	} else {
		t.row("Backend:", "none")
	}
	t.row("Reason:", explainReason(e.Reason))
	switch {
	case !e.Transition:
		t.row("Transition:", "no")
	case e.Reason == "previous":
		t.row("Transition:", "yes: the flow's slot moved; a packet that is not a SYN stays on the previous table's backend")
	case e.PrevBackend == "":
		t.row("Transition:", "yes: the VIP's previous table is still consulted and gives the same backend")
	default:
		t.row("Transition:", "yes: a non-SYN packet of a flow that began before the table changed stays on "+e.PrevBackend+" (and pins the flow there)")
	}
	if e.Program != nil {
		t.row("Pin:", pinText(e.Pin))
		r := e.Program
		run := r.Verdict + " " + r.Reason
		if r.Backend != "" {
			run += fmt.Sprintf(", backend %s (id %d)", r.Backend, r.BackendID)
		}
		if r.Pin != "" {
			run += ", pin " + r.Pin
		}
		t.row("Program:", run)
		if r.Output != "" {
			t.row("Output:", r.Output)
		}
		if e.Agree {
			t.row("Check:", "the program does what the model says")
		} else {
			t.row("Check:", "DISAGREEMENT: "+e.Disagreement)
		}
	}
	return t.writeTo(w)
}

func pinText(p string) string {
	switch p {
	case "create":
		return "the packet pins the flow to its backend"
	case "replace":
		return "the packet replaces the flow's stale pin"
	}
	return "none"
}

func explainReason(r string) string {
	switch r {
	case "pinned":
		return "pinned: a conntrack entry keeps the flow on its backend"
	case "table":
		return "table: the Maglev table slot of the flow hash decides"
	case "previous":
		return "previous: the VIP's table changed moments ago; the previous table's backend keeps the flow"
	case "no-backend":
		return "no-backend: the VIP has no usable backend; the packet is dropped"
	}
	return r
}

func shortSHA(s string) string {
	if s == "" {
		return "-"
	}
	return s[:min(12, len(s))]
}

func percent(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// clock prints t in now's time zone.
func clock(now, t time.Time) string { return t.In(now.Location()).Format(time.RFC3339) }

// when prints t and how long before now it was.
func when(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s (%s ago)", clock(now, t), age(now, t))
}

// age prints now-t in two units at most: 42s, 5m03s, 2h05m, 3d04h.
func age(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// roundDuration keeps three significant figures or so: 1.23ms, 12.3s.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
