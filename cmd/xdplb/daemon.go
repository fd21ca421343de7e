package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/xdplb/xdplb/announce"
	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/lb/health"
	"github.com/xdplb/xdplb/xdp"
)

const defaultConfig = "/etc/xdplb/xdplb.yaml"

// maintainEvery is how often pinned flows are expired and finished
// transitions released.
const maintainEvery = 10 * time.Second

// daemon is a running xdplb: the datapath, the reconciler and the running
// configuration. Its methods are safe for concurrent use; they answer the
// control socket (controlAPI) and the metrics collector (metricsSource).
type daemon struct {
	log     *slog.Logger
	cfgPath string
	started time.Time

	dp         *xdp.Datapath
	rec        *lb.Reconciler
	alloc      *config.Allocator
	checker    *health.Checker
	announcers []*announce.Announcer
	// healthChanged wakes the daemon when a backend went up or down.
	healthChanged chan struct{}

	reloadsOK, reloadsFailed atomic.Uint64

	mu         sync.Mutex
	cfg        *config.Config
	loadedAt   time.Time
	services   []config.Service
	vips       map[xdp.VIPKey]vipLabel // services' VIPs
	attached   map[string]*xdp.Attachment
	lastReload ReloadInfo
	announced  []netip.Addr // VIPs answered for on the announce interfaces
	allocErrs  []string     // services a pool could not give an address
	flows4     int
	flows6     int
}

// vipLabel names a VIP of the running configuration.
type vipLabel struct {
	service string
}

func runDaemon(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb run [--config FILE]\n\n"+
			"Runs the appliance: attaches the datapath to the configured interfaces, keeps it\n"+
			"in line with the configuration (reloaded on SIGHUP, `xdplb reload` and when the\n"+
			"file changes), serves metrics and the control socket. Stopping leaves the datapath\n"+
			"attached with its state; `xdplb detach` removes it.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError{fmt.Sprintf("run: --log-level: %v", err)}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	path, err := filepath.Abs(*cfgPath)
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, path, log)
	if err != nil {
		return err
	}
	return d.serve(ctx)
}

// startDaemon loads the configuration and brings the datapath in line with
// it. A bad configuration at start is an error: there is nothing to keep.
func startDaemon(ctx context.Context, path string, log *slog.Logger) (*daemon, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	d := &daemon{
		log: log, cfgPath: path, started: time.Now(),
		alloc:         config.NewAllocator(cfg.Paths.State),
		attached:      map[string]*xdp.Attachment{},
		healthChanged: make(chan struct{}, 1),
	}
	d.checker = health.New(health.Options{Logger: log, OnChange: func(lb.BackendKey, bool) {
		select {
		case d.healthChanged <- struct{}{}:
		default:
		}
	}})
	// The health of the last run: a restart does not flap backends.
	if err := d.checker.Load(d.healthFile(cfg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("health state not restored", "err", err)
	}
	l2 := cfg.Announce.L2
	for _, name := range l2.Interfaces {
		a, err := announce.New(name, announce.Options{GratuitousCount: l2.GratuitousCount, GratuitousInterval: l2.GratuitousInterval, RefreshInterval: l2.RefreshInterval}, log)
		if err != nil {
			d.closeAnnouncers()
			return nil, fmt.Errorf("announcing on %q: %w", name, err)
		}
		d.announcers = append(d.announcers, a)
	}
	d.dp, err = xdp.Open(xdp.Options{PinPath: cfg.Paths.BPF, MaxFlows: int(cfg.Conntrack.MaxFlows)})
	if err != nil {
		d.closeAnnouncers()
		return nil, err
	}
	d.rec = lb.NewReconciler(d.dp, lb.KernelNextHops{}, lb.Options{MaxBackends: 65536})
	// Take over what an earlier instance left: its backends keep their ids
	// (and so their pinned flows and counters); what the configuration no
	// longer has is removed by the first apply.
	left, err := d.dp.Backends()
	if err != nil {
		d.closeAnnouncers()
		d.dp.Close()
		return nil, err
	}
	var leftVIPs []xdp.VIPKey
	for _, v := range d.dp.VIPs() {
		leftVIPs = append(leftVIPs, v.Key)
	}
	d.rec.Recover(leftVIPs, left)
	if err := d.apply(ctx, cfg, "start"); err != nil {
		d.closeAnnouncers()
		d.dp.Close()
		return nil, err
	}
	return d, nil
}

func (d *daemon) healthFile(cfg *config.Config) string {
	return filepath.Join(cfg.Paths.State, health.StateFile)
}

func (d *daemon) closeAnnouncers() {
	for _, a := range d.announcers {
		a.Close()
	}
}

// apply makes cfg the running configuration: interfaces, encapsulation
// sources, pools and services. Errors of single services are reported in the
// status and do not fail the whole apply.
func (d *daemon) apply(ctx context.Context, cfg *config.Config, trigger string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg != nil && cfg.Conntrack.MaxFlows != d.cfg.Conntrack.MaxFlows {
		return fmt.Errorf("conntrack.maxFlows changed from %d to %d: the flow tables are sized when the datapath is created; restart with `xdplb detach` first to resize them", d.cfg.Conntrack.MaxFlows, cfg.Conntrack.MaxFlows)
	}
	for _, ifc := range cfg.Interfaces {
		if _, ok := d.attached[ifc.Name]; ok {
			continue
		}
		a, err := d.dp.Attach(ifc.Name, xdp.AttachMode(ifc.XDPMode))
		if err != nil {
			return err
		}
		d.attached[ifc.Name] = a
		d.log.Info("attached", "interface", a.Interface, "ifindex", a.IfIndex, "mode", a.Mode, "reused", a.Reused)
	}
	for name := range d.attached {
		if !hasInterface(cfg, name) {
			if err := d.dp.Detach(name); err != nil {
				return err
			}
			delete(d.attached, name)
			d.log.Info("detached", "interface", name)
		}
	}
	if err := d.dp.SetEncapSource(cfg.Encap.SourceIPv4, cfg.Encap.SourceIPv6); err != nil {
		return err
	}
	addrs, svcErrs, err := d.alloc.Assign(cfg)
	if err != nil {
		return err
	}
	services := cfg.Services(addrs)
	state := lb.State{Seed: cfg.Maglev.Seed}
	vips := map[xdp.VIPKey]vipLabel{}
	for _, s := range services {
		ls := lbService(s)
		state.Services = append(state.Services, ls)
		for _, p := range ls.Ports {
			vips[xdp.VIPKey{Addr: ls.Addr, Port: p, Proto: ls.Proto}] = vipLabel{service: s.Name}
		}
	}
	d.checker.SetTargets(health.Targets(services))
	st := d.rec.Apply(ctx, state, d.checker.Healthy)
	d.announce(services, st)
	for _, e := range st.Errors {
		d.log.Error("service not applied", "service", e.Service, "vip", e.VIP, "err", e.Err)
	}
	d.allocErrs = d.allocErrs[:0]
	for name, err := range svcErrs {
		d.log.Error("service has no address", "service", name, "err", err)
		d.allocErrs = append(d.allocErrs, fmt.Sprintf("%s: no address: %v", name, err))
	}
	sort.Strings(d.allocErrs)
	d.cfg, d.services, d.vips, d.loadedAt = cfg, services, vips, time.Now()
	d.log.Info("configuration applied", "trigger", trigger, "sha256", cfg.SHA256(), "services", len(services), "vips", len(vips), "took", st.Duration)
	return nil
}

// announce answers ARP/NDP for the VIPs of services that want it and have
// at least minHealthyBackends healthy backends with a weight; the others are
// withdrawn at once, so a dead service attracts no traffic.
func (d *daemon) announce(services []config.Service, st lb.Status) {
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
	var active []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range services {
		if !s.Announce || seen[s.Addr] {
			continue
		}
		if healthy[s.Name] < s.MinHealthyBackends {
			d.log.Debug("not announced: too few healthy backends", "service", s.Name, "vip", s.Addr, "healthy", healthy[s.Name], "min", s.MinHealthyBackends)
			continue
		}
		seen[s.Addr] = true
		active = append(active, s.Addr)
	}
	for _, a := range d.announcers {
		a.SetVIPs(active)
	}
	d.announced = active
}

func hasInterface(cfg *config.Config, name string) bool {
	for _, i := range cfg.Interfaces {
		if i.Name == name {
			return true
		}
	}
	return false
}

// lbService is a configured service as the reconciler takes it.
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

// Reload reads the configuration file again; a bad one keeps the running
// configuration, is counted and logged once, and shows in the status.
func (d *daemon) reload(ctx context.Context, trigger string) ReloadInfo {
	info := ReloadInfo{At: time.Now(), Trigger: trigger, Result: "success"}
	cfg, err := config.Load(d.cfgPath)
	if err == nil {
		d.mu.Lock()
		same := d.cfg.SHA256() == cfg.SHA256()
		d.mu.Unlock()
		if !same || trigger != "file" {
			err = d.apply(ctx, cfg, trigger)
		} else {
			return info // an event on the directory that did not change the file
		}
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
		d.reloadsFailed.Add(1)
		d.log.Error("reload failed, keeping the running configuration", "trigger", trigger, "errors", strings.Join(info.Errors, "; "))
	} else {
		d.reloadsOK.Add(1)
	}
	d.mu.Lock()
	d.lastReload = info
	d.mu.Unlock()
	return info
}

// serve runs everything until ctx ends: reload triggers, maintenance,
// neighbour updates, the control socket and metrics.
func (d *daemon) serve(ctx context.Context) error {
	d.mu.Lock()
	cfg := d.cfg
	d.lastReload = ReloadInfo{At: d.loadedAt, Trigger: "start", Result: "success"}
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	errc := make(chan error, 4)
	var wg sync.WaitGroup
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	ctlAPI := controlAPI(d)
	goRun("control socket", func(ctx context.Context) error {
		return serveControl(ctx, cfg.Paths.Socket, 0o600, ctlAPI, d.log)
	})
	goRun("metrics", func(ctx context.Context) error {
		return serveMetrics(ctx, cfg.Metrics.Listen, newMetricsHandler(d, d.ready), d.log)
	})
	goRun("maintenance", d.maintainLoop)
	goRun("health checks", d.checker.Run)
	for _, a := range d.announcers {
		goRun("announcing on "+a.Interface(), a.Run)
	}
	goRun("neighbours", d.watchNeighbors)
	goRun("config watch", d.watchConfig)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	notify("READY=1", "STATUS=serving")
	stopWatchdog := startWatchdog(ctx)
	defer stopWatchdog()
	d.log.Info("xdplb running", "config", d.cfgPath, "version", versionString())

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			notify("RELOADING=1", monotonicUsec())
			d.reload(ctx, "sighup")
			notify("READY=1")
		case <-d.healthChanged:
			// A backend went up or down: the same configuration, applied
			// with the new health (only what changed is written).
			d.mu.Lock()
			cfg := d.cfg
			d.mu.Unlock()
			if err := d.apply(ctx, cfg, "health"); err != nil {
				d.log.Error("applying a health change", "err", err)
			}
			if err := d.checker.Save(d.healthFile(cfg)); err != nil {
				d.log.Warn("saving health state", "err", err)
			}
		case err = <-errc:
			break loop
		}
	}
	notify("STOPPING=1")
	cancel()
	wg.Wait()
	d.closeAnnouncers()
	d.mu.Lock()
	last := d.cfg
	d.mu.Unlock()
	if serr := d.checker.Save(d.healthFile(last)); serr != nil {
		d.log.Warn("saving health state", "err", serr)
	}
	// The datapath stays attached with its state: a restarted daemon takes
	// it over without dropping a flow.
	if cerr := d.dp.Close(); cerr != nil && err == nil {
		err = cerr
	}
	d.log.Info("xdplb stopped; the datapath stays attached")
	return err
}

func (d *daemon) ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil {
		return errors.New("no configuration applied")
	}
	return nil
}

func (d *daemon) maintainLoop(ctx context.Context) error {
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	for {
		d.mu.Lock()
		idle := d.cfg.Conntrack.IdleTimeout
		d.mu.Unlock()
		res, err := d.dp.Maintain(idle)
		if err != nil {
			d.log.Error("maintenance", "err", err)
		} else {
			if res.Expired+res.Stale > 0 || res.TablesFreed > 0 {
				d.log.Debug("maintenance", "expired", res.Expired, "stale", res.Stale, "remaining", res.Remaining, "tables_freed", res.TablesFreed)
			}
			n4, n6 := d.dp.FlowCounts()
			d.mu.Lock()
			d.flows4, d.flows6 = n4, n6
			d.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchNeighbors re-resolves a backend's next hop when the kernel learns a
// new MAC for it, and re-applies (only entries that changed are written).
func (d *daemon) watchNeighbors(ctx context.Context) error {
	changed := make(chan netip.Addr, 64)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-changed:
				d.rec.ForgetNextHops(a)
				d.mu.Lock()
				cfg := d.cfg
				d.mu.Unlock()
				if err := d.apply(ctx, cfg, "neighbour"); err != nil {
					d.log.Error("re-applying after a neighbour change", "err", err)
				}
			}
		}
	}()
	return xdp.WatchNeighbors(ctx, func(u xdp.NeighborUpdate) {
		if !d.usesNextHop(u.IP, u.MAC.String()) {
			return
		}
		select {
		case changed <- u.IP:
		default:
		}
	})
}

// usesNextHop reports whether a backend's entry goes through ip with another
// MAC than mac.
func (d *daemon) usesNextHop(ip netip.Addr, mac string) bool {
	bs, err := d.dp.Backends()
	if err != nil {
		return false
	}
	for _, b := range bs {
		if b.Addr == ip && b.NextHopMAC.String() != mac {
			return true
		}
	}
	return false
}

// watchConfig reloads when the configuration file changes. It watches the
// directory: editors replace files rather than write them.
func (d *daemon) watchConfig(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(d.cfgPath)); err != nil {
		return err
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) == d.cfgPath && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				// Let a burst of events (write, rename) settle.
				timer = time.After(200 * time.Millisecond)
			}
		case err := <-w.Errors:
			d.log.Error("watching the configuration", "err", err)
		case <-timer:
			timer = nil
			d.reload(ctx, "file")
		}
	}
}

// controlAPI

func (d *daemon) Status() StatusInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.rec.Status()
	s := StatusInfo{
		Version: versionString(), Started: d.started,
		Config:     ConfigInfo{File: d.cfgPath, SHA256: d.cfg.SHA256(), LoadedAt: d.loadedAt},
		LastReload: d.lastReload,
		Apply:      ApplyInfo{At: st.LastApply, Duration: st.Duration},
		Counts:     Counts{Services: len(d.services), VIPs: len(st.VIPs), Flows4: d.flows4, Flows6: d.flows6},
	}
	s.Apply.Errors = append(s.Apply.Errors, d.allocErrs...)
	for _, e := range st.Errors {
		s.Apply.Errors = append(s.Apply.Errors, fmt.Sprintf("%s %s: %s", e.Service, e.VIP, e.Err))
	}
	for _, v := range st.VIPs {
		s.Counts.Backends += len(v.Backends)
	}
	for _, a := range d.announcers {
		ai := AnnounceInfo{Interface: a.Interface(), VIPs: []string{}}
		for _, v := range d.announced {
			ai.VIPs = append(ai.VIPs, v.String())
		}
		s.Announced = append(s.Announced, ai)
	}
	for _, a := range d.attached {
		pid, _ := a.ProgramID()
		s.Interfaces = append(s.Interfaces, InterfaceInfo{Name: a.Interface, IfIndex: a.IfIndex, Mode: string(a.Mode), ProgramID: uint32(pid)})
	}
	sort.Slice(s.Interfaces, func(i, j int) bool { return s.Interfaces[i].Name < s.Interfaces[j].Name })
	return s
}

func (d *daemon) VIPs() []VIPInfo {
	var out []VIPInfo
	for _, v := range d.rec.Status().VIPs {
		vi := VIPInfo{Service: v.Service, VIP: v.Key.String(), Mode: v.Mode.String(), TableSize: v.TableSize}
		for _, b := range v.Backends {
			vi.Backends = append(vi.Backends, VIPBackendInfo{
				ID: b.ID, Address: backendAddr(b.Addr), Weight: b.Weight, Healthy: b.Healthy,
				Slots: b.Slots, Share: share(b.Slots, v.TableSize), Error: b.Error,
			})
		}
		vi.Stats, _ = d.dp.VIPStats(v.Key)
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

func (d *daemon) Backends() []BackendInfo {
	entries, _ := d.dp.Backends()
	checks := map[lb.BackendKey]health.State{}
	for _, h := range d.checker.Snapshot() {
		checks[h.Key] = h
	}
	var out []BackendInfo
	for _, v := range d.rec.Status().VIPs {
		for _, b := range v.Backends {
			bi := BackendInfo{ID: b.ID, Service: v.Service, VIP: v.Key.String(), Address: backendAddr(b.Addr), Weight: b.Weight, Healthy: b.Healthy, Slots: b.Slots, Error: b.Error}
			if e, ok := entries[b.ID]; ok {
				bi.NextHopMAC = e.NextHopMAC.String()
				if ifi, err := netInterfaceName(e.IfIndex); err == nil {
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
			bi.Stats, _ = d.dp.BackendStats(b.ID)
			out = append(out, bi)
		}
	}
	return out
}

func (d *daemon) backendNames() map[uint32]string {
	names := map[uint32]string{}
	for _, v := range d.rec.Status().VIPs {
		for _, b := range v.Backends {
			names[b.ID] = backendAddr(b.Addr)
		}
	}
	return names
}

func (d *daemon) Flows(vip string) ([]FlowInfo, error) {
	var filter *xdp.VIPKey
	if vip != "" {
		k, err := xdp.ParseVIPKey(vip)
		if err != nil {
			return nil, err
		}
		filter = &k
	}
	names := d.backendNames()
	var out []FlowInfo
	err := d.dp.Flows(func(f xdp.Flow) bool {
		k, ok := d.dp.LookupVIP(f.Dst, f.Proto)
		if filter != nil && (!ok || k != *filter) {
			return true
		}
		out = append(out, FlowInfo{
			Client: f.Src.String(), VIP: xdp.VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}.String(),
			BackendID: f.BackendID, Backend: names[f.BackendID], IdleSec: f.Idle.Seconds(),
		})
		return len(out) < 100000
	})
	return out, err
}

func (d *daemon) Maglev(vip string) (MaglevInfo, error) {
	k, err := xdp.ParseVIPKey(vip)
	if err != nil {
		return MaglevInfo{}, err
	}
	for _, v := range d.rec.Status().VIPs {
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

func (d *daemon) Explain(from, vip string) (ExplainInfo, error) {
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
	k, ok := d.dp.LookupVIP(dst, to.Proto)
	if !ok {
		return ExplainInfo{}, fmt.Errorf("%s is no VIP: the datapath passes such packets to the host's stack", vip)
	}
	d.mu.Lock()
	service := d.vips[k].service
	seed := lb.HashSeed(d.cfg.Maglev.Seed)
	d.mu.Unlock()
	names := d.backendNames()
	e := ExplainInfo{From: src.String(), VIP: k.String(), Service: service}
	e.Hash = xdp.FlowHash(src, dst, to.Proto, seed)
	cur, prev, left, err := d.dp.Tables(k)
	if err != nil {
		return e, err
	}
	e.TableSize = len(cur)
	e.Slot = int(xdp.Slot(e.Hash, len(cur)))
	if id, pinned, err := d.dp.LookupFlow(src, dst, to.Proto); err == nil && pinned {
		if name, up := names[id], d.backendUp(id); name != "" && up {
			e.Reason, e.BackendID, e.Backend = "pinned", id, name
			e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): the flow is pinned to it (a conntrack entry made when the VIP's table changed).", e.From, vip, name, id)
			return e, nil
		}
	}
	id := cur[e.Slot]
	e.BackendID, e.Backend = id, names[id]
	if left > 0 && prev != nil {
		e.Transition = true
		if p := prev[xdp.Slot(e.Hash, len(prev))]; p != id && d.backendUp(p) {
			e.PrevBackend = names[p]
		}
	}
	if id == 0 || e.Backend == "" {
		e.Reason = "no-backend"
		e.Text = fmt.Sprintf("%s -> %s is dropped: the VIP has no usable backend (slot %d of %d is empty).", e.From, vip, e.Slot, e.TableSize)
		return e, nil
	}
	e.Reason = "table"
	e.Text = fmt.Sprintf("%s -> %s goes to %s (id %d): Maglev slot %d of %d (flow hash %#08x).", e.From, vip, e.Backend, id, e.Slot, e.TableSize, e.Hash)
	if e.PrevBackend != "" {
		e.Text += fmt.Sprintf(" The VIP's table changed moments ago (%s of its grace period left): a packet of a flow that began before (not a SYN) stays on %s and pins the flow there.", left.Round(time.Second), e.PrevBackend)
	}
	return e, nil
}

func (d *daemon) backendUp(id uint32) bool {
	bs, err := d.dp.Backends()
	if err != nil {
		return false
	}
	b, ok := bs[id]
	return ok && b.Up
}

func (d *daemon) Reload() ReloadInfo { return d.reload(context.Background(), "socket") }

// metricsSource

func (d *daemon) DatapathCounters() ([]xdp.Counter, error) { return d.dp.Counters() }

func (d *daemon) VIPMetrics() ([]VIPMetric, error) {
	var out []VIPMetric
	for _, v := range d.rec.Status().VIPs {
		s, err := d.dp.VIPStats(v.Key)
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

func (d *daemon) BackendMetrics() ([]BackendMetric, error) {
	var out []BackendMetric
	for _, v := range d.rec.Status().VIPs {
		for _, b := range v.Backends {
			s, err := d.dp.BackendStats(b.ID)
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

func (d *daemon) ConntrackEntries() (v4, v6, capacity int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flows4, d.flows6, int(d.cfg.Conntrack.MaxFlows)
}

func (d *daemon) ConfigSHA256() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.SHA256()
}

func (d *daemon) AnnounceStats() []announce.Stats {
	var out []announce.Stats
	for _, a := range d.announcers {
		out = append(out, a.Stats())
	}
	return out
}

func (d *daemon) HealthTransitions() (toUp, toDown uint64) {
	t := d.checker.Transitions()
	return t.ToUp, t.ToDown
}

func (d *daemon) ReloadCounts() (success, failure uint64) {
	return d.reloadsOK.Load(), d.reloadsFailed.Load()
}
