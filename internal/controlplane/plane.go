package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/xdplb/xdplb/announce"
	"github.com/xdplb/xdplb/announce/bgp"
	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/lb/health"
	"github.com/xdplb/xdplb/xdp"
)

// maintainEvery is how often pinned flows are expired and finished
// transitions released.
const maintainEvery = 10 * time.Second

// routeSettle lets a burst of route changes (an interface going down takes
// many routes with it) end before next hops are resolved again.
const routeSettle = 100 * time.Millisecond

// Announcer tells the network where VIPs live: the L2 announcer of an
// interface (ARP/NDP, package announce) and the BGP speaker (package
// announce/bgp). The control plane decides which addresses are announceable
// and hands the same set to every announcer; only the L2 announcers on
// standby (announce.l2.mode external) get none.
type Announcer interface {
	// Name names the announcer in the status: the interface for L2.
	Name() string
	// Run announces until ctx ends.
	Run(ctx context.Context) error
	// SetVIPs replaces the set of addresses to announce.
	SetVIPs(vips []netip.Addr)
	// Close releases the announcer's sockets.
	Close() error
}

// Options configure a Plane.
type Options struct {
	// ConfigPath is the configuration file (absolute).
	ConfigPath string
	Logger     *slog.Logger
	// Sources are sources of services besides the configuration file, in
	// the order their claims are made at start.
	Sources []Source
	// Announcers are announcers besides the L2 announcers the
	// configuration asks for.
	Announcers []Announcer
	// Version is what the status reports.
	Version string
}

// Plane is the running appliance's control plane: it owns the datapath, the
// reconciler, health checks, announcers and the sources of services, and
// runs the loop that brings the datapath in line with them. Its query
// methods are safe for concurrent use; they answer the control socket and
// the metrics collector.
type Plane struct {
	log     *slog.Logger
	cfgPath string
	version string
	started time.Time

	dp         *xdp.Datapath
	rec        *lb.Reconciler
	alloc      *config.Allocator
	checker    *health.Checker
	announcers []Announcer
	l2         map[Announcer]bool // the L2 announcers announce.l2 asks for
	bgp        *bgp.Speaker       // nil without announce.bgp
	sources    []Source
	order      []string // source names, the file first
	merger     *merger

	// The loop's inputs.
	reloads       chan reloadRequest
	offered       chan struct{} // a source sent services (see pending)
	healthChanged chan struct{}
	nextHops      chan nextHopChange
	// beforeApply, when set (tests), runs at the start of every apply.
	beforeApply func()

	reloadsOK, reloadsFailed atomic.Uint64

	pendingMu sync.Mutex
	pending   map[string][]config.Service // offers the loop has not taken yet

	mu         sync.Mutex
	cfg        *config.Config
	loadedAt   time.Time
	offers     map[string][]config.Service // each source's services as taken
	sourceInfo map[string]SourceInfo
	services   []config.Service // as merged and applied
	conflicts  []ConflictInfo
	vips       map[xdp.VIPKey]string // the service of each VIP
	attached   map[string]*xdp.Attachment
	lastReload ReloadInfo
	announced  []netip.Addr
	l2Active   bool     // the L2 announcers answer (always, or told by `xdplb announce`)
	drained    bool     // `xdplb drain`: the BGP routes are withdrawn or tagged
	allocErrs  []string // services a pool could not give an address
	seedFile   string   // the generated seed's file, once read or made
	flows4     int
	flows6     int

	// snatAnnounce are the SNAT sources that are no host address.
	snatAnnounce []netip.Addr

	samplesMu sync.Mutex
	samples   []flowSample // VIPs' new-flow counters, for plans

	monitor monitorHub // the listeners of `xdplb monitor`
}

type reloadRequest struct {
	trigger string
	reply   chan ReloadInfo
}

// nextHopChange asks to resolve next hops again: those of addrs, or all.
type nextHopChange struct {
	addrs   []netip.Addr
	all     bool
	trigger string
}

// New loads the configuration and brings the datapath in line with it. A
// bad configuration at start is an error: there is nothing to keep.
func New(ctx context.Context, opts Options) (*Plane, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	order := []string{FileSource}
	for _, s := range opts.Sources {
		if err := checkSourceName(s.Name(), order); err != nil {
			return nil, err
		}
		order = append(order, s.Name())
	}
	cfg, err := config.Load(opts.ConfigPath)
	if err != nil {
		return nil, err
	}
	p := &Plane{
		log: log, cfgPath: opts.ConfigPath, version: opts.Version, started: time.Now(),
		alloc:         config.NewAllocator(cfg.Paths.State),
		sources:       opts.Sources,
		order:         order,
		merger:        newMerger(log),
		reloads:       make(chan reloadRequest),
		offered:       make(chan struct{}, 1),
		healthChanged: make(chan struct{}, 1),
		nextHops:      make(chan nextHopChange, 64),
		pending:       map[string][]config.Service{},
		offers:        map[string][]config.Service{},
		sourceInfo:    map[string]SourceInfo{},
		attached:      map[string]*xdp.Attachment{},
		l2:            map[Announcer]bool{},
		l2Active:      cfg.Announce.L2.Mode != config.L2ModeExternal,
	}
	if !p.l2Active {
		// Told active before a restart: answer again at once.
		if _, err := os.Stat(filepath.Join(cfg.Paths.State, l2ActiveFileName)); err == nil {
			p.l2Active = true
			log.Info("the L2 announcers were active before the restart: active until told otherwise")
		}
	}
	p.checker = health.New(health.Options{Logger: log, OnChange: func(lb.BackendKey, bool) {
		select {
		case p.healthChanged <- struct{}{}:
		default:
		}
	}})
	// The health of the last run: a restart does not flap backends.
	if err := p.checker.Load(p.healthFile(cfg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("health state not restored", "err", err)
	}
	l2 := cfg.Announce.L2
	for _, name := range l2.Interfaces {
		a, err := announce.New(name, announce.Options{GratuitousCount: l2.GratuitousCount, GratuitousInterval: l2.GratuitousInterval, RefreshInterval: l2.RefreshInterval}, log)
		if err != nil {
			p.closeAnnouncers()
			return nil, fmt.Errorf("announcing on %q: %w", name, err)
		}
		p.announcers = append(p.announcers, a)
		p.l2[a] = true
	}
	p.announcers = append(p.announcers, opts.Announcers...)
	p.dp, err = xdp.Open(xdp.Options{PinPath: cfg.Paths.BPF, MaxFlows: int(cfg.Conntrack.MaxFlows), MaxNATFlows: int(cfg.Conntrack.MaxNATFlows)})
	if err != nil {
		p.closeAnnouncers()
		return nil, err
	}
	log.Info("datapath loaded", "isa", p.dp.ISA())
	p.rec = lb.NewReconciler(p.dp, lb.KernelNextHops{}, lb.Options{MaxBackends: 65536})
	// Take over what an earlier instance left: its backends keep their ids
	// (and so their pinned flows and counters); what the configuration no
	// longer has is removed by the first apply.
	left, err := p.dp.Backends()
	if err != nil {
		p.closeAnnouncers()
		p.dp.Close()
		return nil, err
	}
	var leftVIPs []xdp.VIPKey
	for _, v := range p.dp.VIPs() {
		leftVIPs = append(leftVIPs, v.Key)
	}
	p.rec.Recover(leftVIPs, left)
	if b := cfg.Announce.BGP; b != nil {
		// A datapath taken over from an earlier instance forwarded all
		// along: the peers hear so (graceful restart's forwarding state).
		p.bgp, err = bgp.New(bgpOptions(b, len(leftVIPs) > 0), log)
		if err != nil {
			p.closeAnnouncers()
			p.dp.Close()
			return nil, err
		}
		p.announcers = append(p.announcers, p.bgp)
		// A drain outlives a restart: maintenance often needs one.
		if _, err := os.Stat(p.drainFile(cfg)); err == nil {
			p.drained = true
			p.bgp.SetDrained(true)
			log.Info("drained before the restart: the BGP routes stay withdrawn until `xdplb undrain`")
		}
	}
	if err := p.applyConfig(ctx, cfg, "start"); err != nil {
		p.closeAnnouncers()
		p.dp.Close()
		return nil, err
	}
	p.lastReload = ReloadInfo{At: p.loadedAt, Trigger: "start", Result: "success"}
	return p, nil
}

// Config returns the running configuration.
func (p *Plane) Config() *config.Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Datapath is the datapath the plane programs.
func (p *Plane) Datapath() *xdp.Datapath { return p.dp }

func (p *Plane) healthFile(cfg *config.Config) string {
	return filepath.Join(cfg.Paths.State, health.StateFile)
}

func (p *Plane) closeAnnouncers() {
	for _, a := range p.announcers {
		a.Close()
	}
}

// Run runs the control plane until ctx ends: the reconcile loop, sources,
// health checks, announcers, maintenance and the watchers of the
// configuration file, neighbours and routes. When it returns the datapath
// stays attached with its state, for a restarted daemon to take over.
func (p *Plane) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				select {
				case errc <- fmt.Errorf("%s: %w", name, err):
				default:
				}
			}
		}()
	}
	goRun("maintenance", p.maintainLoop)
	goRun("health checks", p.checker.Run)
	for _, a := range p.announcers {
		goRun("announcing on "+a.Name(), a.Run)
	}
	goRun("neighbours", p.watchNeighbors)
	goRun("routes", p.watchRoutes)
	goRun("config watch", p.watchConfig)
	for _, s := range p.sources {
		name := s.Name()
		goRun("source "+name, func(ctx context.Context) error {
			return s.Run(ctx, func(services []config.Service) { p.offer(name, services) })
		})
	}
	err := p.loop(ctx, errc)
	cancel()
	wg.Wait()
	p.closeAnnouncers()
	p.mu.Lock()
	last := p.cfg
	p.mu.Unlock()
	if serr := p.checker.Save(p.healthFile(last)); serr != nil {
		p.log.Warn("saving health state", "err", serr)
	}
	// The monitor's reader turns the program's flag off before the maps go.
	p.monitor.mu.Lock()
	p.monitor.stopLocked()
	p.monitor.mu.Unlock()
	// The datapath stays attached with its state: a restarted daemon takes
	// it over without dropping a flow.
	if cerr := p.dp.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// loop is the only writer of the datapath after New: every change (a
// reload, a source's services, a backend's health, a next hop) is applied
// here, one at a time. It kicks systemd's watchdog, so a loop stuck in an
// apply stops the kicks and systemd restarts the daemon.
func (p *Plane) loop(ctx context.Context, errc <-chan error) error {
	var kick <-chan time.Time
	if every := watchdogInterval(); every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		kick = t.C
		kickWatchdog()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-kick:
			kickWatchdog()
		case r := <-p.reloads:
			r.reply <- p.reload(ctx, r.trigger)
		case <-p.offered:
			p.pendingMu.Lock()
			offers := p.pending
			p.pending = map[string][]config.Service{}
			p.pendingMu.Unlock()
			p.mu.Lock()
			var names []string
			for name, services := range offers {
				p.offers[name] = services
				p.sourceInfo[name] = SourceInfo{Name: name, Services: len(services), Updated: time.Now()}
				names = append(names, name)
			}
			cfg := p.cfg
			p.mu.Unlock()
			sort.Strings(names)
			if err := p.applyConfig(ctx, cfg, "source "+strings.Join(names, ",")); err != nil {
				p.log.Error("applying services of a source", "sources", names, "err", err)
			}
		case <-p.healthChanged:
			// A backend went up or down: the same configuration, applied
			// with the new health (only what changed is written).
			cfg := p.Config()
			if err := p.applyConfig(ctx, cfg, "health"); err != nil {
				p.log.Error("applying a health change", "err", err)
			}
			if err := p.checker.Save(p.healthFile(cfg)); err != nil {
				p.log.Warn("saving health state", "err", err)
			}
		case c := <-p.nextHops:
			if c.all {
				p.rec.ForgetNextHops()
			} else {
				p.rec.ForgetNextHops(c.addrs...)
			}
			if err := p.applyConfig(ctx, p.Config(), c.trigger); err != nil {
				p.log.Error("re-applying after a next-hop change", "trigger", c.trigger, "err", err)
			}
		}
	}
}

// offer takes a source's services; the loop applies them.
func (p *Plane) offer(source string, services []config.Service) {
	p.pendingMu.Lock()
	p.pending[source] = slices.Clone(services)
	p.pendingMu.Unlock()
	select {
	case p.offered <- struct{}{}:
	default:
	}
}

// tableResize is the error of a configuration that changes the size of the
// flow tables (conntrack.maxFlows, conntrack.maxNATFlows) from running's:
// they are sized when the datapath is created.
func tableResize(running, cfg *config.Config) error {
	for _, c := range []struct {
		key       string
		old, next uint32
	}{
		{"conntrack.maxFlows", running.Conntrack.MaxFlows, cfg.Conntrack.MaxFlows},
		{"conntrack.maxNATFlows", running.Conntrack.MaxNATFlows, cfg.Conntrack.MaxNATFlows},
	} {
		if c.old != c.next {
			return fmt.Errorf("%s changed from %d to %d: the flow tables are sized when the datapath is created; restart with `xdplb detach` first to resize them", c.key, c.old, c.next)
		}
	}
	return nil
}

// applyConfig makes cfg the running configuration (interfaces,
// encapsulation sources, pools) with the services of the file and of every
// source merged. Errors of single services are reported in the status and
// do not fail the whole apply.
func (p *Plane) applyConfig(ctx context.Context, cfg *config.Config, trigger string) error {
	if p.beforeApply != nil {
		p.beforeApply()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg != nil {
		if err := tableResize(p.cfg, cfg); err != nil {
			return err
		}
	}
	if p.cfg != nil && cfg.Announce.L2.Mode != p.cfg.Announce.L2.Mode {
		// A change of mode starts from what the new mode says at start:
		// always answers, external waits to be told.
		p.l2Active = cfg.Announce.L2.Mode != config.L2ModeExternal
	}
	if p.cfg != nil && !reflect.DeepEqual(cfg.Announce.BGP, p.cfg.Announce.BGP) {
		return errors.New("announce.bgp changed: the BGP speaker takes its settings at start; restart xdplb to apply them (graceful restart keeps the routes meanwhile)")
	}
	for _, ifc := range cfg.Interfaces {
		if _, ok := p.attached[ifc.Name]; ok {
			continue
		}
		a, err := p.dp.Attach(ifc.Name, xdp.AttachMode(ifc.XDPMode))
		if err != nil {
			return err
		}
		p.attached[ifc.Name] = a
		p.log.Info("attached", "interface", a.Interface, "ifindex", a.IfIndex, "mode", a.Mode, "reused", a.Reused)
	}
	for name := range p.attached {
		if !hasInterface(cfg, name) {
			if err := p.dp.Detach(name); err != nil {
				return err
			}
			delete(p.attached, name)
			p.log.Info("detached", "interface", name)
		}
	}
	if err := p.dp.SetEncapSource(cfg.Encap.SourceIPv4, cfg.Encap.SourceIPv6); err != nil {
		return err
	}
	if err := p.dp.SetNAT(xdp.NATConfig{Sources: cfg.SNAT.Sources, PortLo: cfg.SNAT.PortLo, PortHi: cfg.SNAT.PortHi}); err != nil {
		return err
	}
	p.snatAnnounce = foreignAddrs(cfg.SNAT.Sources)
	addrs, svcErrs, err := p.alloc.Assign(cfg)
	if err != nil {
		return err
	}
	p.offers[FileSource] = cfg.Services(addrs)
	p.sourceInfo[FileSource] = SourceInfo{Name: FileSource, Services: len(p.offers[FileSource]), Updated: time.Now()}
	services, conflicts := p.merger.merge(p.order, p.offers, time.Now())
	seed := cfg.Maglev.Seed
	if !cfg.Maglev.SeedSet {
		if seed, err = p.localSeed(cfg.Paths.State); err != nil {
			return err
		}
	}
	// Until every source has offered its services once, what an earlier
	// instance left in the pinned datapath stays: it may be theirs.
	waiting := p.waitingSources()
	state := lb.State{Seed: seed, KeepLeft: len(waiting) > 0}
	vips := map[xdp.VIPKey]string{}
	for _, s := range services {
		ls := lbService(s)
		state.Services = append(state.Services, ls)
		for _, k := range vipKeys(s) {
			vips[k] = s.Name
		}
	}
	p.checker.SetTargets(health.Targets(services))
	st := p.rec.Apply(ctx, state, p.checker.Healthy)
	p.announce(services, st)
	for _, e := range st.Errors {
		p.log.Error("service not applied", "service", e.Service, "vip", e.VIP, "err", e.Err)
	}
	p.allocErrs = p.allocErrs[:0]
	for name, err := range svcErrs {
		p.log.Error("service has no address", "service", name, "err", err)
		p.allocErrs = append(p.allocErrs, fmt.Sprintf("%s: no address: %v", name, err))
	}
	sort.Strings(p.allocErrs)
	sortConflicts(conflicts)
	cfgChanged := p.cfg != cfg
	p.cfg, p.services, p.vips, p.conflicts, p.loadedAt = cfg, services, vips, conflicts, time.Now()
	p.log.Info("configuration applied", "trigger", trigger, "sha256", cfg.SHA256(), "services", len(services), "vips", len(vips), "took", st.Duration, "waiting_for", waiting)
	if cfgChanged {
		for _, src := range p.sources {
			if c, ok := src.(ConfigFollower); ok {
				c.ConfigChanged(cfg)
			}
		}
	}
	return nil
}

// waitingSources are the sources that have not offered services yet.
func (p *Plane) waitingSources() []string {
	var out []string
	for _, name := range p.order[1:] {
		if _, ok := p.offers[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}

// seedFile is where an appliance without maglev.seed keeps its own.
const seedFile = "maglev-seed"

// localSeed returns the Maglev seed of an appliance whose configuration sets
// none: made once at random and kept in the state directory, so that a
// restart keeps every flow's backend. It is logged once per process. The
// caller holds p.mu.
func (p *Plane) localSeed(stateDir string) ([16]byte, error) {
	var seed [16]byte
	path := filepath.Join(stateDir, seedFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		s, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(s) != len(seed) {
			return seed, fmt.Errorf("reading the generated Maglev seed: %s holds no base64 of %d bytes; set maglev.seed, or remove the file to make a new one (flows move)", path, len(seed))
		}
		copy(seed[:], s)
	case errors.Is(err, fs.ErrNotExist):
		if _, err := rand.Read(seed[:]); err != nil {
			return seed, err
		}
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return seed, fmt.Errorf("keeping the generated Maglev seed: %w", err)
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(base64.StdEncoding.EncodeToString(seed[:])+"\n"), 0o600); err != nil {
			return seed, fmt.Errorf("keeping the generated Maglev seed: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return seed, fmt.Errorf("keeping the generated Maglev seed: %w", err)
		}
	default:
		return seed, fmt.Errorf("reading the generated Maglev seed: %w", err)
	}
	if p.seedFile != path {
		p.seedFile = path
		p.log.Warn("maglev.seed is not set: this appliance uses a seed of its own; every appliance of a fleet must set the same maglev.seed",
			"seed", base64.StdEncoding.EncodeToString(seed[:]), "kept_in", path)
	}
	return seed, nil
}

// announce hands the announceable addresses to every announcer; the others
// are withdrawn at once, so a dead service attracts no traffic.
func (p *Plane) announce(services []config.Service, st lb.Status) {
	healthy := map[string]int{}
	for _, v := range st.VIPs {
		n := 0
		for _, b := range v.Backends {
			if b.Healthy && b.Weight > 0 && b.Error == "" {
				n++
			}
		}
		if n > healthy[v.Service] {
			healthy[v.Service] = n
		}
	}
	active := announceable(services, healthy)
	// SNAT sources that are no host address are answered for like VIPs:
	// the backends' replies must reach the appliance.
	for _, a := range p.snatAnnounce {
		if !slices.Contains(active, a) {
			active = append(active, a)
		}
	}
	for _, s := range services {
		if s.Announce && !slices.Contains(active, s.Addr) {
			p.log.Debug("not announced: too few healthy backends", "service", s.Name, "vip", s.Addr, "healthy", healthy[s.Name], "min", s.MinHealthyBackends)
		}
	}
	p.announced = active
	p.handOut()
}

// handOut gives every announcer the announceable addresses, but none to
// the L2 announcers while they are on standby. p.mu is held.
func (p *Plane) handOut() {
	for _, a := range p.announcers {
		if p.l2[a] && !p.l2Active {
			a.SetVIPs(nil)
			continue
		}
		a.SetVIPs(p.announced)
	}
}

// foreignAddrs are the addresses of addrs that are on no interface of the
// host (in the daemon's network namespace).
func foreignAddrs(addrs []netip.Addr) []netip.Addr {
	host := map[netip.Addr]bool{}
	if ifs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					host[ip.Unmap()] = true
				}
			}
		}
	}
	var out []netip.Addr
	for _, a := range addrs {
		if !host[a] {
			out = append(out, a)
		}
	}
	return out
}

// bgpOptions are the speaker's options from the configuration.
func bgpOptions(b *config.BGPAnnounce, restarting bool) bgp.Options {
	o := bgp.Options{
		LocalASN: b.LocalASN, RouterID: b.RouterID, ListenPort: b.ListenPort,
		Communities:     b.CommunityValues,
		GracefulRestart: b.GracefulRestart.Enabled, RestartTime: b.GracefulRestart.RestartTime,
		Restarting:            restarting && b.GracefulRestart.Enabled,
		DrainGracefulShutdown: b.Drain == config.DrainGracefulShutdown,
	}
	for _, peer := range b.Peers {
		o.Peers = append(o.Peers, bgp.Peer{Address: peer.Address, ASN: peer.ASN, HoldTime: peer.HoldTime, Password: peer.Password})
	}
	return o
}

func hasInterface(cfg *config.Config, name string) bool {
	for _, i := range cfg.Interfaces {
		if i.Name == name {
			return true
		}
	}
	return false
}

// lbService is a service as the reconciler takes it.
func lbService(s config.Service) lb.Service {
	out := lb.Service{Name: s.Name, Addr: s.Addr, Proto: xdp.Proto(s.Protocol), Ports: s.Ports, TableSize: s.TableSize, Mode: xdp.ModeDSRL2}
	if s.Mode == config.ModeSNAT {
		out.Mode = xdp.ModeSNAT
	} else if s.Encap == config.EncapIPIP {
		out.Mode = xdp.ModeDSRIPIP
	}
	for _, b := range s.Backends {
		out.Backends = append(out.Backends, lb.Backend{Addr: b.Addr, Port: b.Port, Weight: b.Weight})
	}
	return out
}

// Reload reads the configuration file again and applies it; a bad one
// keeps the running configuration, is counted and logged once, and shows in
// the status. It waits for the loop (see Run) to take it.
func (p *Plane) Reload(ctx context.Context, trigger string) ReloadInfo {
	r := reloadRequest{trigger: trigger, reply: make(chan ReloadInfo, 1)}
	select {
	case p.reloads <- r:
	case <-ctx.Done():
		return ReloadInfo{At: time.Now(), Trigger: trigger, Result: "failure", Errors: []string{ctx.Err().Error()}}
	}
	select {
	case info := <-r.reply:
		return info
	case <-ctx.Done():
		return ReloadInfo{At: time.Now(), Trigger: trigger, Result: "failure", Errors: []string{ctx.Err().Error()}}
	}
}

func (p *Plane) reload(ctx context.Context, trigger string) ReloadInfo {
	info := ReloadInfo{At: time.Now(), Trigger: trigger, Result: "success"}
	cfg, err := config.Load(p.cfgPath)
	if err == nil {
		same := p.Config().SHA256() == cfg.SHA256()
		if same && trigger == "file" {
			return info // an event on the directory that did not change the file
		}
		err = p.applyConfig(ctx, cfg, trigger)
	}
	if err != nil {
		info.Result = "failure"
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				info.Errors = append(info.Errors, e.Error())
			}
		} else {
			info.Errors = []string{err.Error()}
		}
		p.reloadsFailed.Add(1)
		p.log.Error("reload failed, keeping the running configuration", "trigger", trigger, "errors", strings.Join(info.Errors, "; "))
	} else {
		p.reloadsOK.Add(1)
	}
	p.mu.Lock()
	p.lastReload = info
	p.mu.Unlock()
	return info
}

// Ready says whether a configuration is applied (for /readyz).
func (p *Plane) Ready() error {
	if p.Config() == nil {
		return errors.New("no configuration applied")
	}
	return nil
}

func (p *Plane) maintainLoop(ctx context.Context) error {
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	for {
		cfg := p.Config()
		idle := cfg.Conntrack.IdleTimeout
		to := cfg.SNAT.Timeouts
		if nres, err := p.dp.MaintainNAT(xdp.NATTimeouts{TCPEstablished: to.TCPEstablished, TCPTransitory: to.TCPTransitory, UDP: to.UDP}); err != nil {
			p.log.Error("NAT maintenance", "err", err)
		} else if len(nres.Expired) > 0 {
			p.log.Debug("NAT maintenance", "expired", nres.Expired, "remaining", nres.Remaining)
		}
		res, err := p.dp.Maintain(idle)
		if err != nil {
			p.log.Error("maintenance", "err", err)
		} else {
			if res.Expired+res.Stale > 0 || res.TablesFreed > 0 {
				p.log.Debug("maintenance", "expired", res.Expired, "stale", res.Stale, "remaining", res.Remaining, "tables_freed", res.TablesFreed)
			}
			p.sampleFlows(time.Now(), idle+maintainEvery)
			n4, n6 := p.dp.FlowCounts()
			p.mu.Lock()
			p.flows4, p.flows6 = n4, n6
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchNeighbors resolves a backend's next hop again when the kernel learns
// a new MAC for the neighbour it goes through: the backend itself, or the
// gateway of its route.
func (p *Plane) watchNeighbors(ctx context.Context) error {
	return xdp.WatchNeighbors(ctx, func(u xdp.NeighborUpdate) {
		addrs := p.rec.NextHopsVia(u.IP, u.MAC)
		if len(addrs) == 0 {
			return
		}
		p.log.Debug("next hop changed its MAC", "neighbour", u.IP, "mac", u.MAC, "backends", len(addrs))
		select {
		case p.nextHops <- nextHopChange{addrs: addrs, trigger: "neighbour"}:
		case <-ctx.Done():
		}
	})
}

// watchRoutes resolves every next hop again once a burst of route changes
// has settled; only entries whose next hop really changed are rewritten.
func (p *Plane) watchRoutes(ctx context.Context) error {
	changed := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- xdp.WatchRoutes(ctx, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	}()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-changed:
			if settle == nil {
				settle = time.After(routeSettle)
			}
		case <-settle:
			settle = nil
			select {
			case p.nextHops <- nextHopChange{all: true, trigger: "route"}:
			case <-ctx.Done():
			}
		}
	}
}

// watchConfig reloads when the configuration file changes. It watches the
// directory: editors replace files rather than write them.
func (p *Plane) watchConfig(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(p.cfgPath)); err != nil {
		return err
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) == p.cfgPath && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				// Let a burst of events (write, rename) settle.
				timer = time.After(200 * time.Millisecond)
			}
		case err := <-w.Errors:
			p.log.Error("watching the configuration", "err", err)
		case <-timer:
			timer = nil
			p.Reload(ctx, "file")
		}
	}
}
