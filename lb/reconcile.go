package lb

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/xdplb/xdplb/xdp"
)

// Datapath is what the reconciler programs. *xdp.Datapath implements it; tests
// use a fake that records the writes.
type Datapath interface {
	UpsertVIP(k xdp.VIPKey, v xdp.VIP) error
	DeleteVIP(k xdp.VIPKey) error
	// SetTables swaps in new tables, returning the errors by VIP.
	SetTables(tables map[xdp.VIPKey][]uint32) map[xdp.VIPKey]error
	// Sync waits until no packet can still be using what the datapath no
	// longer references.
	Sync() error
	UpsertBackend(id uint32, b xdp.Backend) error
	// DeleteBackend removes an entry that no current table names (after
	// the swap and a Sync); packets that still reach it through a previous
	// table or a pin find no backend there.
	DeleteBackend(id uint32) error
}

// NextHops says how to reach a backend from this host. ResolveNextHops (the
// kernel's routes and neighbours) in production.
type NextHops interface {
	Resolve(ctx context.Context, addr netip.Addr) (xdp.NextHop, error)
}

// KernelNextHops resolves next hops through the kernel (xdp.ResolveNextHop).
type KernelNextHops struct{}

// Resolve implements NextHops.
func (KernelNextHops) Resolve(ctx context.Context, addr netip.Addr) (xdp.NextHop, error) {
	return xdp.ResolveNextHop(ctx, addr)
}

// State is what the operator wants: the desired services.
type State struct {
	// Seed is the fleet's Maglev seed; every appliance given the same seed and
	// backends builds the same tables and hashes flows the same way.
	Seed     [16]byte
	Services []Service
	// KeepLeft keeps the VIPs and backend entries an earlier instance left
	// (see Recover) that Services does not hold, instead of removing them:
	// a source that has not synced yet may still offer them.
	KeepLeft bool
}

// Service is one service of the desired state. Each of its ports is a VIP of
// the datapath (port 0: every port).
type Service struct {
	Name      string
	Addr      netip.Addr
	Proto     xdp.Proto
	Ports     []uint16
	Mode      xdp.Mode
	TableSize int // 0: DefaultTableSize
	Backends  []Backend
}

// Backend is a backend of a service. Its identity is Addr:Port.
type Backend struct {
	Addr   netip.Addr
	Port   uint16
	Weight uint32 // 0: drain (no new flows; established ones stay)
}

// BackendKey names a backend of a service, for health.
type BackendKey struct {
	Service string
	Backend netip.AddrPort
}

// Health reports whether a backend is healthy. Nil: every backend is.
type Health func(BackendKey) bool

// Options configure a Reconciler.
type Options struct {
	// MaxBackends bounds backend ids: 1..MaxBackends-1 (the datapath's).
	MaxBackends int
	// IDQuarantine is how long a released backend id stays unused, so that
	// flows still pinned to the old backend are expired first (Maintain runs
	// far more often). Default 5 minutes.
	IDQuarantine time.Duration
	// ResolveTimeout bounds the resolution of one next hop. Default 3 s.
	ResolveTimeout time.Duration
}

// Reconciler turns the desired state and backend health into datapath writes.
// It remembers what it wrote, so applying the same state again writes
// nothing and a change to one service writes only that service's entries.
type Reconciler struct {
	dp   Datapath
	nh   NextHops
	opts Options
	now  func() time.Time

	mu       sync.Mutex
	seed     [16]byte
	builder  *MaglevBuilder
	applied  map[xdp.VIPKey]*vipApplied
	ids      backendIDs
	nextHops map[netip.Addr]xdp.NextHop
	nhGen    uint64 // bumped when cached next hops are forgotten
	status   Status
	counts   []int // scratch of countSlots, by backend id

	// What an earlier instance left in the datapath (Recover), until an
	// Apply without errors has claimed or removed it.
	leftVIPs     map[xdp.VIPKey]bool
	leftBackends map[uint64]uint32 // owner -> id
}

// vipApplied is what the datapath holds for one VIP.
type vipApplied struct {
	// What it was made from: unchanged inputs need no work at all.
	src    *desiredVIP
	health []bool
	nhGen  uint64

	service  string
	vip      xdp.VIP
	status   VIPStatus
	inputs   []MaglevBackend // what table was built from
	table    []uint32
	backends map[netip.AddrPort]*backendApplied
}

type backendApplied struct {
	id      uint32
	claimed uint64 // owner of the earlier instance's entry it took over, until applied
	slots   int
	entry   xdp.Backend
	weight  uint32
	healthy bool
	err     string // why it is not in the table, when it should be
}

// NewReconciler returns a reconciler writing to dp.
func NewReconciler(dp Datapath, nh NextHops, opts Options) *Reconciler {
	if opts.MaxBackends == 0 {
		opts.MaxBackends = 1 << 17
	}
	if opts.IDQuarantine == 0 {
		opts.IDQuarantine = 5 * time.Minute
	}
	if opts.ResolveTimeout == 0 {
		opts.ResolveTimeout = 3 * time.Second
	}
	r := &Reconciler{
		dp: dp, nh: nh, opts: opts, now: time.Now,
		applied:  map[xdp.VIPKey]*vipApplied{},
		nextHops: map[netip.Addr]xdp.NextHop{},
	}
	r.ids = backendIDs{max: uint32(opts.MaxBackends - 1), next: 1, used: map[uint32]bool{}, byKey: map[idKey]uint32{}}
	return r
}

// Recover takes over what an earlier instance left in the datapath: its
// VIPs, and its backend entries, found by their Owner. Call it before the
// first Apply. Apply then gives a backend it still wants its old entry (the
// same id, so its pinned flows and counters carry on), and removes the VIPs
// and entries nothing wants any more once an Apply has no errors.
func (r *Reconciler) Recover(vips []xdp.VIPKey, backends map[uint32]xdp.Backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leftVIPs = map[xdp.VIPKey]bool{}
	for _, k := range vips {
		r.leftVIPs[k] = true
	}
	r.leftBackends = map[uint64]uint32{}
	for id, b := range backends {
		r.ids.used[id] = true
		if b.Owner != 0 {
			r.leftBackends[b.Owner] = id
		} else {
			r.leftBackends[uint64(id)<<32|0xffffffff] = id // nobody's: removed
		}
	}
}

// backendOwner names a backend entry: its VIP and the backend's address.
func backendOwner(k xdp.VIPKey, ap netip.AddrPort) uint64 {
	h := fnv.New64a()
	h.Write([]byte(k.String() + "|" + ap.String()))
	return h.Sum64() | 1 // never 0
}

// HashSeed is the flow-hash seed the datapath gets for a Maglev seed: its
// first four bytes, little-endian.
func HashSeed(seed [16]byte) uint32 { return binary.LittleEndian.Uint32(seed[:4]) }

// desiredVIP is one VIP of the desired state, resolved.
type desiredVIP struct {
	key      xdp.VIPKey
	service  string
	vip      xdp.VIP
	size     int
	backends []Backend
}

// Apply makes the datapath match state, given health. Services whose writes
// fail keep their previous datapath state and are reported in the returned
// Status (and retried by the next Apply); the others are applied.
func (r *Reconciler) Apply(ctx context.Context, state State, health Health) Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.now()
	r.ids.expire(start, r.opts.IDQuarantine)
	if state.Seed != r.seed || r.builder == nil {
		r.seed = state.Seed
		r.builder = NewMaglevBuilder(state.Seed)
	}
	hashSeed := HashSeed(state.Seed)

	var errs []ServiceError
	desired := map[xdp.VIPKey]*desiredVIP{}
	for _, s := range state.Services {
		size := s.TableSize
		if size == 0 {
			size = DefaultTableSize
		}
		if err := ValidTableSize(size); err != nil {
			errs = append(errs, ServiceError{Service: s.Name, Err: err.Error()})
			continue
		}
		for _, p := range s.Ports {
			k := xdp.VIPKey{Addr: s.Addr, Port: p, Proto: s.Proto}
			if other, ok := desired[k]; ok {
				errs = append(errs, ServiceError{Service: s.Name, Err: fmt.Sprintf("VIP %s is also service %q", k, other.service)})
				continue
			}
			desired[k] = &desiredVIP{key: k, service: s.Name, vip: xdp.VIP{Mode: s.Mode, HashSeed: hashSeed}, size: size, backends: s.Backends}
		}
	}

	// Removed VIPs go first; their backend entries are deleted at the end,
	// once no packet can be using them.
	var gone []goneBackend
	for k, a := range r.applied {
		if _, ok := desired[k]; ok {
			continue
		}
		if err := r.dp.DeleteVIP(k); err != nil && !errors.Is(err, xdp.ErrNotFound) {
			errs = append(errs, ServiceError{Service: a.service, VIP: k.String(), Err: fmt.Sprintf("deleting VIP: %v", err)})
			continue
		}
		delete(r.applied, k)
		for _, ap := range sortedAddrs(a.backends) {
			gone = append(gone, goneBackend{a.service, k, ap, a.backends[ap].id})
		}
	}
	keys := make([]xdp.VIPKey, 0, len(desired))
	for k := range desired {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareVIPKeys)

	for k := range r.leftVIPs {
		if _, ok := desired[k]; ok {
			delete(r.leftVIPs, k) // applied below as a new VIP
			continue
		}
		if state.KeepLeft {
			continue
		}
		if err := r.dp.DeleteVIP(k); err != nil && !errors.Is(err, xdp.ErrNotFound) {
			errs = append(errs, ServiceError{VIP: k.String(), Err: fmt.Sprintf("deleting VIP left by an earlier instance: %v", err)})
			continue
		}
		delete(r.leftVIPs, k)
	}

	// Phase 1, per VIP: plan, then write backend entries and the VIP.
	plans := make([]*vipPlan, 0, len(keys))
	tables := map[xdp.VIPKey][]uint32{}
	for _, k := range keys {
		d := desired[k]
		hv := healthVector(d, health)
		if a := r.applied[k]; a != nil && a.nhGen == r.nhGen && a.src.equal(d) && slices.Equal(a.health, hv) {
			continue // nothing changed for this VIP
		}
		p, err := r.plan(ctx, d, health)
		if err == nil {
			p.next.src, p.next.health, p.next.nhGen = d, hv, r.nhGen
			err = r.writeEntries(p)
		}
		if err != nil {
			errs = append(errs, ServiceError{Service: desired[k].service, VIP: k.String(), Err: err.Error()})
			continue
		}
		plans = append(plans, p)
		if p.tableChanged {
			tables[k] = p.next.table
		}
	}
	// Phase 2: every new table at once (new inner maps are put into the
	// datapath in one batch).
	var tableErrs map[xdp.VIPKey]error
	if len(tables) > 0 {
		tableErrs = r.dp.SetTables(tables)
	}
	// Phase 3, per VIP: undo a failed one, or commit it.
	for _, p := range plans {
		if err := tableErrs[p.key]; err != nil {
			r.undo(p)
			errs = append(errs, ServiceError{Service: p.next.service, VIP: p.key.String(), Err: fmt.Sprintf("writing table: %v", err)})
			continue
		}
		p.next.status = p.next.statusOf(p.key)
		r.applied[p.key] = p.next
		if p.old != nil {
			for _, ap := range sortedAddrs(p.old.backends) {
				if _, ok := p.next.backends[ap]; !ok {
					gone = append(gone, goneBackend{p.next.service, p.key, ap, p.old.backends[ap].id})
				}
			}
		}
	}
	// Entries an earlier instance left that nothing claimed, once every VIP
	// is as desired (a VIP that failed may still use them).
	if len(errs) == 0 && !state.KeepLeft && len(r.leftBackends) > 0 {
		ids := make([]uint32, 0, len(r.leftBackends))
		for _, id := range r.leftBackends {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			gone = append(gone, goneBackend{id: id})
		}
		r.leftBackends = nil
	}
	// Phase 4: entries no current table references any more, once no packet
	// that read the old tables is still running (Sync). Previous tables and
	// pins may still name them until the grace period ends: a packet that
	// finds a deleted entry through them follows the current table, and the
	// datapath never zeroes an entry a packet may be reading.
	if len(gone) > 0 {
		if err := r.dp.Sync(); err != nil {
			errs = append(errs, ServiceError{Err: err.Error()})
		} else {
			for _, g := range gone {
				if err := r.dp.DeleteBackend(g.id); err != nil && !errors.Is(err, xdp.ErrNotFound) {
					errs = append(errs, ServiceError{Service: g.service, VIP: g.vip.String(), Err: fmt.Sprintf("deleting backend %s (id %d): %v", g.addr, g.id, err)})
				}
				if g.service == "" { // left by an earlier instance
					r.ids.released = append(r.ids.released, releasedID{g.id, r.now()})
					continue
				}
				r.ids.release(idKey{g.vip, g.addr}, r.now())
			}
		}
	}
	r.status = r.snapshot()
	r.status.LastApply = start
	r.status.Duration = r.now().Sub(start)
	r.status.Errors = errs
	return r.status
}

// compareVIPKeys orders VIPs by address, port and protocol.
func compareVIPKeys(a, b xdp.VIPKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	return int(a.Proto) - int(b.Proto)
}

// goneBackend is a backend entry to delete.
type goneBackend struct {
	service string
	vip     xdp.VIPKey
	addr    netip.AddrPort
	id      uint32
}

func (d *desiredVIP) equal(o *desiredVIP) bool {
	return d.key == o.key && d.service == o.service && d.vip == o.vip && d.size == o.size && slices.Equal(d.backends, o.backends)
}

func healthVector(d *desiredVIP, health Health) []bool {
	v := make([]bool, len(d.backends))
	for i, b := range d.backends {
		v[i] = health == nil || health(BackendKey{Service: d.service, Backend: netip.AddrPortFrom(b.Addr, b.Port)})
	}
	return v
}

// vipPlan is the change of one VIP being applied.
type vipPlan struct {
	key          xdp.VIPKey
	old, next    *vipApplied
	inputs       []MaglevBackend
	tableChanged bool
	vipWritten   bool
	written      []*backendApplied // entries written, to undo
}

// plan works out the next state of one VIP: backend ids, entries and, when
// its inputs changed, its table.
func (r *Reconciler) plan(ctx context.Context, d *desiredVIP, health Health) (*vipPlan, error) {
	old := r.applied[d.key]
	p := &vipPlan{key: d.key, old: old}
	next := &vipApplied{service: d.service, vip: d.vip, backends: map[netip.AddrPort]*backendApplied{}}
	p.next = next
	for _, b := range d.backends {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		if _, dup := next.backends[ap]; dup {
			r.releaseNew(d.key, old, next)
			return nil, fmt.Errorf("backend %s listed twice", ap)
		}
		healthy := health == nil || health(BackendKey{Service: d.service, Backend: ap})
		ba := &backendApplied{weight: b.Weight, healthy: healthy}
		owner := backendOwner(d.key, ap)
		if old != nil && old.backends[ap] != nil {
			ba.id = old.backends[ap].id
		} else if id, ok := r.leftBackends[owner]; ok {
			// The entry an earlier instance made for it: same id.
			delete(r.leftBackends, owner)
			r.ids.byKey[idKey{d.key, ap}] = id
			ba.id, ba.claimed = id, owner
		} else {
			id, err := r.ids.get(idKey{d.key, ap})
			if err != nil {
				r.releaseNew(d.key, old, next)
				return nil, err
			}
			ba.id = id
		}
		next.backends[ap] = ba
		nh, err := r.resolve(ctx, b.Addr)
		if err != nil {
			// Unreachable: it cannot be written, so it gets no flows.
			ba.err = err.Error()
			if ob := old.backend(ap); ob != nil && ob.entry.Addr.IsValid() {
				ba.entry = ob.entry
				ba.entry.Up = false
			}
			continue
		}
		ba.entry = xdp.Backend{Addr: b.Addr, Port: b.Port, IfIndex: nh.IfIndex, NextHopMAC: nh.MAC, SrcMAC: nh.SrcMAC, MTU: nh.MTU, Up: healthy, Owner: owner}
		if healthy && b.Weight > 0 {
			p.inputs = append(p.inputs, MaglevBackend{ID: ba.id, Addr: ap, Weight: b.Weight})
		}
	}
	sort.Slice(p.inputs, func(i, j int) bool { return p.inputs[i].ID < p.inputs[j].ID })
	next.inputs = p.inputs
	if old != nil && len(old.table) == d.size && slices.Equal(old.inputs, p.inputs) {
		// Same backends, weights and size: the same table, not rebuilt.
		next.table = old.table
		for ap, b := range next.backends {
			if ob := old.backends[ap]; ob != nil {
				b.slots = ob.slots
			}
		}
		return p, nil
	}
	next.table = make([]uint32, d.size)
	if err := r.builder.Build(next.table, p.inputs); err != nil {
		r.releaseNew(d.key, old, next)
		return nil, err
	}
	r.countSlots(next)
	p.tableChanged = old == nil || !slices.Equal(old.table, next.table)
	return p, nil
}

// writeEntries writes the backend entries that are new or changed (before
// any table references them) and the VIP itself. On a failure it undoes its
// writes.
func (r *Reconciler) writeEntries(p *vipPlan) error {
	for _, ap := range sortedAddrs(p.next.backends) {
		b := p.next.backends[ap]
		if !b.entry.Addr.IsValid() {
			continue
		}
		if ob := p.old.backend(ap); ob != nil && sameBackend(ob.entry, b.entry) {
			continue
		}
		if err := r.dp.UpsertBackend(b.id, b.entry); err != nil {
			r.undo(p)
			return fmt.Errorf("writing backend %s (id %d): %w", ap, b.id, err)
		}
		p.written = append(p.written, b)
	}
	if p.old == nil || p.old.vip != p.next.vip {
		if err := r.dp.UpsertVIP(p.key, p.next.vip); err != nil {
			r.undo(p)
			return fmt.Errorf("writing VIP: %w", err)
		}
		p.vipWritten = true
	}
	return nil
}

// undo puts back what a failed plan wrote: the VIP as it was (or none), the
// entries as they were (or none), and gives back new ids.
func (r *Reconciler) undo(p *vipPlan) {
	if p.vipWritten {
		if p.old == nil {
			_ = r.dp.DeleteVIP(p.key)
		} else {
			_ = r.dp.UpsertVIP(p.key, p.old.vip)
		}
	}
	for _, b := range p.written {
		if ob := p.old.byID(b.id); ob != nil && ob.entry.Addr.IsValid() {
			_ = r.dp.UpsertBackend(ob.id, ob.entry)
		} else if b.claimed == 0 {
			_ = r.dp.DeleteBackend(b.id)
		}
	}
	r.releaseNew(p.key, p.old, p.next)
}

// backend finds a backend by address; a nil a has none.
func (a *vipApplied) backend(ap netip.AddrPort) *backendApplied {
	if a == nil {
		return nil
	}
	return a.backends[ap]
}

// countSlots sets the slots of a's backends from its table.
func (r *Reconciler) countSlots(a *vipApplied) {
	if len(r.counts) < r.opts.MaxBackends {
		r.counts = make([]int, r.opts.MaxBackends)
	}
	for _, id := range a.table {
		if int(id) < len(r.counts) {
			r.counts[id]++
		}
	}
	for _, b := range a.backends {
		b.slots = r.counts[b.id]
	}
	for _, id := range a.table {
		if int(id) < len(r.counts) {
			r.counts[id] = 0
		}
	}
}

// byID finds the backend with id; a nil a has none.
func (a *vipApplied) byID(id uint32) *backendApplied {
	if a == nil {
		return nil
	}
	for _, b := range a.backends {
		if b.id == id {
			return b
		}
	}
	return nil
}

// releaseNew gives back the ids allocated for next that old did not have;
// entries of an earlier instance it took over are left to it again.
func (r *Reconciler) releaseNew(k xdp.VIPKey, old, next *vipApplied) {
	for ap, b := range next.backends {
		if old != nil && old.backends[ap] != nil {
			continue
		}
		if b.claimed != 0 {
			delete(r.ids.byKey, idKey{k, ap})
			r.leftBackends[b.claimed] = b.id
			continue
		}
		r.ids.unget(idKey{k, ap})
	}
}

func sameBackend(a, b xdp.Backend) bool {
	return a.Addr == b.Addr && a.Port == b.Port && a.IfIndex == b.IfIndex && a.MTU == b.MTU && a.Up == b.Up && a.Owner == b.Owner &&
		a.NextHopMAC.String() == b.NextHopMAC.String() && a.SrcMAC.String() == b.SrcMAC.String()
}

func sortedAddrs(m map[netip.AddrPort]*backendApplied) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(m))
	for ap := range m {
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Compare(out[j]) < 0 })
	return out
}

// resolve returns the cached next hop of addr, resolving it the first time.
func (r *Reconciler) resolve(ctx context.Context, addr netip.Addr) (xdp.NextHop, error) {
	if nh, ok := r.nextHops[addr]; ok {
		return nh, nil
	}
	rctx, cancel := context.WithTimeout(ctx, r.opts.ResolveTimeout)
	defer cancel()
	nh, err := r.nh.Resolve(rctx, addr)
	if err != nil {
		return nh, err
	}
	r.nextHops[addr] = nh
	return nh, nil
}

// ForgetNextHops drops cached next hops (all of them when addrs is empty), so
// the next Apply resolves them again: call it when routes or neighbours
// change, then Apply with the same state; only entries whose next hop really
// changed are rewritten.
func (r *Reconciler) ForgetNextHops(addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nhGen++
	if len(addrs) == 0 {
		clear(r.nextHops)
		return
	}
	for _, a := range addrs {
		delete(r.nextHops, a)
	}
}

// NextHopsVia returns the backend addresses whose cached next hop is the
// neighbour ip (the backend itself, or the gateway its route goes through)
// with a MAC other than mac: those to forget when the kernel learns a new
// MAC for ip.
func (r *Reconciler) NextHopsVia(ip netip.Addr, mac net.HardwareAddr) []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []netip.Addr
	for addr, nh := range r.nextHops {
		if nh.Via == ip && !bytes.Equal(nh.MAC, mac) {
			out = append(out, addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// backendIDs allocates backend ids per (VIP, backend). A released id is
// reused only after the quarantine.
type backendIDs struct {
	max      uint32
	next     uint32
	used     map[uint32]bool
	byKey    map[idKey]uint32
	released []releasedID
}

type idKey struct {
	vip     xdp.VIPKey
	backend netip.AddrPort
}

type releasedID struct {
	id uint32
	at time.Time
}

// ErrNoBackendIDs is returned when every backend id is in use or quarantined.
var ErrNoBackendIDs = errors.New("no free backend id")

func (a *backendIDs) get(k idKey) (uint32, error) {
	if id, ok := a.byKey[k]; ok {
		return id, nil
	}
	for i := uint32(0); i < a.max; i++ {
		id := a.next
		if a.next++; a.next > a.max {
			a.next = 1
		}
		if !a.used[id] {
			a.used[id] = true
			a.byKey[k] = id
			return id, nil
		}
	}
	return 0, ErrNoBackendIDs
}

// unget returns an id that was never written.
func (a *backendIDs) unget(k idKey) {
	if id, ok := a.byKey[k]; ok {
		delete(a.byKey, k)
		delete(a.used, id)
	}
}

func (a *backendIDs) release(k idKey, now time.Time) {
	id, ok := a.byKey[k]
	if !ok {
		return
	}
	delete(a.byKey, k)
	a.released = append(a.released, releasedID{id, now})
}

// expire frees the ids whose quarantine ended.
func (a *backendIDs) expire(now time.Time, quarantine time.Duration) {
	n := 0
	for _, r := range a.released {
		if now.Sub(r.at) >= quarantine {
			delete(a.used, r.id)
			continue
		}
		a.released[n] = r
		n++
	}
	a.released = a.released[:n]
}
