package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/xdp"
)

// FileSource is the name of the configuration file as a source of services.
const FileSource = "file"

// Source is where services come from besides the configuration file (the
// Kubernetes watcher is one). Several run at once; the control plane merges
// what they offer (see Plane for what happens when two claim one VIP).
type Source interface {
	// Name names the source in the status, metrics and log. It is unique
	// and never "file".
	Name() string
	// Run watches the source until ctx ends and calls update with the
	// source's complete set of services each time it changes. The services
	// are valid and have their addresses: the control plane takes them as
	// they are. update does not block for long and may be called from any
	// goroutine.
	Run(ctx context.Context, update func([]config.Service)) error
}

// ConfigFollower is a Source that takes the running configuration after
// every apply (a reload's new pools, say). ConfigChanged must not block.
type ConfigFollower interface {
	ConfigChanged(cfg *config.Config)
}

// SyncReporter is a Source that watches something remote and says how the
// watch goes, for the status.
type SyncReporter interface {
	// Synced reports whether the source has its complete view (its caches
	// synced).
	Synced() bool
	// LastEvent is when the source last heard of a change (zero: never).
	LastEvent() time.Time
}

// LeaderReporter is a Source whose appliances elect a leader.
type LeaderReporter interface {
	// Leader reports whether this appliance leads.
	Leader() bool
	// Identity is this appliance's name in the election.
	Identity() string
}

// A claim is a VIP (address, port, protocol) or a service name held by one
// source.
type claim struct {
	source, service string
	since           time.Time
}

// merger merges the services of several sources. A VIP or a service name
// belongs to the first source that offers it, for as long as that source
// keeps offering it; another source offering it too is in conflict and its
// claim is left out, without ever taking the VIP over while the first one
// holds it: nothing flaps.
type merger struct {
	log      *slog.Logger
	vips     map[xdp.VIPKey]claim
	names    map[string]claim
	conflict map[ConflictInfo]bool // as reported, Since zeroed: to log each once
}

func newMerger(log *slog.Logger) *merger {
	return &merger{log: log, vips: map[xdp.VIPKey]claim{}, names: map[string]claim{}, conflict: map[ConflictInfo]bool{}}
}

// vipKeys are the VIPs of a service.
func vipKeys(s config.Service) []xdp.VIPKey {
	keys := make([]xdp.VIPKey, len(s.Ports))
	for i, p := range s.Ports {
		keys[i] = xdp.VIPKey{Addr: s.Addr, Port: p, Proto: xdp.Proto(s.Protocol)}
	}
	return keys
}

// merge returns the services to run, from the sources' offers (order: the
// sources in the order they were added, the file first), and the conflicts.
// Claims made in earlier merges stand.
func (m *merger) merge(order []string, offers map[string][]config.Service, now time.Time) ([]config.Service, []ConflictInfo) {
	// Release what the holders no longer offer.
	offered := map[string]map[xdp.VIPKey]bool{}
	offeredNames := map[string]map[string]bool{}
	for src, services := range offers {
		offered[src], offeredNames[src] = map[xdp.VIPKey]bool{}, map[string]bool{}
		for _, s := range services {
			offeredNames[src][s.Name] = true
			for _, k := range vipKeys(s) {
				offered[src][k] = true
			}
		}
	}
	for k, c := range m.vips {
		if !offered[c.source][k] {
			delete(m.vips, k)
		}
	}
	for n, c := range m.names {
		if !offeredNames[c.source][n] {
			delete(m.names, n)
		}
	}

	var out []config.Service
	var conflicts []ConflictInfo
	for _, src := range order {
		for _, s := range offers[src] {
			if c, ok := m.names[s.Name]; ok && c.source != src {
				conflicts = append(conflicts, ConflictInfo{Service: s.Name, Source: src, HeldBy: c.source, Owner: c.service, Since: c.since})
				continue
			}
			var ports []uint16
			for _, k := range vipKeys(s) {
				if c, ok := m.vips[k]; ok && c.source != src {
					conflicts = append(conflicts, ConflictInfo{VIP: k.String(), Service: s.Name, Source: src, HeldBy: c.source, Owner: c.service, Since: c.since})
					continue
				}
				if _, ok := m.vips[k]; !ok {
					m.vips[k] = claim{source: src, service: s.Name, since: now}
				}
				ports = append(ports, k.Port)
			}
			if len(ports) == 0 {
				continue
			}
			if _, ok := m.names[s.Name]; !ok {
				m.names[s.Name] = claim{source: src, service: s.Name, since: now}
			}
			if len(ports) < len(s.Ports) {
				s.Ports = ports
			}
			out = append(out, s)
		}
	}
	m.report(conflicts)
	return out, conflicts
}

// report logs a conflict when it appears and when it is over, once each.
func (m *merger) report(conflicts []ConflictInfo) {
	now := map[ConflictInfo]bool{}
	for _, c := range conflicts {
		c.Since = time.Time{}
		now[c] = true
		if !m.conflict[c] {
			m.log.Warn("conflict: a VIP or service name offered by two sources; the first keeps it",
				"vip", c.VIP, "service", c.Service, "source", c.Source, "held_by", c.HeldBy, "owner", c.Owner)
		}
	}
	for c := range m.conflict {
		if !now[c] {
			m.log.Info("conflict over", "vip", c.VIP, "service", c.Service, "source", c.Source)
		}
	}
	m.conflict = now
}

// sortConflicts orders conflicts for the status.
func sortConflicts(c []ConflictInfo) {
	slices.SortFunc(c, func(a, b ConflictInfo) int {
		if a.Source != b.Source {
			if a.Source < b.Source {
				return -1
			}
			return 1
		}
		if a.Service != b.Service {
			if a.Service < b.Service {
				return -1
			}
			return 1
		}
		if a.VIP < b.VIP {
			return -1
		}
		if a.VIP > b.VIP {
			return 1
		}
		return 0
	})
}

// checkSourceName rejects a source the plane cannot tell apart.
func checkSourceName(name string, have []string) error {
	if name == "" || name == FileSource {
		return fmt.Errorf("source name %q is reserved", name)
	}
	if slices.Contains(have, name) {
		return fmt.Errorf("source %q added twice", name)
	}
	return nil
}

// announceable returns the addresses to announce: those of services that
// want it (announce: true) with at least minHealthyBackends healthy backends
// with a weight. It is decided here once and handed to every announcer.
func announceable(services []config.Service, healthy map[string]int) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range services {
		if !s.Announce || seen[s.Addr] || healthy[s.Name] < s.MinHealthyBackends {
			continue
		}
		seen[s.Addr] = true
		out = append(out, s.Addr)
	}
	return out
}
