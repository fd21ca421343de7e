package lb

import (
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/xdplb/xdplb/xdp"
)

// Status is a read-only snapshot of what the reconciler applied, for the API
// and the CLI.
type Status struct {
	// LastApply is when the last Apply started and Duration how long it took.
	LastApply time.Time
	Duration  time.Duration
	// Errors are the services (or VIPs) the last Apply could not bring to
	// their desired state; they keep their previous state.
	Errors []ServiceError
	// VIPs as applied, sorted by key.
	VIPs []VIPStatus
}

// ServiceError is a failure of one service.
type ServiceError struct {
	Service string
	VIP     string // empty when it concerns the whole service
	Err     string
}

// VIPStatus is one VIP as applied.
type VIPStatus struct {
	Key       xdp.VIPKey
	Service   string
	Mode      xdp.Mode
	TableSize int
	Backends  []BackendStatus
}

// BackendStatus is one backend of a VIP as applied.
type BackendStatus struct {
	Addr    netip.AddrPort
	ID      uint32
	Weight  uint32
	Healthy bool
	// Slots is the number of table slots the backend owns.
	Slots int
	// Error says why the backend has no slots although it should (e.g. its
	// next hop could not be resolved).
	Error string
}

// Status returns the snapshot taken by the last Apply.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// snapshot builds the Status of what is applied. Each VIP's part is made
// once, when the VIP changes (vipApplied.statusOf), and shared by snapshots:
// it is never modified afterwards.
func (r *Reconciler) snapshot() Status {
	st := Status{VIPs: make([]VIPStatus, 0, len(r.applied))}
	for _, a := range r.applied {
		st.VIPs = append(st.VIPs, a.status)
	}
	slices.SortFunc(st.VIPs, func(a, b VIPStatus) int { return compareVIPKeys(a.Key, b.Key) })
	return st
}

func (a *vipApplied) statusOf(k xdp.VIPKey) VIPStatus {
	vs := VIPStatus{Key: k, Service: a.service, Mode: a.vip.Mode, TableSize: len(a.table)}
	for ap, b := range a.backends {
		vs.Backends = append(vs.Backends, BackendStatus{Addr: ap, ID: b.id, Weight: b.weight, Healthy: b.healthy, Slots: b.slots, Error: b.err})
	}
	sort.Slice(vs.Backends, func(i, j int) bool { return vs.Backends[i].Addr.Compare(vs.Backends[j].Addr) < 0 })
	return vs
}
