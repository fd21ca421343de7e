package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where pinned programs, links and maps live by default.
const DefaultPinPath = "/sys/fs/bpf/xdplb"

// Options configure a Datapath. Zero values take the defaults.
type Options struct {
	// PinPath is a directory on a bpffs; bpffs is mounted at /sys/fs/bpf
	// if it is not. Empty: DefaultPinPath. "-" (NoPin): nothing is pinned,
	// for tests and benchmarks.
	PinPath string
	// MaxVIPs bounds the number of services (default 4096).
	MaxVIPs int
	// MaxBackends bounds backend ids (default 65536); ids are 1..MaxBackends-1.
	// Per-backend counters take 24 bytes per id and CPU.
	MaxBackends int
	// MaxFlows bounds the pins of each family (default 1,048,576).
	MaxFlows int
	// MaxNATFlows sizes the SNAT flow tables nat4 and nat6 (default
	// 262,144 flows of each family): each flow takes two entries, one per
	// direction, and each table has room for twice that (see ftBuckets).
	MaxNATFlows int
	// TransitionGrace is how long a VIP's previous table is consulted after
	// SetTable (default 60s).
	TransitionGrace time.Duration
	// TTL of the headers the program writes (default 64).
	TTL uint8
	// DisableEcho stops the program answering pings to VIP addresses.
	DisableEcho bool

	// isaV3 loads the build for the v3 instruction set where the kernel
	// has v4 (tests of the older kernels' build).
	isaV3 bool
}

// NoPin as Options.PinPath keeps every object private to the process.
const NoPin = "-"

func (o *Options) setDefaults() {
	if o.PinPath == "" {
		o.PinPath = DefaultPinPath
	}
	if o.MaxVIPs == 0 {
		o.MaxVIPs = 4096
	}
	if o.MaxBackends == 0 {
		o.MaxBackends = 65536
	}
	if o.MaxFlows == 0 {
		o.MaxFlows = 1 << 20
	}
	if o.MaxNATFlows == 0 {
		o.MaxNATFlows = 1 << 18
	}
	if o.TransitionGrace == 0 {
		o.TransitionGrace = 60 * time.Second
	}
	if o.TTL == 0 {
		o.TTL = 64
	}
}

// Datapath is the loaded load-balancer program and its maps. Its methods are
// safe for concurrent use.
type Datapath struct {
	opts Options
	objs lbObjects
	isa  string // the instruction set of the program loaded: "v4" or "v3"

	mu         sync.Mutex
	vips       map[VIPKey]*vipState
	backends   map[uint32]*backendState
	retired    map[uint32]*backendState // deleted ids whose slot is not all zero
	vipIDs     idAllocator
	tables     idAllocator
	filter     map[uint32]int // filter bit -> number of VIP addresses on it
	addrs      map[addrKey]int
	links      map[string]*Attachment
	empty      *ebpf.Map // placeholder put into released maglev_tables slots
	emptyID    ebpf.MapID
	syncMap    *ebpf.Map   // updated to wait for an RCU grace period (Sync)
	syncGen    uint64      // Syncs so far
	vipIndex   []byte      // vip_index, mapped
	pinFilter  *halfFilter // pin_filter, mapped
	natFilter  *halfFilter // nat_filter, mapped
	natMaint   sync.Mutex  // MaintainNAT: one filter rebuild at a time
	pins4      *flowTable
	pins6      *flowTable
	nat4       *flowTable
	nat6       *flowTable
	settings   lbSettings
	flows4     int // pinned flows after the last Maintain
	flows6     int
	indexOwner map[uint32]VIPKey
	slotsUsed  map[uint32]use // vip id -> when its slots were last in use by a VIP gone
	freed      []uint32       // maglev_tables slots to release at the next flush
	zeroStats  []lbLbStats
	natConfig  lbNatConfig         // the SNAT config written last
	snatAddrs  map[netip.Addr]bool // addresses whose VIPs carry VIP_F_SNAT_SOURCE (snatflag.go)
	natExpired map[string]uint64   // NAT flows expired by MaintainNAT, by reason
	natFlows   int                 // NAT flows after the last MaintainNAT
	closed     bool
	monitoring bool // Monitor has a reader
	nowMono    func() time.Duration
	bench      map[Ablation]*benchObjects   // the bench wrappers by ablation, loaded by the first benchmark run of each
	benchFiles map[string]*benchFileObjects // bench wrappers of other builds (BenchRunFile), by path
	benchProgs map[string]*ebpf.Program     // forwarding programs of other builds (BenchAttachFile), by path

	dryMu     sync.Mutex // serialises dry runs (they share dry's result map)
	dry       *dryObjects
	dryClosed bool
	// afterFlowWalk, if set, is called by Maintain once it has walked the
	// flow tables (with d.mu held): tests make pins there.
	afterFlowWalk func()
}

type vipState struct {
	meta lbVipMeta
	// The VIP's slot in use in vip_slots, if the index serves it, and when
	// its other slot was last in use.
	slot    uint32
	indexed bool
	flipped use
	table   *innerTable // the inner map of the current table
	old     *innerTable // a previous inner map (the table size changed), while it may be the prev table
}

// forwardingSpec returns the forwarding program's object for this kernel,
// and the instruction set it was built for. The program is built twice
// from one source (xdp/gen.go): for BPF's v4 instruction set (Linux 6.6
// and later), loaded where the kernel has it, and for v3 (Linux 5.1 and
// later). v4's instructions (stores of immediates, byte swaps) make the
// same program cheaper: established_l2 -5 ns, docs/bench.md.
func forwardingSpec(v3 bool) (*ebpf.CollectionSpec, string, error) {
	if !v3 && features.HaveV4ISA() == nil {
		spec, err := loadLb()
		return spec, "v4", err
	}
	spec, err := loadLbv3()
	return spec, "v3", err
}

// Open loads the program, or reuses the maps pinned under opts.PinPath by an
// earlier instance, and recovers its state from them. It attaches nothing.
func Open(opts Options) (*Datapath, error) {
	opts.setDefaults()
	spec, isa, err := forwardingSpec(opts.isaV3)
	if err != nil {
		return nil, err
	}
	if err := opts.configure(spec); err != nil {
		return nil, err
	}
	var copts ebpf.CollectionOptions
	// A release before the NAT filter pinned NAT tables but no filter:
	// their flows' bits are set once the maps are open (markOldNAT).
	oldNAT := opts.PinPath != NoPin && pinExists(opts.PinPath, lbMapNat4) && !pinExists(opts.PinPath, lbMapNatFilter)
	if opts.PinPath != NoPin {
		if err := ensureBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		for name, m := range spec.Maps {
			// Sections of global variables belong to one load of the
			// program; the pin backoff and the NAT scratch space are a
			// moment's state; the dry
			// run's result is private to each dry-run build.
			if strings.HasPrefix(name, ".") || name == lbMapPinBackoff || name == lbMapDryResult || name == lbMapNatScratchMap {
				continue
			}
			m.Pinning = ebpf.PinByName
		}
		copts.Maps.PinPath = opts.PinPath
		// An upgrade that adds counters keeps the flows: the counters
		// restart, everything else is taken over.
		if err := dropShorterStats(opts.PinPath, spec.Maps[lbMapStats]); err != nil {
			return nil, err
		}
	}
	d := &Datapath{
		opts:       opts,
		isa:        isa,
		zeroStats:  make([]lbLbStats, ebpf.MustPossibleCPU()),
		vips:       map[VIPKey]*vipState{},
		backends:   map[uint32]*backendState{},
		retired:    map[uint32]*backendState{},
		indexOwner: map[uint32]VIPKey{},
		slotsUsed:  map[uint32]use{},
		filter:     map[uint32]int{},
		snatAddrs:  map[netip.Addr]bool{},
		addrs:      map[addrKey]int{},
		links:      map[string]*Attachment{},
		nowMono:    monotonicNow,
		natExpired: map[string]uint64{},
	}
	if err := spec.LoadAndAssign(&d.objs, &copts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the xdplb program: %+v", ve)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("loading the xdplb program: maps pinned under %s were made with other sizes or by an incompatible version (remove them with `xdplb detach`): %w", opts.PinPath, err)
		}
		return nil, fmt.Errorf("loading the xdplb program: %w", err)
	}
	if opts.PinPath != NoPin {
		// The program too, for bpftool and friends; the links keep it
		// running, and the next instance pins its own in its place.
		pin := filepath.Join(opts.PinPath, "prog_xdplb")
		_ = os.Remove(pin)
		if err := d.objs.Xdplb.Pin(pin); err != nil {
			d.objs.Close()
			return nil, fmt.Errorf("pinning the program: %w", err)
		}
	}
	d.vipIDs = newIDAllocator(1, opts.MaxVIPs-1, 0)
	d.tables = newIDAllocator(1, 3*opts.MaxVIPs+63, time.Second)
	if err := d.newEmptyTable(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.mapIndex(); err != nil {
		d.closeTables()
		d.objs.Close()
		return nil, err
	}
	fail := func(err error) (*Datapath, error) {
		d.unmapPins()
		d.unmapFilters()
		d.unmapIndex()
		d.closeTables()
		d.objs.Close()
		return nil, err
	}
	if err := d.mapFilters(); err != nil {
		return fail(err)
	}
	if err := d.mapPins(); err != nil {
		return fail(err)
	}
	if err := d.objs.SettingsMap.Lookup(uint32(0), &d.settings); err != nil {
		return fail(fmt.Errorf("reading settings: %w", err))
	}
	// A daemon that died while someone listened left the monitor on.
	if err := d.SetMonitor(false); err != nil {
		return fail(err)
	}
	if err := d.recover(); err != nil {
		return fail(err)
	}
	if opts.PinPath != NoPin {
		if err := d.copyOldPins(); err != nil {
			return fail(err)
		}
		if err := d.copyOldNAT(); err != nil {
			return fail(err)
		}
		if oldNAT {
			d.markOldNAT()
		}
	}
	return d, nil
}

// configure sets the knobs of a collection that runs lb_main (the program,
// its dry-run build, the bench wrappers) and the sizes of its maps from o.
func (o *Options) configure(spec *ebpf.CollectionSpec) error {
	echo := uint8(1)
	if o.DisableEcho {
		echo = 0
	}
	for name, v := range map[string]any{
		lbVarCfgTtl: o.TTL, lbVarCfgIcmpEcho: echo,
		lbVarCfgPins4Mask: uint32(ftBuckets(o.MaxFlows, pin4Geom) - 1),
		lbVarCfgPins6Mask: uint32(ftBuckets(o.MaxFlows, pin6Geom) - 1),
		lbVarCfgNat4Mask:  uint32(ftBuckets(2*o.MaxNATFlows, nat4Geom) - 1),
		lbVarCfgNat6Mask:  uint32(ftBuckets(2*o.MaxNATFlows, nat6Geom) - 1),
	} {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("setting %s: no such variable", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	sizes := map[string]int{
		lbMapVips:         o.MaxVIPs,
		lbMapVipSlots:     2 * o.MaxVIPs,
		lbMapVipAddrs:     o.MaxVIPs,
		lbMapVipStats:     o.MaxVIPs,
		lbMapMaglevTables: 3*o.MaxVIPs + 64,
		lbMapBackends:     o.MaxBackends,
		lbMapBackendStats: o.MaxBackends,
		lbMapPins4:        ftBuckets(o.MaxFlows, pin4Geom),
		lbMapPins6:        ftBuckets(o.MaxFlows, pin6Geom),
		lbMapNat4:         ftBuckets(2*o.MaxNATFlows, nat4Geom),
		lbMapNat6:         ftBuckets(2*o.MaxNATFlows, nat6Geom),
	}
	for name, n := range sizes {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("sizing %s: no such map", name)
		}
		ms.MaxEntries = uint32(n)
	}
	return nil
}

// maps are the datapath's maps by name, for loading other objects that run
// lb_main on them (ebpf.CollectionOptions.MapReplacements). The dry run's
// result map is left out: each load has its own.
func (d *Datapath) maps() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(&d.objs.lbMaps).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && m != nil && name != lbMapDryResult {
			out[name] = m
		}
	}
	return out
}

// Close releases the program and maps held by this process. Pinned objects and
// attachments stay (a restarted daemon picks them up); Detach and Unpin remove
// them.
func (d *Datapath) Close() error {
	dryErr := d.closeDryRun()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	errs := []error{dryErr}
	for _, a := range d.links {
		errs = append(errs, a.link.Close())
	}
	for _, b := range d.bench {
		errs = append(errs, b.Close())
	}
	for _, b := range d.benchFiles {
		errs = append(errs, b.Close())
	}
	for _, p := range d.benchProgs {
		errs = append(errs, p.Close())
	}
	d.closeTables()
	d.unmapIndex()
	d.unmapFilters()
	d.unmapPins()
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Program is the load-balancer program, for attaching elsewhere and for tests.
func (d *Datapath) Program() *ebpf.Program { return d.objs.Xdplb }

// ISA is the BPF instruction set the loaded program was built for: "v4"
// where the kernel has it (Linux 6.6 and later), else "v3".
func (d *Datapath) ISA() string { return d.isa }

// PinPath is the directory the datapath's objects are pinned under, or NoPin.
func (d *Datapath) PinPath() string { return d.opts.PinPath }

// Unpin removes every pinned map and link of the datapath. The maps live on
// while this process holds them.
func (d *Datapath) Unpin() error {
	if d.opts.PinPath == NoPin {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, a := range d.links {
		if err := a.link.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.objs.Xdplb.Unpin(); err != nil {
		errs = append(errs, err)
	}
	for _, m := range d.maps() { // every map, so that none added later is left behind
		if m.IsPinned() {
			if err := m.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	_ = os.Remove(d.opts.PinPath)
	return errors.Join(errs...)
}

// ensureBPFFS creates dir, mounting a bpffs at /sys/fs/bpf first when dir
// lies there and none is mounted.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if rel, err := filepath.Rel(root, dir); err == nil && !filepath.IsAbs(rel) && rel != ".." && (len(rel) < 3 || rel[:3] != "../") {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			if err := os.MkdirAll(root, 0o755); err != nil {
				return fmt.Errorf("creating %s: %w", root, err)
			}
			if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mounting bpffs at %s: %w", root, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("checking pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpffs", dir)
	}
	return nil
}

// monotonicNow is the program's clock (bpf_ktime_get_coarse_ns).
func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return time.Duration(ts.Nano())
}

// idAllocator hands out ids in [lo, hi]; a released id becomes available
// again only after quarantine, so that a packet still holding it never sees
// it reused.
type idAllocator struct {
	lo, hi     uint32
	next       uint32
	used       map[uint32]bool
	quarantine time.Duration
	released   []released
}

type released struct {
	id uint32
	at time.Time
}

func newIDAllocator(lo, hi int, quarantine time.Duration) idAllocator {
	return idAllocator{lo: uint32(lo), hi: uint32(hi), next: uint32(lo), used: map[uint32]bool{}, quarantine: quarantine}
}

func (a *idAllocator) markUsed(id uint32) { a.used[id] = true }

func (a *idAllocator) get() (uint32, error) {
	now := time.Now()
	for len(a.released) > 0 && now.Sub(a.released[0].at) >= a.quarantine {
		delete(a.used, a.released[0].id)
		a.released = a.released[1:]
	}
	n := a.hi - a.lo + 1
	for i := uint32(0); i < n; i++ {
		id := a.next
		a.next++
		if a.next > a.hi {
			a.next = a.lo
		}
		if !a.used[id] {
			a.used[id] = true
			return id, nil
		}
	}
	return 0, ErrFull
}

func (a *idAllocator) put(id uint32) {
	if id == 0 {
		return
	}
	if a.quarantine == 0 {
		delete(a.used, id)
		return
	}
	a.released = append(a.released, released{id, time.Now()})
}

// ErrFull is returned when a datapath table has no room left.
var ErrFull = errors.New("datapath table full")
