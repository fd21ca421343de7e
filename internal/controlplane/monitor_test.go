package controlplane

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/xdplb/xdplb/internal/packet"
)

// listener collects what Monitor sends it; it blocks until gate (when
// set) is closed.
type listener struct {
	mu     sync.Mutex
	events []MonitorEvent
	lost   uint64
	dpLost uint64
	gate   chan struct{}
}

func (l *listener) send(e MonitorEvent) error {
	if l.gate != nil {
		<-l.gate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch e.Type {
	case "start":
	case "lost":
		l.lost += e.Lost
		l.dpLost += e.DatapathLost
	default:
		l.events = append(l.events, e)
	}
	return nil
}

func (l *listener) count() (events int, lost, dpLost uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events), l.lost, l.dpLost
}

// TestMonitorListeners: two listeners at once, one that stops reading. The
// other gets every event; the stuck one loses what does not fit in its
// queue and is told exactly how many; the datapath's flag is off once both
// have left.
func TestMonitorListeners(t *testing.T) {
	p, _, _ := testPlane(t, webService)
	fast, stuck := &listener{}, &listener{gate: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	run := func(l *listener, f MonitorFilter) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Monitor(ctx, f, l.send); err != nil {
				t.Errorf("Monitor: %v", err)
			}
		}()
	}
	run(fast, MonitorFilter{Reason: "no_service", Types: []string{"drop"}})
	run(stuck, MonitorFilter{})
	waitFor(t, "both listeners", func() bool { return len(p.monitor.list()) == 2 })
	waitFor(t, "the monitor flag", func() bool { on, _ := p.dp.MonitorOn(); return on })

	// Drops: TCP SYNs to the VIP's address on a port without a service.
	const total = monitorQueue + 1000
	sent := 0
	for sent < total {
		for i := 0; i < 200 && sent < total; i++ {
			frame := packet.MustBuild(packet.Ethernet{Src: net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}, Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1},
				Payload: packet.IPv4{Src: netip.MustParseAddr("198.18.0.50"), Dst: netip.MustParseAddr("198.18.10.10"), TTL: 64,
					Payload: packet.TCP{SrcPort: uint16(10000 + sent), DstPort: 81, Flags: packet.TCPSyn}}})
			if v, _, err := p.dp.Program().Test(frame); err != nil || v != 1 {
				t.Fatalf("verdict %d (%v), want XDP_DROP", v, err)
			}
			sent++
		}
		waitFor(t, "the fast listener's events", func() bool { n, _, _ := fast.count(); return n == sent })
	}
	close(stuck.gate)
	// The stuck listener now drains its queue and is told what it lost.
	waitFor(t, "the stuck listener's report", func() bool { n, lost, _ := stuck.count(); return uint64(n)+lost == total })
	n, lost, dpLost := stuck.count()
	if lost == 0 || n > monitorQueue+1 {
		t.Errorf("the stuck listener got %d events and lost %d, want at most %d and the rest lost", n, lost, monitorQueue+1)
	}
	if _, fl, fdl := fast.count(); fl != 0 || fdl != 0 || dpLost != 0 {
		t.Errorf("the fast listener lost %d (ring %d), the ring %d: want none", fl, fdl, dpLost)
	}
	fast.mu.Lock()
	e := fast.events[0]
	fast.mu.Unlock()
	if e.Type != "drop" || e.Reason != "drop/no_service" || e.Flow != "198.18.0.50:10000 -> 198.18.10.10:81" || !e.SYN || e.Headers == "" {
		t.Errorf("first event %+v", e)
	}
	t.Logf("stuck listener: %d events, %d lost", n, lost)
	cancel()
	wg.Wait()
	waitFor(t, "the monitor flag off", func() bool { on, _ := p.dp.MonitorOn(); return !on })
}
