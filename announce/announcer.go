package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// Defaults of [Options].
const (
	DefaultGratuitousCount    = 3
	DefaultGratuitousInterval = time.Second
	DefaultReplyRate          = 1000
	DefaultReplyBurst         = 100
)

// conflictLogEvery bounds how often a host claiming one of our VIPs is
// logged, so that a flood of such frames cannot flood the log.
const conflictLogEvery = time.Minute

// readBuffer fits a jumbo frame; NDP and ARP frames are far smaller, and a
// larger frame is cut and then found malformed.
const readBuffer = 9216

// ErrRunning is returned by Run when the announcer runs already or ran
// before: an announcer runs once.
var ErrRunning = errors.New("announcer runs already or has run")

// Options tune an [Announcer]. The zero value means the defaults.
type Options struct {
	// GratuitousCount is how many gratuitous announcements (a gratuitous
	// ARP request and reply, or an unsolicited neighbour advertisement)
	// are sent when a VIP becomes active. Zero means
	// DefaultGratuitousCount.
	GratuitousCount int
	// GratuitousInterval is the time between them; the first goes out at
	// once. Zero means DefaultGratuitousInterval.
	GratuitousInterval time.Duration
	// RefreshInterval, when above zero, repeats one announcement that
	// often for as long as the VIP stays active, after the first
	// GratuitousCount, so that switch FDB entries that age out sooner than
	// a router's ARP entry get refreshed. Zero turns refreshes off.
	RefreshInterval time.Duration
	// ReplyRate and ReplyBurst bound the replies of the interface (ARP and
	// NDP together) with a token bucket: ReplyRate per second, bursts of
	// ReplyBurst. Zero means DefaultReplyRate and DefaultReplyBurst.
	ReplyRate  int
	ReplyBurst int
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.GratuitousCount < 0:
		return o, fmt.Errorf("gratuitous count %d is negative", o.GratuitousCount)
	case o.GratuitousInterval < 0:
		return o, fmt.Errorf("gratuitous interval %v is negative", o.GratuitousInterval)
	case o.RefreshInterval < 0:
		return o, fmt.Errorf("refresh interval %v is negative", o.RefreshInterval)
	case o.ReplyRate < 0:
		return o, fmt.Errorf("reply rate %d is negative", o.ReplyRate)
	case o.ReplyBurst < 0:
		return o, fmt.Errorf("reply burst %d is negative", o.ReplyBurst)
	}
	if o.GratuitousCount == 0 {
		o.GratuitousCount = DefaultGratuitousCount
	}
	if o.GratuitousInterval == 0 {
		o.GratuitousInterval = DefaultGratuitousInterval
	}
	if o.ReplyRate == 0 {
		o.ReplyRate = DefaultReplyRate
	}
	if o.ReplyBurst == 0 {
		o.ReplyBurst = DefaultReplyBurst
	}
	return o, nil
}

// An Announcer answers ARP and NDP for the active VIPs on one interface and
// announces each VIP when it becomes active. Create it with [New], start
// [Announcer.Run] in a goroutine, change the VIPs with [Announcer.SetVIPs]
// at any time (also before Run), and release it with [Announcer.Close].
type Announcer struct {
	iface string
	log   *slog.Logger
	opts  Options
	r     *responder
	arp   *proto
	ndp   *proto

	wake    chan struct{} // SetVIPs → Run: the schedule changed
	done    chan struct{} // closed by Close
	running atomic.Bool

	lastConflict atomic.Int64 // unix nanoseconds of the last conflict logged

	mu     sync.Mutex
	closed bool
	sched  map[netip.Addr]*schedule // gratuitous announcements to come
	groups map[string]bool          // solicited-node group MACs joined
}

// proto is one protocol's socket, handler and counters.
type proto struct {
	name   string // "ARP" or "NDP"
	conn   packetConn
	handle func([]byte) ([]byte, netip.Addr, Reason)
	c      protoCounters
}

// schedule is when a VIP is announced next.
type schedule struct {
	left int // announcements left of the first GratuitousCount
	next time.Time
}

// New opens the packet sockets of an announcer for the interface named
// ifaceName, in the network namespace of the calling thread. The interface
// needs an Ethernet address and nothing else: no IPv4 or IPv6 address of its
// own. Its MAC is read once, here. log may be nil.
func New(ifaceName string, opts Options, log *slog.Logger) (*Announcer, error) {
	ifi, err := net.InterfaceByName(ifaceName)
	if err != nil {
		return nil, fmt.Errorf("announcing on %q: %w", ifaceName, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("announcing on %q: the interface has no Ethernet address", ifaceName)
	}
	arpConn, err := listenARP(ifi)
	if err != nil {
		return nil, err
	}
	ndpConn, err := listenNDP(ifi)
	if err != nil {
		arpConn.Close()
		return nil, err
	}
	a, err := newAnnouncer(ifi.Name, ifi.HardwareAddr, arpConn, ndpConn, opts, log)
	if err != nil {
		arpConn.Close()
		ndpConn.Close()
		return nil, fmt.Errorf("announcing on %q: %w", ifaceName, err)
	}
	return a, nil
}

// newAnnouncer makes an announcer on the given sockets, which it owns from
// then on (also when it fails).
func newAnnouncer(iface string, mac net.HardwareAddr, arpConn, ndpConn packetConn, opts Options, log *slog.Logger) (*Announcer, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := newResponder(slices.Clone(mac), newTokenBucket(float64(opts.ReplyRate), opts.ReplyBurst))
	a := &Announcer{
		iface:  iface,
		log:    log.With("interface", iface),
		opts:   opts,
		r:      r,
		arp:    &proto{name: "ARP", conn: arpConn, handle: r.handleARP},
		ndp:    &proto{name: "NDP", conn: ndpConn, handle: r.handleNDP},
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		sched:  map[netip.Addr]*schedule{},
		groups: map[string]bool{},
	}
	return a, nil
}

// Interface returns the name of the interface the announcer serves.
func (a *Announcer) Interface() string { return a.iface }

// Name is the interface's name: what the control plane's status shows for
// this announcer.
func (a *Announcer) Name() string { return a.iface }

// MAC returns the interface's MAC address, the one the announcer gives out.
func (a *Announcer) MAC() net.HardwareAddr { return slices.Clone(a.r.mac) }

// SetVIPs makes vips the set of active VIPs of the interface. A VIP that
// was not active before is announced at once and then
// Options.GratuitousCount-1 more times; one that is no longer in vips is not
// answered from the moment SetVIPs returns (a reply already on its way out
// may still leave). IPv6 VIPs get their solicited-node multicast group
// joined, and left when they go. Invalid, unspecified, multicast and
// broadcast addresses are skipped and logged; IPv4-mapped IPv6 addresses
// count as IPv4. SetVIPs is safe for concurrent use; after Close it does
// nothing.
func (a *Announcer) SetVIPs(vips []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	old := *a.r.vips.Load()
	next := make(vipSet, len(vips))
	for _, v := range vips {
		v = v.Unmap().WithZone("")
		if !v.IsValid() || v.IsUnspecified() || v.IsMulticast() || v == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			a.log.Warn("not announcing an address that cannot be a VIP", "vip", v)
			continue
		}
		if c, ok := old[v]; ok {
			next[v] = c
		} else {
			next[v] = &vipCounters{}
		}
	}

	// Join the new groups before answering, leave the old ones after.
	want := map[string]bool{}
	for v := range next {
		if v.Is6() {
			want[string(multicastMAC(solicitedNode(v)))] = true
		}
	}
	for g := range want {
		if a.groups[g] {
			continue
		}
		if err := a.ndp.conn.JoinGroup(net.HardwareAddr(g)); err != nil {
			// Left unjoined, the group is tried again on the next
			// SetVIPs. Solicitations still arrive where the NIC
			// does not filter multicast, or in promiscuous mode.
			a.log.Error("joining solicited-node multicast group", "group", net.HardwareAddr(g), "err", err)
			continue
		}
		a.groups[g] = true
	}
	a.r.vips.Store(&next)
	for g := range a.groups {
		if want[g] {
			continue
		}
		if err := a.ndp.conn.LeaveGroup(net.HardwareAddr(g)); err != nil {
			a.log.Error("leaving solicited-node multicast group", "group", net.HardwareAddr(g), "err", err)
		}
		delete(a.groups, g)
	}

	now := time.Now()
	for _, v := range sortedAddrs(next) {
		if _, ok := old[v]; !ok {
			a.sched[v] = &schedule{left: a.opts.GratuitousCount, next: now}
			a.log.Info("announcing VIP", "vip", v)
		}
	}
	for _, v := range sortedAddrs(old) {
		if _, ok := next[v]; !ok {
			delete(a.sched, v)
			a.log.Info("stopped announcing VIP", "vip", v)
		}
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func sortedAddrs(s vipSet) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for v := range s {
		out = append(out, v)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Run answers requests and sends gratuitous announcements until ctx ends or
// Close is called, and returns nil then. It returns an error when a socket
// fails for good. Run is the owner of the announcer's goroutines: they have
// all ended when it returns. An announcer runs once.
func (a *Announcer) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	for _, p := range []*proto{a.arp, a.ndp} {
		wg.Go(func() {
			if err := a.serve(p); err != nil {
				errc <- err
			}
		})
	}
	err := a.announceLoop(ctx, errc)
	// A deadline in the past makes the readers' ReadFrom return. After
	// Close the sockets are closed, which does the same.
	for _, p := range []*proto{a.arp, a.ndp} {
		_ = p.conn.SetReadDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	return err
}

// serve reads and answers p's frames until its socket is stopped.
func (a *Announcer) serve(p *proto) error {
	buf := make([]byte, readBuffer)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) || a.isClosed():
				return nil
			case errors.Is(err, unix.ENETDOWN):
				// The link went down. The socket stays bound and
				// receives again when it comes back up.
				a.log.Warn("interface went down", "protocol", p.name)
				continue
			}
			return fmt.Errorf("reading %s frames on %q: %w", p.name, a.iface, err)
		}
		a.process(p, buf[:n])
	}
}

// process handles one received frame: it counts it, and sends the reply if
// the VIP is still active.
func (a *Announcer) process(p *proto, frame []byte) {
	p.c.received.Add(1)
	reply, vip, reason := p.handle(frame)
	switch reason {
	case ReasonAnswered, ReasonRateLimited:
		if c, ok := a.r.active(vip); ok {
			c.requests.Add(1)
		}
	case ReasonReplyIgnored, ReasonNotARequest:
		if vip.IsValid() {
			a.logConflict(p, vip)
		}
	}
	if reason != ReasonAnswered {
		p.c.drops[reason].Add(1)
		return
	}
	c, ok := a.r.active(vip)
	if !ok {
		// Removed since the handler looked it up.
		p.c.drops[ReasonNotOurs].Add(1)
		return
	}
	if err := a.write(p, reply); err != nil {
		p.c.sendErrors.Add(1)
		a.log.Debug("sending reply", "protocol", p.name, "vip", vip, "err", err)
		return
	}
	p.c.replies.Add(1)
	c.replies.Add(1)
}

func (a *Announcer) write(p *proto, frame []byte) error {
	_, err := p.conn.WriteTo(frame, &packet.Addr{HardwareAddr: net.HardwareAddr(frame[0:6])})
	return err
}

// logConflict logs, at most once per conflictLogEvery, that another host
// announces one of our VIPs.
func (a *Announcer) logConflict(p *proto, vip netip.Addr) {
	now := time.Now().UnixNano()
	last := a.lastConflict.Load()
	if last != 0 && now-last < int64(conflictLogEvery) || !a.lastConflict.CompareAndSwap(last, now) {
		return
	}
	a.log.Warn("another host announces an active VIP: two appliances claim it, or a failover is under way", "protocol", p.name, "vip", vip)
}

// announceLoop sends the gratuitous announcements when they are due.
func (a *Announcer) announceLoop(ctx context.Context, errc <-chan error) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		due, next := a.takeDue(now)
		for _, v := range due {
			a.announce(v)
		}
		var tick <-chan time.Time
		if !next.IsZero() {
			timer.Reset(next.Sub(now))
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.done:
			return nil
		case err := <-errc:
			return err
		case <-a.wake:
		case <-tick:
		}
	}
}

// takeDue returns the VIPs to announce at now, in address order, and moves
// their schedule on; next is when the next one is due, zero if none is.
func (a *Announcer) takeDue(now time.Time) (due []netip.Addr, next time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for v, s := range a.sched {
		if !s.next.After(now) {
			due = append(due, v)
			switch {
			case s.left > 1:
				s.left--
				s.next = now.Add(a.opts.GratuitousInterval)
			case a.opts.RefreshInterval > 0:
				s.left = 0
				s.next = now.Add(a.opts.RefreshInterval)
			default:
				delete(a.sched, v)
				continue
			}
		}
		if next.IsZero() || s.next.Before(next) {
			next = s.next
		}
	}
	slices.SortFunc(due, netip.Addr.Compare)
	return due, next
}

// announce sends one gratuitous announcement of vip if it is still active:
// a gratuitous ARP request and reply, or an unsolicited neighbour
// advertisement to all-nodes.
func (a *Announcer) announce(vip netip.Addr) {
	c, ok := a.r.active(vip)
	if !ok {
		return
	}
	mac := a.r.mac
	var p *proto
	var frames [][]byte
	if vip.Is4() {
		p = a.arp
		// The request form (RFC 5227 announcement: target hardware
		// address zero) and the reply form (target hardware address our
		// own, as Linux wants to treat a reply as gratuitous).
		req, err1 := arpFrame(ethernet.Broadcast, arp.OperationRequest, mac, vip, zeroMAC, vip)
		rep, err2 := arpFrame(ethernet.Broadcast, arp.OperationReply, mac, vip, mac, vip)
		if err := errors.Join(err1, err2); err != nil {
			a.log.Error("building gratuitous ARP", "vip", vip, "err", err)
			return
		}
		frames = [][]byte{req, rep}
	} else {
		p = a.ndp
		na, err := naFrame(mac, allNodesMAC, vip, allNodes, vip, false)
		if err != nil {
			a.log.Error("building unsolicited neighbour advertisement", "vip", vip, "err", err)
			return
		}
		frames = [][]byte{na}
	}
	for _, f := range frames {
		if err := a.write(p, f); err != nil {
			p.c.sendErrors.Add(1)
			a.log.Warn("sending gratuitous announcement", "protocol", p.name, "vip", vip, "err", err)
			continue
		}
		p.c.gratuitous.Add(1)
		c.gratuitous.Add(1)
	}
}

// Stats returns the announcer's counters. It is safe for concurrent use.
func (a *Announcer) Stats() Stats {
	s := Stats{Interface: a.iface, ARP: a.arp.c.snapshot(), NDP: a.ndp.c.snapshot()}
	set := *a.r.vips.Load()
	for _, v := range sortedAddrs(set) {
		c := set[v]
		s.VIPs = append(s.VIPs, VIPStats{VIP: v, Requests: c.requests.Load(), Replies: c.replies.Load(), Gratuitous: c.gratuitous.Load()})
	}
	return s
}

func (a *Announcer) isClosed() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Close stops Run, if it runs, and closes the sockets, which drops the
// multicast memberships. Nothing is announced or answered afterwards; the
// VIPs are not withdrawn (the next owner's gratuitous announcements take
// them over). Close is idempotent.
func (a *Announcer) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.done)
	a.r.vips.Store(&vipSet{})
	a.mu.Unlock()
	return errors.Join(a.arp.conn.Close(), a.ndp.conn.Close())
}
