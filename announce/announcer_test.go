package announce

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/packet"

	ipacket "github.com/xdplb/xdplb/internal/packet"
)

// fakeConn is a packet socket: frames put in in are read, frames written
// are recorded with the time they were written. Created inside a synctest
// bubble, a ReadFrom waiting for a frame is durably blocked.
type fakeConn struct {
	in       chan []byte
	stop     chan struct{} // closed by a past read deadline or Close
	stopOnce sync.Once

	mu       sync.Mutex
	start    time.Time
	sent     []sent
	ops      []string // group joins and leaves, in order
	joinErr  error
	writeErr error
	readErr  error
	closed   bool
}

// sent is a written frame and when, relative to the fake's creation.
type sent struct {
	At    time.Duration
	Frame []byte
}

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan []byte), stop: make(chan struct{}), start: time.Now()}
}

func (c *fakeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	c.mu.Lock()
	err := c.readErr
	c.readErr = nil
	c.mu.Unlock()
	if err != nil {
		return 0, nil, err
	}
	select {
	case f := <-c.in:
		return copy(b, f), &packet.Addr{HardwareAddr: f[6:12]}, nil
	case <-c.stop:
		if c.isClosed() {
			return 0, nil, net.ErrClosed
		}
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (c *fakeConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	if a, ok := addr.(*packet.Addr); !ok || string(a.HardwareAddr) != string(b[0:6]) {
		return 0, errors.New("fake: address is not the frame's destination")
	}
	c.sent = append(c.sent, sent{time.Since(c.start), append([]byte(nil), b...)})
	return len(b), nil
}

func (c *fakeConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.stopOnce.Do(func() { close(c.stop) })
	}
	return nil
}

func (c *fakeConn) JoinGroup(mac net.HardwareAddr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.joinErr != nil {
		return c.joinErr
	}
	c.ops = append(c.ops, "join "+mac.String())
	return nil
}

func (c *fakeConn) LeaveGroup(mac net.HardwareAddr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, "leave "+mac.String())
	return nil
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stopOnce.Do(func() { close(c.stop) })
	return nil
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// set changes the fake under its lock.
func (c *fakeConn) set(f func(c *fakeConn)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// restart forgets the frames sent and counts time from now.
func (c *fakeConn) restart() {
	c.set(func(c *fakeConn) { c.start, c.sent = time.Now(), nil })
}

// takeSent returns the frames written so far and forgets them.
func (c *fakeConn) takeSent() []sent {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

func (c *fakeConn) takeOps() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.ops
	c.ops = nil
	return s
}

// testAnnouncer is an announcer on fake sockets, running until the test
// ends. Inside a synctest bubble, call it inside the bubble.
type testAnnouncer struct {
	*Announcer
	arpConn, ndpConn *fakeConn
}

func startAnnouncer(t *testing.T, opts Options) *testAnnouncer {
	t.Helper()
	ta := &testAnnouncer{arpConn: newFakeConn(), ndpConn: newFakeConn()}
	a, err := newAnnouncer("eth0", ourMAC, ta.arpConn, ta.ndpConn, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ta.Announcer = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		a.Close()
	})
	return ta
}

// receive hands frame to the socket of its protocol and waits (in a
// synctest bubble) until it has been handled.
func (ta *testAnnouncer) receive(frame []byte) {
	c := ta.arpConn
	if frame[12] == 0x86 {
		c = ta.ndpConn
	}
	c.in <- frame
	synctest.Wait()
}

// The gratuitous frames of vip4 and vip6 from ourMAC.
var (
	garpRequest = arpEth(bcastMAC, ourMAC, arpPayload(1, ourMAC, vip4, zeroMAC, vip4))
	garpReply   = arpEth(bcastMAC, ourMAC, arpPayload(2, ourMAC, vip4, ourMAC, vip4))
	unsolNA     = wantNA(allNodesMAC, allNodes, flagOverride)
)

func TestGratuitousSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{})
		time.Sleep(5 * time.Second) // nothing before a VIP is active
		ta.arpConn.restart()
		ta.ndpConn.restart()
		ta.SetVIPs([]netip.Addr{vip6, vip4})
		time.Sleep(time.Minute)

		wantARP := []sent{
			{0, garpRequest}, {0, garpReply},
			{time.Second, garpRequest}, {time.Second, garpReply},
			{2 * time.Second, garpRequest}, {2 * time.Second, garpReply},
		}
		if d := cmp.Diff(wantARP, ta.arpConn.takeSent()); d != "" {
			t.Errorf("ARP frames sent (-want +got):\n%s", d)
		}
		wantNDP := []sent{{0, unsolNA}, {time.Second, unsolNA}, {2 * time.Second, unsolNA}}
		if d := cmp.Diff(wantNDP, ta.ndpConn.takeSent()); d != "" {
			t.Errorf("NDP frames sent (-want +got):\n%s", d)
		}
		if err := ipacket.VerifyFrame(unsolNA); err != nil {
			t.Errorf("unsolicited NA: %v", err)
		}

		s := ta.Stats()
		if s.ARP.Gratuitous != 6 || s.NDP.Gratuitous != 3 {
			t.Errorf("gratuitous counters: ARP %d, NDP %d; want 6, 3", s.ARP.Gratuitous, s.NDP.Gratuitous)
		}
		wantVIPs := []VIPStats{{VIP: vip4, Gratuitous: 6}, {VIP: vip6, Gratuitous: 3}}
		if d := cmp.Diff(wantVIPs, s.VIPs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
			t.Errorf("VIP stats (-want +got):\n%s", d)
		}
	})
}

func TestGratuitousOptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{GratuitousCount: 2, GratuitousInterval: 500 * time.Millisecond, RefreshInterval: 30 * time.Second})
		ta.SetVIPs([]netip.Addr{vip6})
		time.Sleep(3 * time.Second)
		// A VIP added later has its own schedule.
		ta.SetVIPs([]netip.Addr{vip6, vip4})
		time.Sleep(62 * time.Second)
		// Removed: no more refreshes.
		ta.SetVIPs([]netip.Addr{vip4})
		time.Sleep(time.Hour)
		ta.SetVIPs(nil)

		want := []time.Duration{0, 500 * time.Millisecond, 30500 * time.Millisecond, 60500 * time.Millisecond}
		if d := cmp.Diff(want, times(ta.ndpConn.takeSent())); d != "" {
			t.Errorf("unsolicited NA times (-want +got):\n%s", d)
		}
		// vip4 from 3 s: 3, 3.5, 33.5, 63.5, … until 3665 s (an hour and 65 s).
		var want4 []time.Duration
		for _, at := range []time.Duration{3 * time.Second, 3500 * time.Millisecond} {
			want4 = append(want4, at, at)
		}
		for at := 33500 * time.Millisecond; at <= 3665*time.Second; at += 30 * time.Second {
			want4 = append(want4, at, at)
		}
		if d := cmp.Diff(want4, times(ta.arpConn.takeSent())); d != "" {
			t.Errorf("gratuitous ARP times (-want +got):\n%s", d)
		}
	})
}

func times(s []sent) []time.Duration {
	var out []time.Duration
	for _, f := range s {
		out = append(out, f.At)
	}
	return out
}

// TestRemovedVIPStopsAtOnce checks that a VIP removed while its
// announcements are under way is neither announced nor answered any more,
// and that adding it again starts a new sequence.
func TestRemovedVIPStopsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{})
		ta.SetVIPs([]netip.Addr{vip4, vip6})
		time.Sleep(1500 * time.Millisecond)
		ta.arpConn.takeSent()
		ta.ndpConn.takeSent()

		ta.receive(arpRequest(bcastMAC, asker4, vip4))
		ta.receive(validNS().frame())
		wantARP := []sent{{1500 * time.Millisecond, arpEth(askerMAC, ourMAC, arpPayload(2, ourMAC, vip4, askerMAC, asker4))}}
		if d := cmp.Diff(wantARP, ta.arpConn.takeSent()); d != "" {
			t.Errorf("ARP frames sent while active (-want +got):\n%s", d)
		}
		wantNDP := []sent{{1500 * time.Millisecond, wantNA(askerMAC, asker6, flagSolicited|flagOverride)}}
		if d := cmp.Diff(wantNDP, ta.ndpConn.takeSent()); d != "" {
			t.Errorf("NDP frames sent while active (-want +got):\n%s", d)
		}

		ta.SetVIPs(nil)
		// At once, before any goroutine runs: the handlers see no VIP.
		if _, _, reason := ta.r.handleARP(arpRequest(bcastMAC, asker4, vip4)); reason != ReasonNotOurs {
			t.Errorf("handleARP right after removal = %q, want %q", reason, ReasonNotOurs)
		}
		ta.receive(arpRequest(bcastMAC, asker4, vip4))
		ta.receive(validNS().frame())
		time.Sleep(time.Minute)
		if s := ta.arpConn.takeSent(); len(s) != 0 {
			t.Errorf("ARP frames sent after removal: %d", len(s))
		}
		if s := ta.ndpConn.takeSent(); len(s) != 0 {
			t.Errorf("NDP frames sent after removal: %d", len(s))
		}
		st := ta.Stats()
		if st.ARP.Drops[ReasonNotOurs] != 1 || st.NDP.Drops[ReasonNotOurs] != 1 || len(st.VIPs) != 0 {
			t.Errorf("after removal: ARP not ours %d, NDP not ours %d, VIPs %v; want 1, 1, none",
				st.ARP.Drops[ReasonNotOurs], st.NDP.Drops[ReasonNotOurs], st.VIPs)
		}

		// Back again: a fresh sequence of three, counters from zero.
		ta.arpConn.restart()
		ta.SetVIPs([]netip.Addr{vip4})
		time.Sleep(time.Minute)
		if d := cmp.Diff([]time.Duration{0, 0, time.Second, time.Second, 2 * time.Second, 2 * time.Second}, times(ta.arpConn.takeSent())); d != "" {
			t.Errorf("ARP times after re-adding (-want +got):\n%s", d)
		}
		if got := ta.Stats().VIPs; len(got) != 1 || got[0].Gratuitous != 6 || got[0].Requests != 0 {
			t.Errorf("VIP stats after re-adding = %+v, want 6 gratuitous and no requests", got)
		}
	})
}

// TestStatsByReason feeds frames of every reason through Run and checks the
// counters.
func TestStatsByReason(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{ReplyRate: 1, ReplyBurst: 2, GratuitousCount: 1})
		ta.SetVIPs([]netip.Addr{vip4, vip6})
		synctest.Wait()

		for _, f := range [][]byte{
			arpRequest(bcastMAC, asker4, vip4),                                          // answered
			arpRequest(bcastMAC, asker4, other4),                                        // not ours
			arpEth(ourMAC, otherMAC, arpPayload(2, otherMAC, other4, ourMAC, asker4)),   // reply ignored
			arpRequest(bcastMAC, asker4, vip4)[:20],                                     // malformed
			arpEth(bcastMAC, askerMAC, arpPayload(3, askerMAC, asker4, askerMAC, vip4)), // not a request
			validNS().frame(), // answered: the burst of 2 is spent
			validNS().with(func(n *ns) { n.target, n.dst, n.ethDst = other6, other6SNM, multicastMAC(other6SNM) }).frame(), // not ours
			naFrom(other6), // reply ignored
			validNS().with(func(n *ns) { n.hopLimit = 1 }).frame(), // malformed
			validNS().frame(),                  // rate limited
			arpRequest(bcastMAC, asker4, vip4), // rate limited
		} {
			ta.receive(f)
		}
		time.Sleep(time.Second) // one more token
		ta.receive(arpRequest(bcastMAC, asker4, vip4))

		one := func(r Reason) map[Reason]uint64 {
			m := map[Reason]uint64{}
			for _, d := range DropReasons {
				m[d] = 0
			}
			if r != ReasonAnswered {
				m[r] = 1
			}
			return m
		}
		arpDrops := one(ReasonNotOurs)
		arpDrops[ReasonReplyIgnored] = 1
		arpDrops[ReasonMalformed] = 1
		arpDrops[ReasonNotARequest] = 1
		arpDrops[ReasonRateLimited] = 1
		ndpDrops := one(ReasonNotOurs)
		ndpDrops[ReasonReplyIgnored] = 1
		ndpDrops[ReasonMalformed] = 1
		ndpDrops[ReasonRateLimited] = 1
		want := Stats{
			Interface: "eth0",
			ARP:       ProtocolStats{Received: 7, Replies: 2, Gratuitous: 2, Drops: arpDrops},
			NDP:       ProtocolStats{Received: 5, Replies: 1, Gratuitous: 1, Drops: ndpDrops},
			VIPs: []VIPStats{
				{VIP: vip4, Requests: 3, Replies: 2, Gratuitous: 2},
				{VIP: vip6, Requests: 2, Replies: 1, Gratuitous: 1},
			},
		}
		if d := cmp.Diff(want, ta.Stats(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
			t.Errorf("Stats (-want +got):\n%s", d)
		}
	})
}

func TestSendErrorsCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{GratuitousCount: 1})
		ta.arpConn.set(func(c *fakeConn) { c.writeErr = errors.New("no buffer space") })
		ta.SetVIPs([]netip.Addr{vip4})
		synctest.Wait()
		ta.receive(arpRequest(bcastMAC, asker4, vip4))
		s := ta.Stats()
		if s.ARP.SendErrors != 3 || s.ARP.Replies != 0 || s.ARP.Gratuitous != 0 || s.VIPs[0].Requests != 1 {
			t.Errorf("ARP stats = %+v, VIP %+v; want 3 send errors (2 gratuitous, 1 reply), nothing sent, 1 request", s.ARP, s.VIPs[0])
		}
	})
}

func TestMulticastGroups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{})
		shares := netip.MustParseAddr("2001:db8:1::100") // same low 24 bits as vip6
		two := netip.MustParseAddr("2001:db8::200")

		ta.SetVIPs([]netip.Addr{vip4, vip6, shares, two})
		got := ta.ndpConn.takeOps()
		want := []string{"join 33:33:ff:00:01:00", "join 33:33:ff:00:02:00"}
		if d := cmp.Diff(want, got, sortStrings); d != "" {
			t.Errorf("groups after adding (-want +got):\n%s", d)
		}
		ta.SetVIPs([]netip.Addr{shares, two})
		if got := ta.ndpConn.takeOps(); len(got) != 0 {
			t.Errorf("removing one of two VIPs of a group: %v, want nothing", got)
		}
		ta.SetVIPs([]netip.Addr{shares})
		if d := cmp.Diff([]string{"leave 33:33:ff:00:02:00"}, ta.ndpConn.takeOps()); d != "" {
			t.Errorf("groups after removing ::200 (-want +got):\n%s", d)
		}
		if got := ta.arpConn.takeOps(); len(got) != 0 {
			t.Errorf("ARP socket joined groups: %v", got)
		}

		// A join that fails is tried again on the next SetVIPs, and the
		// VIP is answered anyway.
		ta.ndpConn.set(func(c *fakeConn) { c.joinErr = errors.New("no memory") })
		ta.SetVIPs([]netip.Addr{shares, vip6, two})
		if _, _, reason := ta.r.handleNDP(validNS().frame()); reason != ReasonAnswered {
			t.Errorf("NS for a VIP whose group join failed: %q, want %q", reason, ReasonAnswered)
		}
		ta.ndpConn.set(func(c *fakeConn) { c.joinErr = nil })
		ta.SetVIPs([]netip.Addr{shares, vip6, two})
		if d := cmp.Diff([]string{"join 33:33:ff:00:02:00"}, ta.ndpConn.takeOps()); d != "" {
			t.Errorf("groups after the retry (-want +got):\n%s", d)
		}
		ta.SetVIPs(nil)
		if d := cmp.Diff([]string{"leave 33:33:ff:00:01:00", "leave 33:33:ff:00:02:00"}, ta.ndpConn.takeOps(), sortStrings); d != "" {
			t.Errorf("groups after removing all (-want +got):\n%s", d)
		}
	})
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestSetVIPsSkipsInvalid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta := startAnnouncer(t, Options{})
		ta.SetVIPs([]netip.Addr{
			{}, netip.IPv4Unspecified(), netip.IPv6Unspecified(),
			netip.MustParseAddr("224.0.0.1"), netip.MustParseAddr("ff02::1"), netip.MustParseAddr("255.255.255.255"),
			netip.MustParseAddr("::ffff:198.18.0.100"), netip.MustParseAddr("2001:db8::100%eth0"), vip6,
		})
		var got []string
		for _, v := range ta.Stats().VIPs {
			got = append(got, v.VIP.String())
		}
		if d := cmp.Diff([]string{"198.18.0.100", "2001:db8::100"}, got); d != "" {
			t.Errorf("active VIPs (-want +got):\n%s", d)
		}
	})
}

func TestRunLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, err := newAnnouncer("eth0", ourMAC, newFakeConn(), newFakeConn(), Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		synctest.Wait()
		if err := a.Run(ctx); !errors.Is(err, ErrRunning) {
			t.Errorf("second Run = %v, want ErrRunning", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		a.SetVIPs([]netip.Addr{vip4}) // no effect, no panic
		if v := a.Stats().VIPs; len(v) != 0 {
			t.Errorf("VIPs after Close: %v", v)
		}
	})
}

func TestCloseStopsRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		arpConn, ndpConn := newFakeConn(), newFakeConn()
		a, err := newAnnouncer("eth0", ourMAC, arpConn, ndpConn, Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		a.SetVIPs([]netip.Addr{vip4})
		done := make(chan error, 1)
		go func() { done <- a.Run(context.Background()) }()
		synctest.Wait()
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run after Close = %v, want nil", err)
		}
		// VIPs set before Run are announced when it starts.
		if n := len(arpConn.takeSent()); n != 2 {
			t.Errorf("%d gratuitous ARP frames before Close, want 2", n)
		}
	})
}

func TestRunReadError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		arpConn, ndpConn := newFakeConn(), newFakeConn()
		ndpConn.readErr = errors.New("bad file descriptor")
		a, err := newAnnouncer("eth0", ourMAC, arpConn, ndpConn, Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		err = a.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), `reading NDP frames on "eth0": bad file descriptor`) {
			t.Errorf("Run = %v, want the read error", err)
		}
	})
}

func TestOptions(t *testing.T) {
	got, err := Options{}.withDefaults()
	want := Options{GratuitousCount: 3, GratuitousInterval: time.Second, ReplyRate: 1000, ReplyBurst: 100}
	if err != nil || got != want {
		t.Errorf("defaults = %+v, %v; want %+v", got, err, want)
	}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{GratuitousCount: -1}, "gratuitous count -1 is negative"},
		{Options{GratuitousInterval: -time.Second}, "gratuitous interval -1s is negative"},
		{Options{RefreshInterval: -time.Second}, "refresh interval -1s is negative"},
		{Options{ReplyRate: -1}, "reply rate -1 is negative"},
		{Options{ReplyBurst: -1}, "reply burst -1 is negative"},
	} {
		_, err := newAnnouncer("eth0", ourMAC, newFakeConn(), newFakeConn(), tc.opts, nil)
		if err == nil || err.Error() != tc.want {
			t.Errorf("newAnnouncer(%+v) = %v, want %q", tc.opts, err, tc.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct{ iface, want string }{
		{"xdplb-nonexistent", `announcing on "xdplb-nonexistent": route ip+net: no such network interface`},
		{"lo", `announcing on "lo": the interface has no Ethernet address`},
	} {
		_, err := New(tc.iface, Options{}, nil)
		if err == nil || err.Error() != tc.want {
			t.Errorf("New(%q) = %v, want %q", tc.iface, err, tc.want)
		}
	}
}
