package controlplane

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xdplb/xdplb/xdp"
)

// The monitor: the datapath's events (xdp.Datapath.Monitor) fanned out to
// any number of listeners, each with its filter. The datapath's flag is on
// while someone listens. A listener that does not keep up loses events
// (counted, and told to it each second); it never slows the datapath or the
// other listeners: the hub never waits for one.

// monitorQueue is how many events wait for a listener before it loses some.
const monitorQueue = 4096

// monitorReport is how often a listener is told what it lost.
const monitorReport = time.Second

// MonitorFilter selects the events a listener gets; empty fields select
// everything.
type MonitorFilter struct {
	VIP     string   `json:"vip,omitempty"`     // ADDR:PORT/PROTO
	Backend string   `json:"backend,omitempty"` // ADDR or ADDR:PORT, as `xdplb backends` prints it
	Reason  string   `json:"reason,omitempty"`  // a reason (no_backend) or action/reason (drop/no_backend)
	Types   []string `json:"types,omitempty"`   // drop, pin, icmp-error, echo-reply, icmp-sent
	Sample  int      `json:"sample,omitempty"`  // 1 event of every Sample that match (0, 1: all)
}

// MonitorTypes are the event types a filter may name.
var MonitorTypes = []string{"drop", "pin", "icmp-error", "echo-reply", "icmp-sent"}

// check validates the filter.
func (f *MonitorFilter) check() error {
	if f.VIP != "" {
		k, err := xdp.ParseVIPKey(f.VIP)
		if err != nil {
			return fmt.Errorf("--vip %v", err)
		}
		f.VIP = k.String()
	}
	for _, t := range f.Types {
		if !slices.Contains(MonitorTypes, t) {
			return fmt.Errorf("--type %q: want one of %s", t, strings.Join(MonitorTypes, ", "))
		}
	}
	if f.Sample < 0 {
		return fmt.Errorf("--sample %d: want 1 or more", f.Sample)
	}
	return nil
}

func (f *MonitorFilter) match(e *MonitorEvent) bool {
	switch {
	case f.VIP != "" && e.VIP != f.VIP:
		return false
	case f.Backend != "" && e.Backend != f.Backend:
		return false
	case f.Reason != "" && e.Reason != f.Reason && !strings.HasSuffix(e.Reason, "/"+f.Reason):
		return false
	case len(f.Types) > 0 && !slices.Contains(f.Types, e.Type):
		return false
	}
	return true
}

// monitorSub is one listener.
type monitorSub struct {
	filter  MonitorFilter
	ch      chan MonitorEvent
	lost    atomic.Uint64
	matched uint64 // events that matched (the hub's goroutine only), for sampling
}

// monitorHub runs the datapath's reader while someone listens.
type monitorHub struct {
	mu     sync.Mutex
	subs   atomic.Pointer[[]*monitorSub] // replaced, never changed: the reader reads it without mu
	cancel context.CancelFunc
	done   chan struct{}
}

// Monitor sends the datapath's events that match f to send until ctx ends
// or send fails. The first event is of type "start"; events of type "lost"
// say, each second, how many events this listener missed (it was too slow)
// and how many every listener missed (the datapath's ring was full).
func (p *Plane) Monitor(ctx context.Context, f MonitorFilter, send func(MonitorEvent) error) error {
	if err := f.check(); err != nil {
		return err
	}
	sub := &monitorSub{filter: f, ch: make(chan MonitorEvent, monitorQueue)}
	if err := p.monitor.subscribe(p, sub); err != nil {
		return err
	}
	defer p.monitor.unsubscribe(sub)
	dpLost, _ := p.dp.MonitorLost()
	if err := send(MonitorEvent{Time: time.Now(), Type: "start"}); err != nil {
		return err
	}
	t := time.NewTicker(monitorReport)
	defer t.Stop()
	var reported uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-sub.ch:
			if err := send(e); err != nil {
				return err
			}
		case <-t.C:
			lost := sub.lost.Load()
			now, err := p.dp.MonitorLost()
			if err != nil {
				now = dpLost
			}
			if lost == reported && now == dpLost {
				continue
			}
			if err := send(MonitorEvent{Time: time.Now(), Type: "lost", Lost: lost - reported, DatapathLost: now - dpLost}); err != nil {
				return err
			}
			reported, dpLost = lost, now
		}
	}
}

func (h *monitorHub) list() []*monitorSub {
	if s := h.subs.Load(); s != nil {
		return *s
	}
	return nil
}

func (h *monitorHub) subscribe(p *Plane, sub *monitorSub) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	subs := append(slices.Clone(h.list()), sub)
	h.subs.Store(&subs)
	if h.cancel != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	failed := make(chan error, 1)
	go func() {
		defer close(h.done)
		names := newMonitorNames(p)
		err := p.dp.Monitor(ctx, func(ev xdp.MonitorEvent) {
			e := names.event(ev)
			for _, s := range h.list() {
				if !s.filter.match(&e) {
					continue
				}
				s.matched++
				if s.filter.Sample > 1 && (s.matched-1)%uint64(s.filter.Sample) != 0 {
					continue
				}
				select {
				case s.ch <- e:
				default:
					s.lost.Add(1)
				}
			}
		})
		if err != nil {
			p.log.Error("monitor", "err", err)
			failed <- err
		}
	}()
	// Wait until the datapath sends events (its flag is on), or fails.
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case err := <-failed:
			h.stopLocked()
			subs := slices.DeleteFunc(slices.Clone(h.list()), func(s *monitorSub) bool { return s == sub })
			h.subs.Store(&subs)
			return fmt.Errorf("monitor: %w", err)
		default:
		}
		if on, err := p.dp.MonitorOn(); err == nil && on {
			return nil
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *monitorHub) unsubscribe(sub *monitorSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	subs := slices.DeleteFunc(slices.Clone(h.list()), func(s *monitorSub) bool { return s == sub })
	h.subs.Store(&subs)
	if len(subs) == 0 {
		h.stopLocked()
	}
}

// stopLocked stops the reader (the flag goes off) and waits for it.
func (h *monitorHub) stopLocked() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.cancel, h.done = nil, nil
}

// monitorNames names the VIPs, services, backends and interfaces of events;
// the names are read again at most once a second.
type monitorNames struct {
	p        *Plane
	at       time.Time
	backends map[uint32]string
	ifaces   map[int]string
}

func newMonitorNames(p *Plane) *monitorNames { return &monitorNames{p: p} }

func (n *monitorNames) refresh() {
	if time.Since(n.at) < time.Second && n.backends != nil {
		return
	}
	n.at = time.Now()
	n.backends = n.p.backendNames()
	n.ifaces = map[int]string{}
}

func (n *monitorNames) event(ev xdp.MonitorEvent) MonitorEvent {
	n.refresh()
	e := MonitorEvent{Time: time.Now(), Type: ev.Type.String(), SYN: ev.SYN, FrameLen: ev.FrameLen, BackendID: ev.BackendID}
	if ev.Reason != "" {
		e.Reason = ev.Action + "/" + ev.Reason
	}
	if ev.IfIndex != 0 {
		name, ok := n.ifaces[ev.IfIndex]
		if !ok {
			name, _ = interfaceName(ev.IfIndex)
			n.ifaces[ev.IfIndex] = name
		}
		e.Interface = name
	}
	if ev.Src.IsValid() {
		e.Flow = fmt.Sprintf("%s -> %s", ev.Src, ev.Dst)
		e.Protocol = ev.Proto.String()
		switch ev.Proto {
		case xdp.TCP, xdp.UDP:
		case 1, 58: // ICMP, ICMPv6: no ports
			e.Flow = fmt.Sprintf("%s -> %s", ev.Src.Addr(), ev.Dst.Addr())
			e.Protocol = map[xdp.Proto]string{1: "icmp", 58: "icmp6"}[ev.Proto]
		}
		if k, ok := n.p.dp.LookupVIP(ev.Dst, ev.Proto); ok {
			e.VIP = k.String()
			n.p.mu.Lock()
			e.Service = n.p.vips[k]
			n.p.mu.Unlock()
		}
	}
	if ev.BackendID != 0 {
		e.Backend = n.backends[ev.BackendID]
	}
	if len(ev.Frame) > 0 {
		e.Headers = frameSummary(ev.Frame)
	}
	return e
}
