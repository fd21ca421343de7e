package lb

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/xdplb/xdplb/xdp"
)

// Plan is what [Reconciler.Apply] would do with a state, worked out without
// writing anything: the same backend ids (allocated on a copy of the
// reconciler's allocator), the same next hops (the cached ones; others are
// resolved but not kept) and the same Maglev builder.
type Plan struct {
	// VIPs are every VIP applied now or desired, sorted by key.
	VIPs []VIPPlan
	// Errors are the services Apply would refuse, as Apply words them.
	Errors []ServiceError
}

// Changed says whether applying the state would change anything.
func (p Plan) Changed() bool {
	for _, v := range p.VIPs {
		if v.Action != ActionSame {
			return true
		}
	}
	return false
}

// The actions of a VIPPlan.
const (
	ActionSame   = "same"
	ActionAdd    = "add"
	ActionRemove = "remove"
	ActionChange = "change"
)

// VIPPlan is the change of one VIP.
type VIPPlan struct {
	Key     xdp.VIPKey
	Service string
	// Action is one of ActionSame, ActionAdd, ActionRemove, ActionChange.
	Action string
	// Changes say what changes, one item each ("mode dsr-l2 -> dsr-ipip",
	// "backend 198.18.0.11 added", "backend 198.18.0.12 weight 1 -> 2").
	Changes []string
	// OldSize and Size are the table sizes before and after (0: none).
	OldSize, Size int
	// SlotsMoved counts the slots whose backend changes, when the table
	// keeps its size (a new VIP or a new size: every slot).
	SlotsMoved int
	// Moved is the share of the flow-hash space whose backend changes: a
	// flow's slot is (hash × M) >> 32, so with the same size this is the
	// slots moved weighted by the hashes each slot covers, and across a size
	// change it is computed over the intervals of both partitions.
	Moved float64
	// Moves say where the moved slots go, largest first.
	Moves []SlotMove
	// Backends are the VIP's backends after the change (and those removed),
	// sorted by address.
	Backends []BackendPlan

	old, next         []uint32
	oldAddr, nextAddr map[uint32]netip.AddrPort
}

// SlotMove is a part of a table that changes backend. A zero address is
// "no backend" (an empty table).
type SlotMove struct {
	From, To netip.AddrPort
	// Slots is the number of slots (when the size is kept); Share is the
	// share of the flow-hash space.
	Slots int
	Share float64
}

// BackendPlan is one backend of a VIP after the change.
type BackendPlan struct {
	Addr     netip.AddrPort
	ID       uint32
	Weight   uint32
	Healthy  bool
	OldSlots int
	Slots    int
	// Change is "added", "removed" or "" (kept).
	Change string
	Error  string
}

// Backend returns the backend a flow of hash h goes to by the VIP's table
// before (old) and after the change; a zero address is none.
func (v VIPPlan) Backend(h uint32) (old, next netip.AddrPort) {
	if len(v.old) > 0 {
		old = v.oldAddr[v.old[xdp.Slot(h, len(v.old))]]
	}
	if len(v.next) > 0 {
		next = v.nextAddr[v.next[xdp.Slot(h, len(v.next))]]
	}
	return old, next
}

// Plan works out what Apply would do with state given health, without
// writing to the datapath or changing the reconciler.
func (r *Reconciler) Plan(ctx context.Context, state State, health Health) Plan {
	r.mu.Lock()
	defer r.mu.Unlock()
	builder := r.builder
	if builder == nil || state.Seed != r.seed {
		builder = NewMaglevBuilder(state.Seed)
	}
	ids := r.ids.clone()
	ids.expire(r.now(), r.opts.IDQuarantine)
	left := maps.Clone(r.leftBackends)
	hashSeed := HashSeed(state.Seed)

	var out Plan
	desired := map[xdp.VIPKey]*desiredVIP{}
	for _, s := range state.Services {
		size := s.TableSize
		if size == 0 {
			size = DefaultTableSize
		}
		if err := ValidTableSize(size); err != nil {
			out.Errors = append(out.Errors, ServiceError{Service: s.Name, Err: err.Error()})
			continue
		}
		for _, p := range s.Ports {
			k := xdp.VIPKey{Addr: s.Addr, Port: p, Proto: s.Proto}
			if other, ok := desired[k]; ok {
				out.Errors = append(out.Errors, ServiceError{Service: s.Name, Err: fmt.Sprintf("VIP %s is also service %q", k, other.service)})
				continue
			}
			desired[k] = &desiredVIP{key: k, service: s.Name, vip: xdp.VIP{Mode: s.Mode, HashSeed: hashSeed}, size: size, backends: s.Backends}
		}
	}
	for k, a := range r.applied {
		if _, ok := desired[k]; ok {
			continue
		}
		v := VIPPlan{Key: k, Service: a.service, Action: ActionRemove, OldSize: len(a.table), old: a.table, oldAddr: a.addrByID()}
		for _, ap := range sortedAddrs(a.backends) {
			b := a.backends[ap]
			v.Backends = append(v.Backends, BackendPlan{Addr: ap, ID: b.id, Weight: b.weight, Healthy: b.healthy, OldSlots: b.slots, Change: "removed"})
		}
		v.Moved, v.SlotsMoved = 1, len(a.table)
		v.Moves = moves(&v)
		out.VIPs = append(out.VIPs, v)
	}
	for _, d := range desired {
		v, err := r.planVIP(ctx, d, health, builder, &ids, left)
		if err != nil {
			out.Errors = append(out.Errors, ServiceError{Service: d.service, VIP: d.key.String(), Err: err.Error()})
			if a := r.applied[d.key]; a != nil {
				v = VIPPlan{Key: d.key, Service: a.service, Action: ActionSame, OldSize: len(a.table), Size: len(a.table)}
			} else {
				continue
			}
		}
		out.VIPs = append(out.VIPs, v)
	}
	slices.SortFunc(out.VIPs, func(a, b VIPPlan) int { return compareVIPKeys(a.Key, b.Key) })
	return out
}

// planVIP is plan without its side effects: ids come from ids and left
// (copies), next hops are not cached.
func (r *Reconciler) planVIP(ctx context.Context, d *desiredVIP, health Health, builder *MaglevBuilder, ids *backendIDs, left map[uint64]uint32) (VIPPlan, error) {
	old := r.applied[d.key]
	v := VIPPlan{Key: d.key, Service: d.service, Action: ActionAdd, Size: d.size, nextAddr: map[uint32]netip.AddrPort{}}
	if old != nil {
		v.Action, v.OldSize, v.old, v.oldAddr = ActionSame, len(old.table), old.table, old.addrByID()
		if old.service != d.service {
			v.Changes = append(v.Changes, fmt.Sprintf("service %s -> %s", old.service, d.service))
		}
		if old.vip.Mode != d.vip.Mode {
			v.Changes = append(v.Changes, fmt.Sprintf("mode %s -> %s", old.vip.Mode, d.vip.Mode))
		}
		if old.vip.HashSeed != d.vip.HashSeed {
			v.Changes = append(v.Changes, "flow-hash seed (maglev.seed) changes: every flow's slot moves")
		}
		if len(old.table) != d.size {
			v.Changes = append(v.Changes, fmt.Sprintf("table size %d -> %d", len(old.table), d.size))
		}
	}
	var inputs []MaglevBackend
	seen := map[netip.AddrPort]bool{}
	for _, b := range d.backends {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		if seen[ap] {
			return v, fmt.Errorf("backend %s listed twice", ap)
		}
		seen[ap] = true
		healthy := health == nil || health(BackendKey{Service: d.service, Backend: ap})
		bp := BackendPlan{Addr: ap, Weight: b.Weight, Healthy: healthy}
		ob := old.backend(ap)
		switch {
		case ob != nil:
			bp.ID, bp.OldSlots = ob.id, ob.slots
			if ob.weight != b.Weight {
				v.Changes = append(v.Changes, fmt.Sprintf("backend %s weight %d -> %d", backendString(ap), ob.weight, b.Weight))
			}
			if ob.healthy != healthy {
				v.Changes = append(v.Changes, fmt.Sprintf("backend %s %s -> %s", backendString(ap), upDown(ob.healthy), upDown(healthy)))
			}
		default:
			bp.Change = "added"
			if old != nil {
				v.Changes = append(v.Changes, fmt.Sprintf("backend %s added", backendString(ap)))
			}
			if id, ok := left[backendOwner(d.key, ap)]; ok {
				delete(left, backendOwner(d.key, ap))
				bp.ID = id
			} else {
				id, err := ids.get(idKey{d.key, ap})
				if err != nil {
					return v, err
				}
				bp.ID = id
			}
		}
		v.nextAddr[bp.ID] = ap
		if _, cached := r.nextHops[b.Addr]; !cached {
			rctx, cancel := context.WithTimeout(ctx, r.opts.ResolveTimeout)
			_, err := r.nh.Resolve(rctx, b.Addr)
			cancel()
			if err != nil {
				bp.Error = err.Error()
			}
		}
		if bp.Error == "" && healthy && b.Weight > 0 {
			inputs = append(inputs, MaglevBackend{ID: bp.ID, Addr: ap, Weight: b.Weight})
		}
		v.Backends = append(v.Backends, bp)
	}
	if old != nil {
		for _, ap := range sortedAddrs(old.backends) {
			if !seen[ap] {
				ob := old.backends[ap]
				v.Changes = append(v.Changes, fmt.Sprintf("backend %s removed", backendString(ap)))
				v.Backends = append(v.Backends, BackendPlan{Addr: ap, ID: ob.id, Weight: ob.weight, Healthy: ob.healthy, OldSlots: ob.slots, Change: "removed"})
			}
		}
	}
	sort.Slice(inputs, func(i, j int) bool { return inputs[i].ID < inputs[j].ID })
	if old != nil && len(old.table) == d.size && slices.Equal(old.inputs, inputs) {
		v.next = old.table
	} else {
		v.next = make([]uint32, d.size)
		if err := builder.Build(v.next, inputs); err != nil {
			return v, err
		}
	}
	counts := SlotCounts(v.next)
	for i := range v.Backends {
		if v.Backends[i].Change != "removed" {
			v.Backends[i].Slots = counts[v.Backends[i].ID]
		}
	}
	slices.SortFunc(v.Backends, func(a, b BackendPlan) int { return a.Addr.Compare(b.Addr) })
	v.Moved, v.SlotsMoved = movedShare(&v)
	v.Moves = moves(&v)
	if old != nil && (len(v.Changes) > 0 || v.SlotsMoved > 0) {
		v.Action = ActionChange
	}
	return v, nil
}

func backendString(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ap.Addr().String()
	}
	return ap.String()
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// addrByID maps the ids of a's table to their backends.
func (a *vipApplied) addrByID() map[uint32]netip.AddrPort {
	m := make(map[uint32]netip.AddrPort, len(a.backends))
	for ap, b := range a.backends {
		m[b.id] = ap
	}
	return m
}

// segments calls fn for each interval of the flow-hash space on which both
// tables keep one backend each: [lo, hi) with the slot of each table.
// A flow's slot is (h × M) >> 32, so slot i of a table of size M covers the
// hashes from ceil(i × 2^32 / M) to ceil((i+1) × 2^32 / M).
func segments(m1, m2 int, fn func(width uint64, s1, s2 int)) {
	start := func(i, m int) uint64 { return (uint64(i)<<32 + uint64(m) - 1) / uint64(m) }
	i, j := 0, 0
	pos := uint64(0)
	for i < m1 && j < m2 {
		e1, e2 := start(i+1, m1), start(j+1, m2)
		end := min(e1, e2)
		fn(end-pos, i, j)
		pos = end
		if e1 == end {
			i++
		}
		if e2 == end {
			j++
		}
	}
}

// movedShare returns the share of the hash space whose backend changes and,
// for the same size, the slots that change.
func movedShare(v *VIPPlan) (float64, int) {
	if len(v.old) == 0 || len(v.next) == 0 {
		if len(v.old) == 0 && len(v.next) == 0 {
			return 0, 0
		}
		return 1, max(len(v.old), len(v.next))
	}
	if len(v.old) == len(v.next) {
		slots := 0
		var width uint64
		segments(len(v.old), len(v.next), func(w uint64, i, _ int) {
			if v.oldAddr[v.old[i]] != v.nextAddr[v.next[i]] {
				slots++
				width += w
			}
		})
		return float64(width) / (1 << 32), slots
	}
	var width uint64
	segments(len(v.old), len(v.next), func(w uint64, i, j int) {
		if v.oldAddr[v.old[i]] != v.nextAddr[v.next[j]] {
			width += w
		}
	})
	return float64(width) / (1 << 32), len(v.next)
}

// moves groups the moved part of the tables by (from, to).
func moves(v *VIPPlan) []SlotMove {
	type pair struct{ from, to netip.AddrPort }
	agg := map[pair]*SlotMove{}
	add := func(from, to netip.AddrPort, slots int, w uint64) {
		if from == to {
			return
		}
		m := agg[pair{from, to}]
		if m == nil {
			m = &SlotMove{From: from, To: to}
			agg[pair{from, to}] = m
		}
		m.Slots += slots
		m.Share += float64(w) / (1 << 32)
	}
	switch {
	case len(v.old) == 0 && len(v.next) == 0:
	case len(v.old) == 0:
		segments(len(v.next), len(v.next), func(w uint64, i, _ int) { add(netip.AddrPort{}, v.nextAddr[v.next[i]], 1, w) })
	case len(v.next) == 0:
		segments(len(v.old), len(v.old), func(w uint64, i, _ int) { add(v.oldAddr[v.old[i]], netip.AddrPort{}, 1, w) })
	case len(v.old) == len(v.next):
		segments(len(v.old), len(v.next), func(w uint64, i, _ int) { add(v.oldAddr[v.old[i]], v.nextAddr[v.next[i]], 1, w) })
	default:
		segments(len(v.old), len(v.next), func(w uint64, i, j int) { add(v.oldAddr[v.old[i]], v.nextAddr[v.next[j]], 0, w) })
	}
	out := make([]SlotMove, 0, len(agg))
	for _, m := range agg {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b SlotMove) int {
		if a.Share != b.Share {
			if a.Share > b.Share {
				return -1
			}
			return 1
		}
		if c := a.From.Compare(b.From); c != 0 {
			return c
		}
		return a.To.Compare(b.To)
	})
	return out
}

// clone copies the allocator, so that a plan can allocate ids without
// taking them.
func (a *backendIDs) clone() backendIDs {
	return backendIDs{max: a.max, next: a.next, used: maps.Clone(a.used), byKey: maps.Clone(a.byKey), released: slices.Clone(a.released)}
}
