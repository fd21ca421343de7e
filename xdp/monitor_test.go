package xdp

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/internal/packet"
)

// monitorEvents runs Monitor until the test ends and collects its events.
type monitorEvents struct {
	mu  sync.Mutex
	got []MonitorEvent
}

func (m *monitorEvents) take() []MonitorEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.got
	m.got = nil
	return out
}

func startMonitor(t *testing.T, d *Datapath) *monitorEvents {
	t.Helper()
	m := &monitorEvents{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.Monitor(ctx, func(e MonitorEvent) {
			m.mu.Lock()
			m.got = append(m.got, e)
			m.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Monitor: %v", err)
		}
	})
	// The flag is on once Monitor has its reader.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var on uint32
		if err := d.objs.MonitorOn.Lookup(uint32(0), &on); err != nil {
			t.Fatal(err)
		}
		if on == 1 {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatal("the monitor flag is not on after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// waitEvents waits for n events (up to 5 s).
func (m *monitorEvents) wait(t *testing.T, n int) []MonitorEvent {
	t.Helper()
	var got []MonitorEvent
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		got = append(got, m.take()...)
		time.Sleep(time.Millisecond)
	}
	return got
}

func eventLine(e MonitorEvent) string {
	return fmt.Sprintf("%s %s/%s %s -> %s/%s backend %d frame %d/%d", e.Type, e.Action, e.Reason, e.Src, e.Dst, e.Proto, e.BackendID, len(e.Frame), e.FrameLen)
}

// TestMonitor: drops, echo replies and ICMP errors sent or forwarded are
// events with their reason, flow and frame (an ICMP error forwarded: the
// flow it quotes, seen from the client, and its backend); forwarded packets
// and passed ones are not;
// with nobody listening nothing is sent; the verdicts are the same either
// way.
func TestMonitor(t *testing.T) {
	d := fxOpen(t, Options{})
	fixtureWorld.applyVIPs(t, d, fxNoEnv, fxVIP4Three, fxVIP4L2, fxVIP4NoTab)
	src := fxAP(fxClient4, 40000)
	echo := fxIn(packet.IPv4{Src: fxClient4, Dst: fxVIP4L2, TTL: 57, Payload: packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(1, 1), Body: []byte("ping")}}, nil)
	three := fixtureWorld.vip(fxVIP4Three, 80, TCP)
	cport := fxDecisivePort(fixtureWorld, three, fxClient4)
	errBackend, _, _ := fixtureWorld.pick(three, fxAP(fxClient4, cport), fxAP(fxVIP4Three, 80))
	icmpErr := fxIn(fxICMPError(fxVIP4Three, 80, fxAP(fxClient4, cport), TCP, false), nil)
	frames := []struct {
		in      []byte
		verdict uint32
	}{
		{fxIn(fxIP(src, fxAP(fxVIP4Three, 80), packet.TCPAck, nil), nil), fxTX},   // forwarded: no event
		{fxIn(fxIP(src, fxAP(fxOther4, 80), packet.TCPAck, nil), nil), fxPass},    // not a VIP: no event
		{fxIn(fxIP(src, fxAP(fxVIP4Three, 81), packet.TCPSyn, nil), nil), fxDrop}, // no service
		{fxIn(fxIP(src, fxAP(fxVIP4NoTab, 80), packet.TCPSyn, nil), nil), fxDrop}, // no backend
		{echo, fxTX},    // echo reply
		{icmpErr, fxTX}, // ICMP error forwarded to the flow's backend
	}
	run := func() {
		for _, f := range frames {
			if ret, _ := fxRun(t, d.Program(), f.in); ret != f.verdict {
				t.Errorf("verdict %s, want %s", fxVerdict(ret), fxVerdict(f.verdict))
			}
		}
	}
	// Nobody listens: the ring stays empty (a reader started later finds
	// nothing).
	run()
	m := startMonitor(t, d)
	run()
	got := m.wait(t, 4)
	var lines []string
	for _, e := range got {
		lines = append(lines, eventLine(e))
	}
	n := func(f []byte) int { return min(len(f), 128) }
	want := []string{
		fmt.Sprintf("drop drop/no_service 198.18.1.10:40000 -> 198.19.0.8:81/tcp backend 0 frame %d/%d", n(frames[2].in), len(frames[2].in)),
		fmt.Sprintf("drop drop/no_backend 198.18.1.10:40000 -> 198.19.0.6:80/tcp backend 0 frame %d/%d", n(frames[3].in), len(frames[3].in)),
		fmt.Sprintf("echo-reply tx/icmp_echo_reply 198.18.1.10:0 -> 198.19.0.1:0/1 backend 0 frame %d/%d", n(echo), len(echo)),
		fmt.Sprintf("icmp-error tx/icmp_error_to_backend 198.18.1.10:%d -> 198.19.0.8:80/tcp backend %d frame %d/%d", cport, errBackend, n(icmpErr), len(icmpErr)),
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if len(got) > 0 && !cmp.Equal(got[0].Frame, frames[2].in[:len(got[0].Frame)]) {
		t.Errorf("the drop's frame is not the packet dropped")
	}
	if len(got) > 0 && !got[0].SYN {
		t.Errorf("the SYN dropped is not marked SYN")
	}
}

// TestMonitorLosesWhenFull: a reader that does not keep up loses events,
// counted, and the program's verdicts and counters are those it has without
// the monitor.
func TestMonitorLosesWhenFull(t *testing.T) {
	d := fxOpen(t, Options{})
	fixtureWorld.applyVIPs(t, d, fxNoEnv, fxVIP4Three)
	drop := fxIn(fxIP(fxAP(fxClient4, 1), fxAP(fxVIP4Three, 81), packet.TCPSyn, nil), nil)
	// The flag on, nobody reading: the ring (256 KiB, 1,300 events or so)
	// fills up.
	if err := d.SetMonitor(true); err != nil {
		t.Fatal(err)
	}
	before, err := d.Counter("drop", "no_service")
	if err != nil {
		t.Fatal(err)
	}
	const sent = 3000
	for range sent {
		if ret, _ := fxRun(t, d.Program(), drop); ret != fxDrop {
			t.Fatalf("verdict %s with the ring full, want XDP_DROP", fxVerdict(ret))
		}
	}
	after, _ := d.Counter("drop", "no_service")
	if after-before != sent {
		t.Errorf("drop/no_service moved by %d, want %d", after-before, sent)
	}
	lost, err := d.MonitorLost()
	if err != nil {
		t.Fatal(err)
	}
	if lost == 0 || lost >= sent {
		t.Errorf("%d of %d events lost, want some but not all", lost, sent)
	}
	t.Logf("%d of %d events lost with nobody reading", lost, sent)
	if err := d.SetMonitor(false); err != nil {
		t.Fatal(err)
	}
}

// TestMonitorPin: a flow pinned during a table transition is an event with
// its flow and the backend it is pinned to, and the packet's verdict is an
// event of no kind (it is forwarded).
func TestMonitorPin(t *testing.T) {
	d := fxOpen(t, Options{TransitionGrace: time.Hour})
	vip := netip.MustParseAddr("198.19.7.1")
	k := VIPKey{Addr: vip, Port: 80, Proto: TCP}
	for id, addr := range map[uint32]string{1: "198.18.7.11", 2: "198.18.7.12"} {
		if err := d.UpsertBackend(id, fxBackend(addr, fmt.Sprintf("02:00:00:00:07:%02x", id), 1500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(k, fxFill(251, 1)); err != nil {
		t.Fatal(err)
	}
	// Every slot moves to backend 2: an established flow's next packet is
	// pinned to backend 1, where it began.
	if err := d.SetTable(k, fxFill(251, 2)); err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, d)
	src := fxAP(fxClient4, 41000)
	if ret, _ := fxRun(t, d.Program(), fxIn(fxIP(src, fxAP(vip, 80), packet.TCPAck, nil), nil)); ret != fxTX {
		t.Fatalf("verdict %s, want XDP_TX", fxVerdict(ret))
	}
	got := m.wait(t, 1)
	var lines []string
	for _, e := range got {
		lines = append(lines, eventLine(e))
	}
	want := []string{"pin event/pin_created 198.18.1.10:41000 -> 198.19.7.1:80/tcp backend 1 frame 0/0"}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}
