package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/xdplb/xdplb/config"
)

// The exit statuses of plan, as diff(1) has them: 0 nothing changes, 1
// something changes, 2 trouble (errors in the file, no daemon, a usage
// error).
const (
	planSame    = 0
	planChanges = 1
	planTrouble = 2
)

// planMoves is how many moves per VIP the table shows; -o json has them all.
const planMoves = 8

func runPlan(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("plan", "xdplb plan FILE [--socket PATH] [-o table|json]",
		"Compares FILE with the running configuration without applying anything: the\n"+
			"services and VIPs it adds, removes and changes; for each VIP the share of its\n"+
			"Maglev table that moves and to which backends; an estimate of the live flows\n"+
			"that would need pins; what the announcers would start or stop announcing.\n"+
			"Errors in FILE are printed as 'xdplb check' prints them.\n"+
			"Exit status: 0 nothing would change, 1 something would, 2 errors.")
	pos, err := c.parse(args, out)
	if err != nil {
		return planError(helpIsNoError(err))
	}
	if len(pos) != 1 {
		return exitStatus{planTrouble, "plan: want one argument, the configuration file (see 'xdplb plan -h')"}
	}
	path, err := filepath.Abs(pos[0])
	if err != nil {
		return exitStatus{planTrouble, err.Error()}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return exitStatus{planTrouble, fmt.Sprintf("plan: reading config: %v", err)}
	}
	// The errors of the file, checked here as `xdplb check` does: they need
	// no daemon.
	if _, err := config.CheckData(path, data); err != nil {
		var list config.ErrorList
		if !errors.As(err, &list) {
			return exitStatus{planTrouble, err.Error()}
		}
		p := PlanInfo{File: pos[0], VIPs: []VIPPlanInfo{}}
		for _, e := range list {
			p.Errors = append(p.Errors, e.Error())
		}
		return printPlan(c, out, p)
	}
	var p PlanInfo
	if err := c.call(ctx, Request{Name: path, Config: data}, &p); err != nil {
		return exitStatus{planTrouble, err.Error()}
	}
	return printPlan(c, out, p)
}

// planError turns the errors of parse into exit status 2.
func planError(err error) error {
	if err == nil {
		return nil
	}
	return exitStatus{planTrouble, err.Error()}
}

// printPlan prints p and returns the exit status it means.
func printPlan(c *cliCommand, out io.Writer, p PlanInfo) error {
	p.VIPs = nonNil(p.VIPs)
	if err := c.print(out, p, func(w io.Writer) error { return writePlan(w, p) }); err != nil {
		return exitStatus{planTrouble, err.Error()}
	}
	switch {
	case len(p.Errors) > 0:
		return exitStatus{code: planTrouble}
	case p.Changed:
		return exitStatus{code: planChanges}
	}
	return nil
}

func writePlan(w io.Writer, p PlanInfo) error {
	var b strings.Builder
	if len(p.Errors) > 0 {
		fmt.Fprintf(&b, "%s: not applicable, %d %s:\n", p.File, len(p.Errors), plural(len(p.Errors), "error", "errors"))
		for _, e := range p.Errors {
			fmt.Fprintf(&b, "  %s\n", e)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	fmt.Fprintf(&b, "Plan: %s (sha256 %s) against the running configuration (sha256 %s)\n", p.File, shortSHA(p.Candidate), shortSHA(p.Running))
	if !p.Changed {
		b.WriteString("\nNothing would change.\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	if len(p.Services) > 0 {
		t := newTable()
		t.row("SERVICE", "ACTION")
		for _, s := range p.Services {
			t.row(s.Name, s.Action)
		}
		b.WriteString("\n")
		if err := t.writeTo(&b); err != nil {
			return err
		}
	}
	for _, v := range p.VIPs {
		if v.Action == "same" {
			continue
		}
		fmt.Fprintf(&b, "\nVIP %s (service %s): %s\n", v.VIP, v.Service, v.Action)
		for _, ch := range v.Changes {
			fmt.Fprintf(&b, "  %s\n", ch)
		}
		switch {
		case v.Action == "add":
			fmt.Fprintf(&b, "  table: %d slots, new\n", v.TableSize)
		case v.Action == "remove":
			fmt.Fprintf(&b, "  table: %d slots, removed\n", v.OldTableSize)
		case v.OldTableSize == v.TableSize:
			fmt.Fprintf(&b, "  table: %d of %d slots move (%s of flows)\n", v.SlotsMoved, v.TableSize, percent2(v.Moved))
		default:
			fmt.Fprintf(&b, "  table: %d -> %d slots, %s of flows move\n", v.OldTableSize, v.TableSize, percent2(v.Moved))
		}
		if l := v.Later; l != nil {
			fmt.Fprintf(&b, "  once %s %s its health check: %d of %d slots move (%s of flows)\n",
				strings.Join(l.Pending, ", "), plural(len(l.Pending), "passes", "pass"), l.SlotsMoved, v.TableSize, percent2(l.Moved))
		}
		if len(v.Moves) > 0 && v.Action == "change" {
			t := newTable()
			t.row("", "FROM", "TO", "SLOTS", "FLOWS")
			for _, m := range v.Moves[:min(planMoves, len(v.Moves))] {
				t.row("", m.From, m.To, fmt.Sprint(m.Slots), percent2(m.Share))
			}
			if len(v.Moves) > planMoves {
				t.row("", fmt.Sprintf("(%d more)", len(v.Moves)-planMoves), "", "", "")
			}
			if err := t.writeTo(&b); err != nil {
				return err
			}
		}
		if v.Action != "add" {
			pe := v.Pins
			fmt.Fprintf(&b, "  pinned flows: %d now, %d would lose their pin\n", pe.Pinned, pe.PinsLost)
			if pe.Window > 0 && v.Action == "change" && strings.HasPrefix(pe.Basis, "TCP") {
				moved := v.Moved
				if v.Later != nil {
					moved = v.Later.Moved
				}
				fmt.Fprintf(&b, "  flows to pin: ~%d (estimated: %d TCP SYNs in the last %s, times the %s of flows that move)\n",
					pe.Estimate, pe.NewFlows, roundDuration(time.Duration(pe.Window*float64(time.Second))), percent2(moved))
			} else if pe.Basis != "" {
				fmt.Fprintf(&b, "  flows to pin: %s\n", pe.Basis)
			}
		}
	}
	for _, a := range p.Announce {
		if len(a.Start)+len(a.Stop) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\nAnnouncer %s: start %s; stop %s\n", a.Announcer, listOrDash(a.Start), listOrDash(a.Stop))
	}
	if len(p.Other) > 0 {
		b.WriteString("\nOther changes:\n")
		for _, o := range p.Other {
			fmt.Fprintf(&b, "  %s\n", o)
		}
	}
	if len(p.ApplyErrors) > 0 {
		fmt.Fprintf(&b, "\nThe apply would leave out:\n")
		for _, e := range p.ApplyErrors {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func listOrDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}

func percent2(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) }
