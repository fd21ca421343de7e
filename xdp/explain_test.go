package xdp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestExplain explains flows of a VIP in transition, one per rule, and
// checks that the model and the program's dry run agree, that they say what
// the case is about, and that explaining changed nothing.
func TestExplain(t *testing.T) {
	testnet.RequirePrivileged(t)
	d := fxOpen(t, Options{TransitionGrace: time.Hour})
	w := newDryWorld()
	w.apply(t, d)
	dst := netip.AddrPortFrom(w.key.Addr, w.key.Port)
	still := func() netip.AddrPort {
		for port := uint16(30000); ; port++ {
			src := netip.AddrPortFrom(fxClient4, port)
			if slot := Slot(FlowHash(src, dst, TCP, w.seed), len(w.first)); w.first[slot] == w.second[slot] {
				return src
			}
		}
	}()
	pinned := w.movedClient(t, 44000)
	if err := d.PinFlow(Flow{Src: pinned, Dst: dst, Proto: TCP, BackendID: 42}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		p         Packet
		rule, pin string
		backend   uint32 // 0: any
	}{
		{"table", Packet{Src: still, Dst: dst, Proto: TCP}, RuleTable, "", 0},
		{"table, UDP to a port-0 service", Packet{Src: still, Dst: netip.AddrPortFrom(w.any.Addr, 5353), Proto: UDP}, RuleTable, "", 0},
		{"pinned", Packet{Src: pinned, Dst: dst, Proto: TCP}, RulePinned, "", 42},
		{"transition, not a SYN", Packet{Src: w.movedClient(t, 40000), Dst: dst, Proto: TCP}, RulePrevious, "create", 0},
		{"transition, SYN", Packet{Src: w.movedClient(t, 41000), Dst: dst, Proto: TCP, SYN: true}, RuleTable, "create", 0},
		{"transition, ICMP error", Packet{Src: w.movedClient(t, 42000), Dst: dst, Proto: TCP, ICMPError: true}, RulePrevious, "", 0},
		{"not a VIP", Packet{Src: still, Dst: netip.AddrPortFrom(fxOther4, 80), Proto: TCP}, RuleNotVIP, "", 0},
		{"IPv6, no backend", Packet{Src: netip.AddrPortFrom(fxClient6, 1), Dst: netip.AddrPortFrom(w.empty.Addr, 80), Proto: TCP}, RuleNoBackend, "", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(t, d, w.key, w.ids)
			e, err := d.Explain(c.p)
			if err != nil {
				t.Fatal(err)
			}
			if !e.Agree || e.Disagreement != "" {
				t.Errorf("disagreement: %s", e.Disagreement)
			}
			if e.Model.Rule != c.rule || e.Model.Pin != c.pin || (c.backend != 0 && e.Model.BackendID != c.backend) {
				t.Errorf("model: rule %s, pin %q, backend %d; want %s, %q, %d", e.Model.Rule, e.Model.Pin, e.Model.BackendID, c.rule, c.pin, c.backend)
			}
			if e.Model.Forwarded() && (e.Program.Verdict != XDPTx || e.Program.BackendID != e.Model.BackendID) {
				t.Errorf("program: verdict %d backend %d, want XDP_TX to %d", e.Program.Verdict, e.Program.BackendID, e.Model.BackendID)
			}
			if err := packet.VerifyFrame(e.Frame); err != nil {
				t.Errorf("explained frame: %v", err)
			}
			if diff := snapshotDiff(before, snapshot(t, d, w.key, w.ids)); diff != "" {
				t.Errorf("explaining changed the datapath (-before +after):\n%s", diff)
			}
		})
	}
}

// TestDisagreement checks the line Explain prints when the program and the
// model part.
func TestDisagreement(t *testing.T) {
	fwd := Decision{IsVIP: true, Rule: RuleTable, BackendID: 3}
	for _, c := range []struct {
		name string
		p    Packet
		m    Decision
		r    DryRunResult
		want string // "" for agreement, else a part of the line
	}{
		{"same backend", Packet{}, fwd, DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: 3}, ""},
		{"same backend, dropped after the choice", Packet{}, fwd, DryRunResult{Verdict: XDPDrop, Reason: "drop/no_encap_source", BackendID: 3}, ""},
		{"other backend", Packet{}, fwd, DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: 4},
			"the model sends it to backend 3 (table); the program counted tx/dsr_l2 with backend 4"},
		{"program finds no backend", Packet{}, fwd, DryRunResult{Verdict: XDPDrop, Reason: "drop/no_backend"}, "backend 3"},
		{"pins differ", Packet{}, Decision{IsVIP: true, Rule: RulePrevious, BackendID: 3, Pin: "create"},
			DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: 3}, "the model writes pin create; the program writes none"},
		{"not a VIP, passed", Packet{}, Decision{Rule: RuleNotVIP}, DryRunResult{Verdict: XDPPass, Reason: "pass/not_vip"}, ""},
		{"not a VIP, forwarded", Packet{}, Decision{Rule: RuleNotVIP}, DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: 2}, "the model finds no service"},
		{"no backend on both sides", Packet{}, Decision{IsVIP: true, Rule: RuleNoBackend, BackendID: 9}, DryRunResult{Verdict: XDPDrop, Reason: "drop/no_backend"}, ""},
		{"no backend, program forwards", Packet{}, Decision{IsVIP: true, Rule: RuleNoBackend, BackendID: 9}, DryRunResult{Verdict: XDPTx, Reason: "tx/dsr_l2", BackendID: 9}, "no usable backend (id 9)"},
	} {
		got := disagreement(c.p, c.m, c.r)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
