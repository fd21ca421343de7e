package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// Options configure Run.
type Options struct {
	// Duration of the soak proper, after the set-up (default 10 minutes).
	Duration time.Duration
	// Long is the number of long-lived connections, spread over the four
	// VIPs (default 200).
	Long int
	// ShortRate is the number of new short connections a second (default
	// 20).
	ShortRate float64
	// Pause between two changes (default 4 s). It must be longer than the
	// echo interval (1 s): a flow keeps its backend across a change only if
	// it sends a packet before the next change (docs/architecture.md).
	Pause time.Duration
	// Backends in the topology (default 6; at least 5).
	Backends int
	// Kinds are the kinds of change to make (default ChangeKinds).
	Kinds []string
	// Binary is a built xdplb; empty: the soak builds cmd/xdplb.
	Binary string
	// Progress, when set, gets a line for each change and each defect as
	// it happens.
	Progress io.Writer
}

// Limits of the soak's classification.
// The machine is shared and may be slow: a break is fast within 8 s (an echo
// a second, the reload or the health check's apply, scheduling), and an
// echo answered 3 s after its backend left is late. Runs here saw breaks
// within 1.2–3.6 s.
var limits = Limits{FastBreak: 8 * time.Second, Stale: 3 * time.Second, Slack: time.Second}

const (
	echoEvery   = time.Second
	echoTimeout = 10 * time.Second
	dialTimeout = 10 * time.Second
	// waitHealth bounds the wait for a backend to be seen up or down.
	waitHealth = 30 * time.Second
)

// The change kinds, in the order of the first cycle.
const (
	ChangeAdd           = "add"
	ChangeReweight      = "reweight"
	ChangeDrain         = "drain"
	ChangeHealthFlap    = "health-flap"
	ChangeServiceAdd    = "service-add"
	ChangeRestart       = "restart"
	ChangeRemove        = "remove"
	ChangeBadReload     = "bad-reload"
	ChangeServiceRemove = "service-remove"
	ChangeReloadRestart = "reload-restart"
)

// ChangeKinds are every kind of change the soak makes.
var ChangeKinds = []string{ChangeAdd, ChangeReweight, ChangeDrain, ChangeHealthFlap, ChangeServiceAdd,
	ChangeRestart, ChangeRemove, ChangeBadReload, ChangeServiceRemove, ChangeReloadRestart}

// soak is one run.
type soak struct {
	opts     Options
	topo     *testnet.Topology
	srv      *servers
	d        *daemon
	files    files
	backends map[string]*backend
	names    map[string]string // address -> backend name
	rng      *rand.Rand

	// The configuration: the four main services and the churn services.
	cfgMu      sync.Mutex
	main       []*service
	churn      []*service
	churnN     int
	dialable   []*service // churn services short connections may go to
	inflight   map[string]*sync.WaitGroup
	explainSem chan struct{} // bounds the explains under way (whereIs)

	mu       sync.Mutex
	tl       Timeline
	outcomes []Outcome
	health   map[[2]string]healthSeen // (service, backend) -> what the monitor saw
	snaps    []snapshot
	stalls   []stall
	problems []Defect
	report   Report

	echoes, longOpened, shortOpened, dialFailed, shortSkipped atomic.Int64
}

type healthSeen struct {
	state   string
	goneIdx int // index in tl.Gone of the open "down" interval, or -1
}

type snapshot struct {
	at time.Time
	c  map[string]float64
}

// Run runs a soak and reports what it saw. The error is for a soak that
// could not run; defects are in the report.
func Run(ctx context.Context, opts Options) (_ *Report, err error) {
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Minute
	}
	if opts.Long <= 0 {
		opts.Long = 200
	}
	if opts.ShortRate <= 0 {
		opts.ShortRate = 20
	}
	if opts.Pause <= 0 {
		opts.Pause = 4 * time.Second
	}
	if opts.Pause <= echoEvery {
		return nil, fmt.Errorf("soak: pause %v: want more than the echo interval %v", opts.Pause, echoEvery)
	}
	if opts.Backends == 0 {
		opts.Backends = 6
	}
	if opts.Backends < 5 {
		return nil, fmt.Errorf("soak: %d backends: want at least 5", opts.Backends)
	}
	if len(opts.Kinds) == 0 {
		opts.Kinds = ChangeKinds
	}
	for _, k := range opts.Kinds {
		if !slices.Contains(ChangeKinds, k) {
			return nil, fmt.Errorf("soak: no change of kind %q (want some of %s)", k, strings.Join(ChangeKinds, ", "))
		}
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("soak needs root (namespaces, XDP); running as uid %d", uid)
	}
	s := &soak{opts: opts, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
		inflight: map[string]*sync.WaitGroup{}, explainSem: make(chan struct{}, 2), health: map[[2]string]healthSeen{}}

	// Everything set up is torn down in reverse order, also on error and
	// when ctx is cancelled (Ctrl-C).
	var cleanups []func() error
	defer func() {
		var errs []error
		for i := len(cleanups) - 1; i >= 0; i-- {
			errs = append(errs, cleanups[i]())
		}
		if cerr := errors.Join(errs...); cerr != nil {
			err = errors.Join(err, fmt.Errorf("soak: cleaning up: %w", cerr))
		}
	}()

	dir, err := os.MkdirTemp("", "xdplb-soak")
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() error { return os.RemoveAll(dir) })

	bin := opts.Binary
	if bin == "" {
		bin = filepath.Join(dir, "xdplb")
		fmt.Fprintln(opts.Progress, "soak: building cmd/xdplb")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/xdplb/xdplb/cmd/xdplb").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("soak: go build: %w\n%s", err, out)
		}
	}

	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("soak: mounting bpffs on %s: %w", bpffs, err)
	}
	cleanups = append(cleanups, func() error { return unix.Unmount(bpffs, unix.MNT_DETACH) })

	fmt.Fprintf(opts.Progress, "soak: building the topology (client, lb, %d backends)\n", opts.Backends)
	s.topo, err = testnet.NewTopology(testnet.TopologyConfig{Backends: opts.Backends})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, s.topo.Close)

	if err := s.setUpBackends(&cleanups); err != nil {
		return nil, err
	}

	s.files = files{Socket: filepath.Join(dir, "xdplb.sock"), State: filepath.Join(dir, "state"),
		BPF: filepath.Join(bpffs, "xdplb"), Metrics: "127.0.0.1:9650"}
	s.d = &daemon{bin: bin, cfg: filepath.Join(dir, "xdplb.yaml"), socket: s.files.Socket,
		logPath: filepath.Join(dir, "xdplb.log"), metrics: s.files.Metrics, ns: s.topo.LB.NS}
	if err := s.writeConfig(); err != nil {
		return nil, err
	}
	fmt.Fprintln(opts.Progress, "soak: starting xdplb run")
	if err := s.d.start(ctx); err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() error {
		errs := []error{s.d.stop()}
		if out, err := exec.Command(bin, "detach", "--pin-path", s.files.BPF).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("xdplb detach: %w: %s", err, out))
		}
		return errors.Join(errs...)
	})
	// Every backend up in every main service before the first connection.
	for _, svc := range s.main {
		for _, m := range svc.members {
			if err := s.awaitHealth(ctx, svc.name, m.name, "up"); err != nil {
				return nil, fmt.Errorf("soak: before the start: %w\n%s", err, s.d.log())
			}
		}
	}
	return s.run(ctx)
}

// setUpBackends puts every VIP the soak may use on the backends' lo, runs
// xdplb's decap program on each (for the IPIP services) and starts their
// servers.
func (s *soak) setUpBackends(cleanups *[]func() error) error {
	s.backends, s.names = map[string]*backend{}, map[string]string{}
	for i, h := range s.topo.Backends {
		b := &backend{name: h.Name, v4: h.IPv4, v6: h.IPv6, spareNow: i >= 4}
		s.backends[h.Name] = b
		s.names[h.IPv4.String()], s.names[h.IPv6.String()] = h.Name, h.Name
	}
	v4 := func(n byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 100, n}) }
	v6 := func(n byte) netip.Addr {
		a := netip.MustParseAddr("2001:db8:100::").As16()
		a[15] = n
		return netip.AddrFrom16(a)
	}
	var first []member
	for _, h := range s.topo.Backends[:4] {
		first = append(first, member{name: h.Name, weight: 1})
	}
	s.main = []*service{
		{name: "l2-v4", vip: v4(1), encap: "none"},
		{name: "l2-v6", vip: v6(1), encap: "none"},
		{name: "ipip-v4", vip: v4(2), encap: "ipip"},
		{name: "ipip-v6", vip: v6(2), encap: "ipip"},
	}
	for _, svc := range s.main {
		svc.members = slices.Clone(first)
	}
	vips := []netip.Addr{v4(1), v6(1), v4(2), v6(2)}
	for n := range byte(churnVIPs) {
		vips = append(vips, v4(10+n), v6(10+n))
	}
	for _, vip := range vips {
		if err := s.topo.AddVIPToBackends(vip); err != nil {
			return err
		}
	}
	for _, h := range s.topo.Backends {
		err := h.NS.Do(func() error {
			// Only the appliance's encapsulated packets: its encap
			// sources are its own addresses (configYAML).
			allow := []netip.Prefix{netip.PrefixFrom(s.topo.LB.IPv4, 32), netip.PrefixFrom(s.topo.LB.IPv6, 128)}
			d, err := xdp.OpenDecap(h.Link, xdp.DecapOptions{PinPath: xdp.NoPin, Allow: allow})
			if err != nil {
				return err
			}
			*cleanups = append(*cleanups, d.Close)
			return nil
		})
		if err != nil {
			return fmt.Errorf("decap on %s: %w", h.Name, err)
		}
	}
	s.srv = newServers(s.topo.Backends)
	*cleanups = append(*cleanups, s.srv.Close)
	for _, h := range s.topo.Backends {
		if err := s.srv.listen(h.Name); err != nil {
			return err
		}
	}
	return nil
}

// churnVIPs is how many VIP addresses of each family churn services take
// in turn.
const churnVIPs = 8

func (s *soak) writeConfig() error {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return writeAtomically(s.d.cfg, s.configLocked())
}

func (s *soak) configLocked() string {
	return configYAML(s.files, s.topo.LB.IPv4, s.topo.LB.IPv6, append(slices.Clone(s.main), s.churn...), s.backends)
}

// run is the soak proper: connections, changes and the monitor until the
// duration is over, then the classification.
func (s *soak) run(ctx context.Context) (*Report, error) {
	start := time.Now()
	s.tl.Start = start
	s.report = Report{Started: start, Backends: s.opts.Backends, Changes: map[string]int{}}
	for _, svc := range s.main {
		s.report.VIPs = append(s.report.VIPs, fmt.Sprintf("%s %s (dsr, encap %s)", svc.name, svc.vipPort(), svc.encap))
	}
	s.snapshot(ctx)
	fmt.Fprintf(s.opts.Progress, "soak: %d long-lived connections over %d VIPs, %.0f new connections a second, a change every %v, for %v\n",
		s.opts.Long, len(s.main), s.opts.ShortRate, s.opts.Pause, s.opts.Duration)

	// Cancelled, not a deadline: a dial that ends because the soak is over
	// then always finds runCtx.Err() set, and is not counted.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopTimer := time.AfterFunc(s.opts.Duration, cancel)
	defer stopTimer.Stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.monitor(runCtx) })
	wg.Go(func() { s.watchStalls(runCtx) })
	for i := range s.opts.Long {
		wg.Go(func() { s.longConn(runCtx, s.main[i%len(s.main)]) })
	}
	wg.Go(func() { s.shortConns(runCtx) })
	var changeErr error
	wg.Go(func() {
		changeErr = s.changes(runCtx, ctx)
		if changeErr != nil {
			cancel()
		}
	})
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("soak: interrupted: %w", err)
	}
	if changeErr != nil {
		return nil, changeErr
	}
	if ok, err := s.d.exited(); ok {
		s.problem(fmt.Sprintf("xdplb run exited by itself: %v", err))
	}
	s.snapshot(ctx)
	end := time.Now()
	r := s.finish(end)
	if len(r.Defects) > 0 {
		r.Evidence = s.keepEvidence()
	}
	return r, nil
}

// keepEvidence copies the daemon's log and writes the soak's timeline into
// a directory that outlives the soak, and returns its path.
func (s *soak) keepEvidence() string {
	dir, err := os.MkdirTemp("", "xdplb-soak-evidence")
	if err != nil {
		return ""
	}
	if b, err := os.ReadFile(s.d.logPath); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "xdplb.log"), b, 0o644)
	}
	s.mu.Lock()
	tl := struct {
		Start   time.Time
		Changes []Change
		Gone    []Gone
		Stopped []Stopped
	}{s.tl.Start, s.tl.Changes, s.tl.Gone, s.tl.Stopped}
	b, err := json.MarshalIndent(tl, "", "  ")
	s.mu.Unlock()
	if err == nil {
		_ = os.WriteFile(filepath.Join(dir, "timeline.json"), b, 0o644)
	}
	fmt.Fprintf(s.opts.Progress, "soak: the daemon's log and the timeline are kept in %s\n", dir)
	return dir
}

// snapshot notes the datapath's counters, when the daemon answers.
func (s *soak) snapshot(ctx context.Context) {
	c, err := s.d.counters(ctx)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.snaps = append(s.snaps, snapshot{time.Now(), c})
	s.mu.Unlock()
}

// finish classifies the outcomes and fills the report.
func (s *soak) finish(end time.Time) *Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &s.report
	r.Duration = Seconds(end.Sub(r.Started))
	r.LongOpened = s.longOpened.Load()
	r.ShortOpened = s.shortOpened.Load()
	r.DialFailed = s.dialFailed.Load()
	r.ShortSkipped = s.shortSkipped.Load()
	r.Echoes = s.echoes.Load()
	expected, defects := Classify(s.outcomes, &s.tl, limits)
	r.ExpectedBy, r.ExpectedHow = map[string]int{}, map[string]int{}
	for _, e := range expected {
		r.BrokenExpected++
		r.ExpectedBy[e.Why]++
		r.ExpectedHow[e.Err]++
		r.MaxBreakDelay = max(r.MaxBreakDelay, Seconds(e.Delay))
	}
	for _, st := range s.stalls {
		r.MaxStall = max(r.MaxStall, Seconds(st.late))
	}
	for i := range defects {
		defects[i].Counters = s.countersAround(defects[i].At)
		// An echo every second and a server idle timeout of 4 s: a
		// stall in the last 6 s can have broken it.
		defects[i].SoakStall = Seconds(s.stallBefore(defects[i].At, 6*time.Second))
		defects[i].Line = defects[i].String()
	}
	for _, p := range s.problems {
		p.Line = p.String()
		defects = append(defects, p)
	}
	slices.SortFunc(defects, func(a, b Defect) int { return a.At.Compare(b.At) })
	r.Defects = defects
	if len(s.snaps) >= 2 {
		r.Counters = delta(s.snaps[0].c, s.snaps[len(s.snaps)-1].c)
	}
	return r
}

// countersAround names the datapath counters that moved between the
// snapshots before and after at.
func (s *soak) countersAround(at time.Time) string {
	var before, after *snapshot
	for i := range s.snaps {
		if !s.snaps[i].at.After(at) {
			before = &s.snaps[i]
		} else if after == nil {
			after = &s.snaps[i]
		}
	}
	if before == nil || after == nil {
		return ""
	}
	d := delta(before.c, after.c)
	return fmt.Sprintf("%s (%s to %s)", formatCounters(d), before.at.Format("15:04:05.0"), after.at.Format("15:04:05.0"))
}

// boring are counters that move with any traffic.
var boring = map[string]bool{"event/pin_hit": true, "event/tcp_syn": true, "event/vlan_tagged": true}

func delta(a, b map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range b {
		if x := v - a[k]; x != 0 && !boring[k] {
			d[k] = x
		}
	}
	return d
}

// stall is a time the soak's own goroutines ran late: its servers and
// clients were off the CPU too, and a server that stalls past its idle
// timeout closes a connection the datapath kept.
type stall struct {
	at   time.Time // when it ended
	late time.Duration
}

// watchStalls notes when a goroutine that sleeps 50 ms wakes more than
// 200 ms late.
func (s *soak) watchStalls(ctx context.Context) {
	const tick = 50 * time.Millisecond
	for {
		t0 := time.Now()
		if !sleep(ctx, tick) {
			return
		}
		if late := time.Since(t0) - tick; late > 200*time.Millisecond {
			s.mu.Lock()
			s.stalls = append(s.stalls, stall{time.Now(), late})
			s.mu.Unlock()
		}
	}
}

// stallBefore is the longest stall of the soak in the window before at.
func (s *soak) stallBefore(at time.Time, window time.Duration) time.Duration {
	var m time.Duration
	for _, st := range s.stalls {
		if !st.at.Before(at.Add(-window)) && !st.at.After(at) {
			m = max(m, st.late)
		}
	}
	return m
}

func (s *soak) record(o Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outcomes = append(s.outcomes, o)
}

// longConn keeps one long-lived connection to svc open, an echo about every
// second, and opens a new one when it breaks.
func (s *soak) longConn(ctx context.Context, svc *service) {
	// Spread the connections' starts and echoes over a second.
	if !sleep(ctx, time.Duration(s.randN(int64(echoEvery)))) {
		return
	}
	for ctx.Err() == nil {
		o := s.connect(ctx, svc, true)
		if o.Kind == DialFailed {
			if ctx.Err() == nil {
				s.record(o.Outcome)
			}
			sleep(ctx, time.Second)
			continue
		}
		c := o.c
		for {
			if !sleep(ctx, echoEvery*4/5+time.Duration(s.randN(int64(echoEvery*2/5)))) {
				o.Kind, o.At = Ended, time.Now()
				break
			}
			if !s.echo(c, &o.Outcome) {
				break
			}
		}
		if o.Kind == Broke {
			// Say where the datapath sends the flow now and which
			// backend holds its socket, for a defect's evidence.
			o.ErrText += s.whereIs(c, svc)
		}
		c.Close()
		s.record(o.Outcome)
		if o.Kind != Ended {
			sleep(ctx, 500*time.Millisecond)
		}
	}
}

// whereIs describes where a connection's packets go and which backend's
// server holds its other end, for a defect's evidence.
func (s *soak) whereIs(c *conn, svc *service) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var e controlplane.ExplainInfo
	where := "xdplb explain: "
	// A few at a time: a removal breaks dozens of connections at once.
	s.explainSem <- struct{}{}
	err := s.d.call(ctx, controlplane.Request{Command: "explain", From: c.LocalAddr().String(), VIP: svc.vipPort() + "/tcp"}, &e)
	<-s.explainSem
	if err == nil {
		where += e.Text
		if e.Program != nil && !e.Agree {
			where += " (the datapath program and its model disagree)"
		}
	} else {
		where += err.Error()
	}
	holders := s.srv.holders(c.LocalAddr().String(), c.RemoteAddr().String(), s.tl.Start)
	if len(holders) == 0 {
		holders = []string{"no backend"}
	}
	return fmt.Sprintf(" [%s; its socket is held by %s]", where, strings.Join(holders, ", "))
}

// connected is an Outcome in the making, with its connection.
type connected struct {
	Outcome
	c *conn
}

// connect dials svc and returns the outcome so far: DialFailed, or Ended
// (until something else happens) with the connection.
func (s *soak) connect(ctx context.Context, svc *service, long bool) connected {
	o := connected{Outcome: Outcome{Long: long, Service: svc.name, VIP: svc.vipPort(), Started: time.Now()}}
	c, err := dial(ctx, s.topo.Client, svc.vip, dialTimeout)
	if err != nil {
		o.Kind, o.At, o.Err, o.ErrText = DialFailed, time.Now(), errClass(err), err.Error()
		if ctx.Err() == nil {
			s.dialFailed.Add(1)
			fmt.Fprintf(s.opts.Progress, "soak: +%.1fs %s: new connection failed: %v\n", time.Since(s.tl.Start).Seconds(), svc.name, err)
		}
		return o
	}
	if long {
		s.longOpened.Add(1)
	} else {
		s.shortOpened.Add(1)
	}
	o.Kind, o.Backend, o.Client, o.c = Ended, c.backend, c.LocalAddr().String(), c
	return o
}

// echo makes one echo on c and notes it in o; false when the connection is
// over (o then says why).
func (s *soak) echo(c *conn, o *Outcome) bool {
	sent := time.Now()
	got, err := c.echo(fmt.Sprintf("%d", sent.UnixNano()), echoTimeout)
	if err == nil {
		s.echoes.Add(1)
		o.Echoes = append(o.Echoes, sent)
		return true
	}
	o.At = time.Now()
	if errors.Is(err, errMismatch) {
		o.Kind, o.Got = Mismatch, got
	} else {
		o.Kind, o.Err, o.ErrText = Broke, errClass(err), err.Error()
	}
	return false
}

// shortConns opens ShortRate new connections a second, each to one of the
// main VIPs or of the churn services that are up: greeting, one echo, close.
func (s *soak) shortConns(ctx context.Context) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / s.opts.ShortRate))
	defer tick.Stop()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.cfgMu.Lock()
		targets := append(slices.Clone(s.main), s.dialable...)
		svc := targets[s.randN(int64(len(targets)))]
		inflight := s.inflight[svc.name]
		if inflight != nil {
			inflight.Add(1)
		}
		s.cfgMu.Unlock()
		select {
		case sem <- struct{}{}:
		default:
			s.shortSkipped.Add(1) // the machine is too slow for the rate
			if inflight != nil {
				inflight.Done()
			}
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if inflight != nil {
				defer inflight.Done()
			}
			o := s.connect(ctx, svc, false)
			if o.Kind == DialFailed {
				if ctx.Err() == nil {
					s.record(o.Outcome)
				}
				return
			}
			if s.echo(o.c, &o.Outcome) {
				o.At = time.Now()
			}
			o.c.Close()
			s.record(o.Outcome)
		})
	}
}

func (s *soak) randN(n int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Int64N(n)
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
