package controlplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/xdplb/xdplb/announce"
	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/lb/health"
	"github.com/xdplb/xdplb/xdp"
)

// What the control socket and the metrics collector ask.

// Status answers `xdplb status`.
func (p *Plane) Status() StatusInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.rec.Status()
	s := StatusInfo{
		Version: p.version, Started: p.started,
		Config:     ConfigInfo{File: p.cfgPath, SHA256: p.cfg.SHA256(), LoadedAt: p.loadedAt},
		LastReload: p.lastReload,
		Apply:      ApplyInfo{At: st.LastApply, Duration: st.Duration},
		Counts:     Counts{Services: len(p.services), VIPs: len(st.VIPs), Flows4: p.flows4, Flows6: p.flows6},
	}
	if len(p.cfg.SNAT.Sources) > 0 {
		if nat, err := p.dp.NATStats(); err == nil {
			s.Counts.NATFlows, s.Counts.NATCapacity = nat.Flows, nat.Capacity
		}
	}
	if !p.cfg.Maglev.SeedSet {
		s.Config.SeedFile = p.seedFile
	}
	s.Apply.Errors = append(s.Apply.Errors, p.allocErrs...)
	for _, e := range st.Errors {
		s.Apply.Errors = append(s.Apply.Errors, fmt.Sprintf("%s %s: %s", e.Service, e.VIP, e.Err))
	}
	for _, v := range st.VIPs {
		s.Counts.Backends += len(v.Backends)
	}
	for _, a := range p.announcers {
		ai := AnnounceInfo{Interface: a.Name(), VIPs: []string{}}
		vips := p.announced
		switch {
		case p.bgp != nil && a == Announcer(p.bgp):
			vips = p.bgp.Advertised()
			if p.drained {
				ai.State = "drained"
			}
		case p.l2[a] && p.cfg.Announce.L2.Mode == config.L2ModeExternal:
			ai.State = l2StateName(p.l2Active)
			if !p.l2Active {
				vips = nil
			}
		}
		for _, v := range vips {
			ai.VIPs = append(ai.VIPs, v.String())
		}
		s.Announced = append(s.Announced, ai)
	}
	for _, a := range p.attached {
		pid, _ := a.ProgramID()
		s.Interfaces = append(s.Interfaces, InterfaceInfo{Name: a.Interface, IfIndex: a.IfIndex, Mode: string(a.Mode), ProgramID: uint32(pid)})
	}
	sort.Slice(s.Interfaces, func(i, j int) bool { return s.Interfaces[i].Name < s.Interfaces[j].Name })
	for _, name := range p.order {
		si := p.sourceInfo[name]
		si.Name = name
		for _, src := range p.sources {
			if src.Name() != name {
				continue
			}
			if r, ok := src.(SyncReporter); ok {
				synced := r.Synced()
				si.Synced, si.LastEvent = &synced, r.LastEvent()
			}
			if r, ok := src.(LeaderReporter); ok {
				leader := r.Leader()
				si.Leader, si.Identity = &leader, r.Identity()
			}
		}
		s.Sources = append(s.Sources, si)
	}
	s.Conflicts = append(s.Conflicts, p.conflicts...)
	return s
}

// VIPs answers `xdplb vips`: each VIP with its backends and counters.
func (p *Plane) VIPs() []VIPInfo {
	var out []VIPInfo
	for _, v := range p.rec.Status().VIPs {
		vi := VIPInfo{Service: v.Service, VIP: v.Key.String(), Mode: v.Mode.String(), TableSize: v.TableSize}
		for _, b := range v.Backends {
			vi.Backends = append(vi.Backends, VIPBackendInfo{
				ID: b.ID, Address: backendAddr(b.Addr), Weight: b.Weight, Healthy: b.Healthy,
				Slots: b.Slots, Share: share(b.Slots, v.TableSize), Error: b.Error,
			})
		}
		vi.Stats, _ = p.dp.VIPStats(v.Key)
		out = append(out, vi)
	}
	return out
}

func backendAddr(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ap.Addr().String()
	}
	return ap.String()
}

func share(slots, size int) float64 {
	if size == 0 {
		return 0
	}
	return float64(slots) / float64(size)
}

// Backends answers `xdplb backends`.
func (p *Plane) Backends() []BackendInfo {
	entries, _ := p.dp.Backends()
	checks := map[lb.BackendKey]health.State{}
	for _, h := range p.checker.Snapshot() {
		checks[h.Key] = h
	}
	var out []BackendInfo
	for _, v := range p.rec.Status().VIPs {
		for _, b := range v.Backends {
			bi := BackendInfo{ID: b.ID, Service: v.Service, VIP: v.Key.String(), Address: backendAddr(b.Addr), Weight: b.Weight, Healthy: b.Healthy, Slots: b.Slots, Error: b.Error}
			if e, ok := entries[b.ID]; ok {
				bi.NextHopMAC = e.NextHopMAC.String()
				if ifi, err := interfaceName(e.IfIndex); err == nil {
					bi.Interface = ifi
				}
			}
			if h, ok := checks[lb.BackendKey{Service: v.Service, Backend: b.Addr}]; ok {
				bi.Health = &HealthInfo{State: "down", Since: h.Since, LastCheck: h.LastCheck, LastResult: string(h.LastResult), LastError: h.LastError}
				switch {
				case h.Pending:
					bi.Health.State = "pending"
				case h.Up:
					bi.Health.State = "up"
				}
			}
			bi.Stats, _ = p.dp.BackendStats(b.ID)
			out = append(out, bi)
		}
	}
	return out
}

func (p *Plane) backendNames() map[uint32]string {
	names := map[uint32]string{}
	for _, v := range p.rec.Status().VIPs {
		for _, b := range v.Backends {
			names[b.ID] = backendAddr(b.Addr)
		}
	}
	return names
}

// Flows answers `xdplb conntrack`: the pinned flows and the NAT flows, of
// one VIP when vip is not empty.
func (p *Plane) Flows(vip string) ([]FlowInfo, error) {
	var filter *xdp.VIPKey
	if vip != "" {
		k, err := xdp.ParseVIPKey(vip)
		if err != nil {
			return nil, err
		}
		filter = &k
	}
	names := p.backendNames()
	var out []FlowInfo
	err := p.dp.Flows(func(f xdp.Flow) bool {
		k, ok := p.dp.LookupVIP(f.Dst, f.Proto)
		if filter != nil && (!ok || k != *filter) {
			return true
		}
		out = append(out, FlowInfo{
			Client: f.Src.String(), VIP: xdp.VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}.String(),
			BackendID: f.BackendID, Backend: names[f.BackendID], IdleSec: f.Idle.Seconds(),
		})
		return len(out) < 100000
	})
	if err != nil || len(out) >= 100000 {
		return out, err
	}
	err = p.dp.NATFlows(func(f xdp.NATFlow) bool {
		k, ok := p.dp.LookupVIP(f.VIP, f.Proto)
		if filter != nil && (!ok || k != *filter) {
			return true
		}
		out = append(out, FlowInfo{
			Client: f.Client.String(), VIP: xdp.VIPKey{Addr: f.VIP.Addr(), Port: f.VIP.Port(), Proto: f.Proto}.String(),
			BackendID: f.BackendID, Backend: f.Backend.String(), IdleSec: f.Idle.Seconds(),
			Source: f.Source.String(), State: f.State, AgeSec: f.Age.Seconds(),
		})
		return len(out) < 100000
	})
	return out, err
}

// Maglev answers `xdplb maglev`: the slot share of each backend of a VIP.
func (p *Plane) Maglev(vip string) (MaglevInfo, error) {
	k, err := xdp.ParseVIPKey(vip)
	if err != nil {
		return MaglevInfo{}, err
	}
	for _, v := range p.rec.Status().VIPs {
		if v.Key != k {
			continue
		}
		mi := MaglevInfo{VIP: v.Key.String(), TableSize: v.TableSize}
		for _, b := range v.Backends {
			mi.Backends = append(mi.Backends, SlotsShare{ID: b.ID, Address: backendAddr(b.Addr), Weight: b.Weight, Slots: b.Slots, Share: share(b.Slots, v.TableSize)})
		}
		return mi, nil
	}
	return MaglevInfo{}, fmt.Errorf("no VIP %s", k)
}

// Explain answers `xdplb explain`: where a client's flow to a VIP goes and
// why, by the datapath's Go model (slot, table, pin), next to what the
// program itself does with the flow's packet: its dry-run build, run against
// the live maps (BPF_PROG_TEST_RUN; nothing is counted, pinned or sent).
// The packet is a TCP ACK or a UDP datagram, or a TCP SYN when syn is set.
func (p *Plane) Explain(from, vip string, syn bool) (ExplainInfo, error) {
	src, err := netip.ParseAddrPort(from)
	if err != nil {
		return ExplainInfo{}, fmt.Errorf("--from %q: %v", from, err)
	}
	to, err := xdp.ParseVIPKey(vip)
	if err != nil {
		return ExplainInfo{}, err
	}
	dst := netip.AddrPortFrom(to.Addr, to.Port)
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if src.Addr().Is4() != dst.Addr().Is4() {
		return ExplainInfo{}, fmt.Errorf("--from %s and the VIP %s are of two families", src, dst.Addr())
	}
	pkt := xdp.Packet{Src: src, Dst: dst, Proto: to.Proto, SYN: syn && to.Proto == xdp.TCP}
	x, err := p.dp.Explain(pkt)
	if err != nil {
		return ExplainInfo{}, err
	}
	m := x.Model
	if !m.IsVIP {
		return ExplainInfo{}, fmt.Errorf("%s is no VIP: the datapath passes such packets to the host's stack", vip)
	}
	p.mu.Lock()
	service := p.vips[m.VIP]
	p.mu.Unlock()
	names := p.backendNames()
	name := func(id uint32) string {
		if n, ok := names[id]; ok {
			return n
		}
		return fmt.Sprintf("id %d", id)
	}
	e := ExplainInfo{
		From: src.String(), VIP: m.VIP.String(), Service: service, Packet: packetKind(pkt),
		Hash: m.Hash, Slot: int(m.Slot), TableSize: m.TableSize, Transition: m.Transition, Pin: m.Pin,
		Agree: x.Agree, Disagreement: x.Disagreement,
	}
	if m.BackendID != 0 && m.Rule != xdp.RuleNoBackend {
		e.BackendID, e.Backend = m.BackendID, name(m.BackendID)
	}
	if m.Transition && m.PrevBackendID != 0 && m.PrevBackendID != m.BackendID {
		e.PrevBackend = name(m.PrevBackendID)
	}
	r := x.Program
	e.Program = &ProgramRun{Verdict: verdictName(r.Verdict), Reason: r.Reason, BackendID: r.BackendID, Pin: r.Pin, Output: frameSummary(r.Out)}
	if r.BackendID != 0 {
		e.Program.Backend = name(r.BackendID)
	}
	if r.Verdict == xdp.XDPDrop || r.Verdict == xdp.XDPPass {
		e.Program.Output = ""
	}
	left := time.Duration(0)
	if m.Transition {
		_, _, left, _ = p.dp.Tables(m.VIP)
	}
	switch m.Rule {
	case xdp.RulePinned:
		e.Reason = "pinned"
		e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): the flow is pinned to it (a conntrack entry made when the VIP's table changed).", e.From, vip, e.Backend, e.BackendID)
	case xdp.RulePrevious:
		e.Reason = "previous"
		e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): the VIP's table changed moments ago (%s of its grace period left) and moved the flow's slot %d of %d; a packet that is not a SYN stays on the previous table's backend and pins the flow there.",
			e.From, vip, e.Backend, e.BackendID, left.Round(time.Second), e.Slot, e.TableSize)
	case xdp.RuleNATFlow:
		e.Reason = "nat-flow"
		e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): the flow's NAT entry keeps it there while that backend is up (see xdplb conntrack for its SNAT source and port).", e.From, vip, e.Backend, e.BackendID)
	case xdp.RuleNATNoFlow:
		e.Reason = "nat-no-flow"
		e.Text = fmt.Sprintf("%s -> %s is dropped: a snat service makes a NAT flow on a TCP SYN, and this flow has none (try --syn).", e.From, vip)
	case xdp.RuleNATBackendLost:
		e.Reason = "nat-backend-lost"
		e.Text = fmt.Sprintf("%s -> %s is answered with a RST: the backend of the flow's NAT entry is down or gone, so the flow is removed.", e.From, vip)
	case xdp.RuleNATICMP:
		e.Reason = "nat-icmp"
		e.Text = fmt.Sprintf("%s -> %s: ICMP errors arriving at a snat service's VIP are dropped.", e.From, vip)
	case xdp.RuleNoBackend:
		e.Reason = "no-backend"
		e.Text = fmt.Sprintf("%s -> %s is dropped: the VIP has no usable backend (slot %d of %d).", e.From, vip, e.Slot, e.TableSize)
	default:
		e.Reason = "table"
		e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): Maglev slot %d of %d (flow hash %#08x).", e.From, vip, e.Backend, e.BackendID, e.Slot, e.TableSize, e.Hash)
		if x.Model.VIP.Addr.IsValid() && p.isSNAT(x.Model.VIP) {
			e.Text += " A snat service: the packet makes the flow's NAT entry there (a TCP SYN or a UDP datagram), which keeps it on that backend from then on."
		}
		if e.PrevBackend != "" {
			e.Text += fmt.Sprintf(" The VIP's table changed moments ago (%s of its grace period left): a packet of a flow that began before (not a SYN) stays on %s and pins the flow there.", left.Round(time.Second), e.PrevBackend)
		}
	}
	if !e.Agree {
		p.log.Error("explain: the datapath program and its model disagree", "from", e.From, "vip", e.VIP, "disagreement", e.Disagreement)
	}
	return e, nil
}

// isSNAT says whether the service of k is a snat one.
func (p *Plane) isSNAT(k xdp.VIPKey) bool {
	for _, v := range p.dp.VIPs() {
		if v.Key == k {
			return v.Mode == xdp.ModeSNAT
		}
	}
	return false
}

// packetKind names the packet Explain runs.
func packetKind(p xdp.Packet) string {
	switch {
	case p.Proto == xdp.UDP:
		return "UDP datagram"
	case p.SYN:
		return "TCP SYN"
	}
	return "TCP ACK"
}

func verdictName(v uint32) string {
	switch v {
	case xdp.XDPAborted:
		return "XDP_ABORTED"
	case xdp.XDPDrop:
		return "XDP_DROP"
	case xdp.XDPPass:
		return "XDP_PASS"
	case xdp.XDPTx:
		return "XDP_TX"
	case xdp.XDPRedirect:
		return "XDP_REDIRECT"
	}
	return fmt.Sprintf("verdict %d", v)
}

// Top answers `xdplb top`: the VIPs and backends with their counters, and
// the datapath's verdict counters, read at one moment.
func (p *Plane) Top() (TopInfo, error) {
	t := TopInfo{At: time.Now(), VIPs: p.VIPs(), Backends: p.Backends()}
	cs, err := p.dp.Counters()
	if err != nil {
		return TopInfo{}, err
	}
	for _, c := range cs {
		t.Counters = append(t.Counters, CounterInfo{Action: c.Action, Reason: c.Reason, Value: c.Value})
	}
	return t, nil
}

// What the metrics collector reads.

// DatapathCounters returns the program's verdict and event counters.
func (p *Plane) DatapathCounters() ([]xdp.Counter, error) { return p.dp.Counters() }

// VIPMetrics returns each VIP with its counters.
func (p *Plane) VIPMetrics() ([]VIPMetric, error) {
	var out []VIPMetric
	for _, v := range p.rec.Status().VIPs {
		s, err := p.dp.VIPStats(v.Key)
		if errors.Is(err, xdp.ErrNotFound) {
			continue // removed since the status was taken
		}
		if err != nil {
			return nil, err
		}
		out = append(out, VIPMetric{Service: v.Service, VIP: v.Key.Addr.String(), Port: strconv.Itoa(int(v.Key.Port)), Protocol: v.Key.Proto.String(), Stats: s})
	}
	return out, nil
}

// BackendMetrics returns each backend of each VIP with its counters.
func (p *Plane) BackendMetrics() ([]BackendMetric, error) {
	var out []BackendMetric
	for _, v := range p.rec.Status().VIPs {
		for _, b := range v.Backends {
			s, err := p.dp.BackendStats(b.ID)
			if errors.Is(err, xdp.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, BackendMetric{Service: v.Service, VIP: v.Key.Addr.String(), Port: strconv.Itoa(int(v.Key.Port)), Protocol: v.Key.Proto.String(), Backend: backendAddr(b.Addr), Up: b.Healthy, Stats: s})
		}
	}
	return out, nil
}

// NATStats returns the NAT table's use and the SNAT counters.
func (p *Plane) NATStats() (xdp.NATStats, error) { return p.dp.NATStats() }

// ConntrackEntries returns the pinned flows per family as of the last
// maintenance pass, and the capacity of each family's table.
func (p *Plane) ConntrackEntries() (v4, v6, capacity int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flows4, p.flows6, int(p.cfg.Conntrack.MaxFlows)
}

// ConfigSHA256 returns the hex SHA-256 of the running configuration file.
func (p *Plane) ConfigSHA256() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg.SHA256()
}

// AnnounceStats returns the counters of each L2 announcer.
func (p *Plane) AnnounceStats() []announce.Stats {
	var out []announce.Stats
	for _, a := range p.announcers {
		if s, ok := a.(interface{ Stats() announce.Stats }); ok {
			out = append(out, s.Stats())
		}
	}
	return out
}

// Conflicts returns, for each source, how many of its claims (VIPs or
// service names) another source holds.
func (p *Plane) Conflicts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, name := range p.order {
		out[name] = 0
	}
	for _, c := range p.conflicts {
		out[c.Source]++
	}
	return out
}

// HealthTransitions counts backends going up and down.
func (p *Plane) HealthTransitions() (toUp, toDown uint64) {
	t := p.checker.Transitions()
	return t.ToUp, t.ToDown
}

// ReloadCounts returns how many configuration loads succeeded and failed.
func (p *Plane) ReloadCounts() (success, failure uint64) {
	return p.reloadsOK.Load(), p.reloadsFailed.Load()
}

func interfaceName(ifindex int) (string, error) {
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return "", err
	}
	return ifi.Name, nil
}
