package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/lb/health"
	"github.com/xdplb/xdplb/xdp"
)

// Plan compares a candidate configuration with the running one without
// applying anything: the services and VIPs it adds, removes and changes,
// the share of each VIP's Maglev table that moves and to which backends, an
// estimate of the live flows that would need pins, what the announcers
// would start and stop announcing. data is the file's content (name is what
// errors call it); nil plans the daemon's own file, as a reload would read
// it. A file with errors is planned no further: Errors holds them, worded
// as `xdplb check` words them.
func (p *Plane) Plan(ctx context.Context, name string, data []byte) (PlanInfo, error) {
	if data == nil {
		name = p.cfgPath
		b, err := os.ReadFile(p.cfgPath)
		if err != nil {
			return PlanInfo{}, fmt.Errorf("reading config: %w", err)
		}
		data = b
	}
	info := PlanInfo{File: name, VIPs: []VIPPlanInfo{}}
	cfg, err := config.CheckData(name, data)
	if err != nil {
		var list config.ErrorList
		if !errors.As(err, &list) {
			return PlanInfo{}, err
		}
		for _, e := range list {
			info.Errors = append(info.Errors, e.Error())
		}
		return info, nil
	}

	p.mu.Lock()
	running := p.cfg
	info.Running = running.SHA256()
	info.Candidate = cfg.SHA256()
	if err := tableResize(running, cfg); err != nil {
		info.Errors = append(info.Errors, err.Error())
	}
	info.Other = configChanges(running, cfg)
	addrs, svcErrs, err := p.alloc.Preview(cfg)
	if err != nil {
		p.mu.Unlock()
		return PlanInfo{}, err
	}
	offers := maps.Clone(p.offers)
	offers[FileSource] = cfg.Services(addrs)
	services, _ := p.merger.clone().merge(p.order, offers, time.Now())
	announced := slices.Clone(p.announced)
	p.mu.Unlock()

	for name, err := range svcErrs {
		info.ApplyErrors = append(info.ApplyErrors, fmt.Sprintf("%s: no address: %v", name, err))
	}
	seed := cfg.Maglev.Seed
	if !cfg.Maglev.SeedSet {
		var fresh bool
		if seed, fresh, err = peekSeed(cfg.Paths.State); err != nil {
			return PlanInfo{}, err
		}
		if fresh {
			info.Other = append(info.Other, "maglev.seed: none set and none kept yet: a new one would be made, and every flow moves")
		}
	}
	state := lb.State{Seed: seed}
	for _, s := range services {
		state.Services = append(state.Services, lbService(s))
	}
	targets := health.Targets(services)
	plan := p.rec.Plan(ctx, state, p.checker.PlannedHealth(targets, false))
	// The tables once the new backends' checks pass, when that differs.
	later := map[xdp.VIPKey]lb.VIPPlan{}
	for _, v := range p.rec.Plan(ctx, state, p.checker.PlannedHealth(targets, true)).VIPs {
		later[v.Key] = v
	}
	for _, e := range plan.Errors {
		info.ApplyErrors = append(info.ApplyErrors, fmt.Sprintf("%s %s: %s", e.Service, e.VIP, e.Err))
	}
	slices.Sort(info.ApplyErrors)

	pins := p.pinsByVIP()
	window, syns := p.newFlowsSince(time.Now().Add(-running.Conntrack.IdleTimeout))
	for _, v := range plan.VIPs {
		vi := VIPPlanInfo{
			VIP: v.Key.String(), Service: v.Service, Action: v.Action, Changes: v.Changes,
			OldTableSize: v.OldSize, TableSize: v.Size, SlotsMoved: v.SlotsMoved, Moved: v.Moved,
		}
		for _, m := range v.Moves {
			vi.Moves = append(vi.Moves, MoveInfo{From: moveEnd(m.From), To: moveEnd(m.To), Slots: m.Slots, Share: m.Share})
		}
		for _, b := range v.Backends {
			vi.Backends = append(vi.Backends, BackendPlanInfo{Address: backendAddr(b.Addr), ID: b.ID, Weight: b.Weight, Healthy: b.Healthy, OldSlots: b.OldSlots, Slots: b.Slots, Change: b.Change, Error: b.Error})
		}
		est := v
		if l, ok := later[v.Key]; ok && (l.SlotsMoved != v.SlotsMoved || l.Moved != v.Moved) {
			vi.Later = &LaterInfo{SlotsMoved: l.SlotsMoved, Moved: l.Moved}
			for _, b := range l.Backends {
				if b.Healthy && !healthyIn(v, b.Addr) && b.Change != "removed" {
					vi.Later.Pending = append(vi.Later.Pending, backendAddr(b.Addr))
				}
			}
			if v.Action == lb.ActionSame {
				vi.Action = lb.ActionChange
			}
			est = l
		}
		if vi.Action != lb.ActionSame && vi.Action != lb.ActionAdd {
			vi.Pins = estimatePins(est, pins[v.Key], window, syns)
		}
		info.VIPs = append(info.VIPs, vi)
	}
	info.Services = servicePlans(info.VIPs)

	// The announcers: the same decision applyConfig makes, on the plan.
	count := map[string]int{}
	for _, v := range plan.VIPs {
		if v.Action == lb.ActionRemove {
			continue
		}
		n := 0
		for _, b := range v.Backends {
			if b.Healthy && b.Weight > 0 && b.Error == "" && b.Change != "removed" {
				n++
			}
		}
		count[v.Service] = max(count[v.Service], n)
	}
	next := announceable(services, count)
	var start, stop []string
	for _, a := range next {
		if !slices.Contains(announced, a) {
			start = append(start, a.String())
		}
	}
	for _, a := range announced {
		if !slices.Contains(next, a) {
			stop = append(stop, a.String())
		}
	}
	for _, a := range p.announcers {
		info.Announce = append(info.Announce, AnnouncePlan{Announcer: a.Name(), Start: start, Stop: stop})
	}
	for _, v := range info.VIPs {
		if v.Later != nil {
			info.Changed = true
		}
	}
	info.Changed = info.Changed || plan.Changed() || len(info.Other) > 0 || len(start)+len(stop) > 0
	return info, nil
}

// healthyIn says whether the plan has the backend at ap healthy.
func healthyIn(v lb.VIPPlan, ap netip.AddrPort) bool {
	for _, b := range v.Backends {
		if b.Addr == ap {
			return b.Healthy
		}
	}
	return false
}

func moveEnd(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return "none"
	}
	return backendAddr(ap)
}

// servicePlans sums the VIPs' actions per service.
func servicePlans(vips []VIPPlanInfo) []ServicePlan {
	by := map[string][]string{}
	var names []string
	for _, v := range vips {
		if _, ok := by[v.Service]; !ok {
			names = append(names, v.Service)
		}
		by[v.Service] = append(by[v.Service], v.Action)
	}
	slices.Sort(names)
	out := []ServicePlan{}
	for _, n := range names {
		acts := by[n]
		action := lb.ActionChange
		switch {
		case allEqual(acts, lb.ActionSame):
			action = lb.ActionSame
		case allEqual(acts, lb.ActionAdd):
			action = lb.ActionAdd
		case allEqual(acts, lb.ActionRemove):
			action = lb.ActionRemove
		}
		out = append(out, ServicePlan{Name: n, Action: action})
	}
	return out
}

func allEqual(s []string, v string) bool {
	for _, x := range s {
		if x != v {
			return false
		}
	}
	return true
}

// configChanges lists what changes outside the services.
func configChanges(old, next *config.Config) []string {
	var out []string
	for _, i := range next.Interfaces {
		if !hasInterface(old, i.Name) {
			out = append(out, fmt.Sprintf("interface %s: attach (%s)", i.Name, i.XDPMode))
		}
	}
	for _, i := range old.Interfaces {
		if !hasInterface(next, i.Name) {
			out = append(out, fmt.Sprintf("interface %s: detach", i.Name))
		}
	}
	if old.Encap != next.Encap {
		out = append(out, fmt.Sprintf("encap sources %s, %s -> %s, %s", old.Encap.SourceIPv4, old.Encap.SourceIPv6, next.Encap.SourceIPv4, next.Encap.SourceIPv6))
	}
	for _, n := range next.ServiceSpecs {
		for _, o := range old.ServiceSpecs {
			if o.Name != n.Name {
				continue
			}
			if !o.HealthCheck.Equal(n.HealthCheck) {
				out = append(out, fmt.Sprintf("service %s: health check %s -> %s (a backend keeps whether it is up until the new check decides)", n.Name, checkString(o.HealthCheck), checkString(n.HealthCheck)))
			}
			if o.MinHealthyBackends != n.MinHealthyBackends || o.Announce != n.Announce {
				out = append(out, fmt.Sprintf("service %s: announce %v, minHealthyBackends %d -> announce %v, minHealthyBackends %d", n.Name, o.Announce, o.MinHealthyBackends, n.Announce, n.MinHealthyBackends))
			}
		}
	}
	if old.Conntrack.IdleTimeout != next.Conntrack.IdleTimeout {
		out = append(out, fmt.Sprintf("conntrack.idleTimeout %v -> %v", old.Conntrack.IdleTimeout, next.Conntrack.IdleTimeout))
	}
	if !reflect.DeepEqual(old.SNAT, next.SNAT) {
		out = append(out, fmt.Sprintf("snat sources %v ports %d-%d timeouts %v/%v/%v -> sources %v ports %d-%d timeouts %v/%v/%v (NAT flows keep their source and port)",
			old.SNAT.Sources, old.SNAT.PortLo, old.SNAT.PortHi, old.SNAT.Timeouts.TCPEstablished, old.SNAT.Timeouts.TCPTransitory, old.SNAT.Timeouts.UDP,
			next.SNAT.Sources, next.SNAT.PortLo, next.SNAT.PortHi, next.SNAT.Timeouts.TCPEstablished, next.SNAT.Timeouts.TCPTransitory, next.SNAT.Timeouts.UDP))
	}
	return out
}

// checkString names a health check in a line: its type, and its port and
// path when set.
func checkString(h config.HealthCheck) string {
	s := string(h.Type)
	if s == "" {
		s = "none"
	}
	if h.Port != 0 {
		s += fmt.Sprintf(" port %d", h.Port)
	}
	if h.Path != "" {
		s += " " + h.Path
	}
	return s
}

// peekSeed reads the appliance's own seed without making one: fresh says
// there is none yet, and a random one stands in for it.
func peekSeed(stateDir string) (seed [16]byte, fresh bool, err error) {
	b, err := os.ReadFile(filepath.Join(stateDir, seedFile))
	if errors.Is(err, fs.ErrNotExist) {
		_, err = rand.Read(seed[:])
		return seed, true, err
	}
	if err != nil {
		return seed, false, err
	}
	s, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(s) != len(seed) {
		return seed, false, fmt.Errorf("reading the generated Maglev seed: %s holds no base64 of %d bytes", seedFile, len(seed))
	}
	copy(seed[:], s)
	return seed, false, nil
}

// clone copies the merger's claims, for a merge that changes nothing.
func (m *merger) clone() *merger {
	return &merger{log: slog.New(slog.NewTextHandler(io.Discard, nil)), vips: maps.Clone(m.vips), names: maps.Clone(m.names), conflict: maps.Clone(m.conflict)}
}

// pinnedFlow is a pin of the pin tables, by its flow hash.
type pinnedFlow struct {
	src, dst  netip.AddrPort
	proto     xdp.Proto
	backendID uint32
}

// pinsByVIP reads the pin tables.
func (p *Plane) pinsByVIP() map[xdp.VIPKey][]pinnedFlow {
	out := map[xdp.VIPKey][]pinnedFlow{}
	_ = p.dp.Flows(func(f xdp.Flow) bool {
		if k, ok := p.dp.LookupVIP(f.Dst, f.Proto); ok {
			out[k] = append(out[k], pinnedFlow{f.Src, f.Dst, f.Proto, f.BackendID})
		}
		return true
	})
	return out
}

// estimatePins estimates the live flows of a VIP that a change would pin,
// and counts the pins it would make useless. See PinEstimate.
func estimatePins(v lb.VIPPlan, pins []pinnedFlow, window time.Duration, syns map[xdp.VIPKey]uint64) PinEstimate {
	e := PinEstimate{Pinned: len(pins), Window: window.Seconds()}
	gone := map[uint32]bool{}
	for _, b := range v.Backends {
		if b.Change == "removed" || !b.Healthy {
			gone[b.ID] = true
		}
	}
	if v.Action == lb.ActionRemove {
		e.PinsLost = len(pins)
	} else {
		for _, f := range pins {
			if gone[f.backendID] || f.backendID == 0 {
				e.PinsLost++
			}
		}
	}
	switch {
	case v.Action == lb.ActionRemove:
		e.Basis = "the VIP is removed: its flows end"
	case v.Key.Proto != xdp.TCP:
		e.Basis = "unknown: UDP has no connection starts to count"
	case window <= 0:
		e.Basis = "unknown: no counter sample yet (one is taken every 10s)"
	default:
		e.NewFlows = syns[v.Key]
		e.Estimate = uint64(float64(e.NewFlows)*v.Moved + 0.5)
		e.Basis = fmt.Sprintf("TCP SYNs to the VIP in the last %s (flows younger than conntrack.idleTimeout count as live) × %.2f%% of the hash space moving", window.Round(time.Second), 100*v.Moved)
	}
	return e
}

// flowSample is the VIPs' new-flow counters at one time.
type flowSample struct {
	at   time.Time
	syns map[xdp.VIPKey]uint64
}

// sampleFlows records the VIPs' new-flow (SYN) counters, and forgets the
// samples older than keep. The maintenance loop calls it.
func (p *Plane) sampleFlows(now time.Time, keep time.Duration) {
	s := flowSample{at: now, syns: map[xdp.VIPKey]uint64{}}
	for _, v := range p.rec.Status().VIPs {
		if st, err := p.dp.VIPStats(v.Key); err == nil {
			s.syns[v.Key] = st.NewFlows
		}
	}
	p.samplesMu.Lock()
	defer p.samplesMu.Unlock()
	p.samples = append(p.samples, s)
	n := 0
	for _, x := range p.samples {
		if now.Sub(x.at) <= keep {
			p.samples[n] = x
			n++
		}
	}
	p.samples = p.samples[:n]
}

// newFlowsSince returns the SYNs each VIP counted since the oldest sample
// taken at or after since, and the window that covers.
func (p *Plane) newFlowsSince(since time.Time) (time.Duration, map[xdp.VIPKey]uint64) {
	p.samplesMu.Lock()
	var first *flowSample
	for i := range p.samples {
		if !p.samples[i].at.Before(since) {
			first = &p.samples[i]
			break
		}
	}
	p.samplesMu.Unlock()
	out := map[xdp.VIPKey]uint64{}
	if first == nil {
		return 0, out
	}
	for k, base := range first.syns {
		if st, err := p.dp.VIPStats(k); err == nil && st.NewFlows >= base {
			out[k] = st.NewFlows - base
		}
	}
	return time.Since(first.at), out
}
