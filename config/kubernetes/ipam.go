package kubernetes

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/xdplb/xdplb/config"
)

// request is what the IPAM needs of one Service of the class.
type request struct {
	key      string // namespace/name
	labels   map[string]string
	created  int64 // creation time, Unix seconds: older Services choose first
	families []corev1.IPFamily
	// current are the addresses in the Service's status.
	current []netip.Addr
	// want are addresses asked for (xdplb.io/ips or spec.loadBalancerIP).
	want       []netip.Addr
	sharingKey string
	ports      []portKey
}

type portKey struct {
	port  int32
	proto corev1.Protocol
}

// allocation is the IPAM's answer for one Service: its addresses, the pool
// of each, and why it lacks one for a family it asked for.
type allocation struct {
	addrs   []netip.Addr
	pools   []string
	problem string
}

// holder is a Service holding an address.
type holder struct {
	key, sharingKey string
	ports           []portKey
}

// ipam hands out the pools' addresses to Services: the addresses a Service
// has in its status stay its own while they are still valid, then asked-for
// addresses, then the lowest free address of the first pool (in file order)
// whose serviceSelector matches. Two Services share an address only when
// both carry the same xdplb.io/sharing-key and no port and protocol of one
// is a port and protocol of the other.
type ipam struct {
	pools []config.Pool
	used  map[netip.Addr][]holder
}

// poolsFor returns the pools the Kubernetes source may use: those no
// service of the file names.
func poolsFor(cfg *config.Config) []config.Pool {
	named := map[string]bool{}
	for _, s := range cfg.ServiceSpecs {
		if s.Pool != "" {
			named[s.Pool] = true
		}
	}
	var out []config.Pool
	for _, p := range cfg.Pools {
		if !named[p.Name] {
			out = append(out, p)
		}
	}
	return out
}

// allocate answers every request.
func allocate(pools []config.Pool, reqs []request) map[string]allocation {
	a := &ipam{pools: pools, used: map[netip.Addr][]holder{}}
	reqs = slices.Clone(reqs)
	slices.SortFunc(reqs, func(x, y request) int {
		return cmp.Or(cmp.Compare(x.created, y.created), cmp.Compare(x.key, y.key))
	})
	out := make(map[string]allocation, len(reqs))
	// First every Service keeps what it has, if it still may.
	for _, r := range reqs {
		var al allocation
		for _, addr := range r.current {
			if len(r.want) > 0 && !slices.Contains(r.want, addr) {
				continue // it asks for another address now
			}
			pool := a.poolOf(addr, r)
			if pool == "" || !r.wantsFamily(addr) || hasFamily(al.addrs, addr) || !a.free(addr, r) {
				continue
			}
			a.take(addr, r)
			al.addrs = append(al.addrs, addr)
			al.pools = append(al.pools, pool)
		}
		out[r.key] = al
	}
	// Then the families still missing.
	for _, r := range reqs {
		al := out[r.key]
		var problems []string
		for _, fam := range r.families {
			v6 := fam == corev1.IPv6Protocol
			if slices.ContainsFunc(al.addrs, func(x netip.Addr) bool { return x.Is6() == v6 }) {
				continue
			}
			addr, pool, problem := a.pick(r, v6)
			if problem != "" {
				problems = append(problems, problem)
				continue
			}
			a.take(addr, r)
			al.addrs = append(al.addrs, addr)
			al.pools = append(al.pools, pool)
		}
		al.problem = strings.Join(problems, "; ")
		out[r.key] = al
	}
	return out
}

func (r request) wantsFamily(addr netip.Addr) bool {
	for _, f := range r.families {
		if (f == corev1.IPv6Protocol) == addr.Is6() {
			return true
		}
	}
	return false
}

func hasFamily(addrs []netip.Addr, a netip.Addr) bool {
	return slices.ContainsFunc(addrs, func(x netip.Addr) bool { return x.Is6() == a.Is6() })
}

// poolOf is the first pool that holds addr and selects the Service, or "".
func (a *ipam) poolOf(addr netip.Addr, r request) string {
	for i := range a.pools {
		p := &a.pools[i]
		if p.ServiceSelector.Matches(r.labels) && poolContains(p, addr) {
			return p.Name
		}
	}
	return ""
}

// free reports whether r may take addr: nobody holds it, or every holder
// shares with r.
func (a *ipam) free(addr netip.Addr, r request) bool {
	for _, h := range a.used[addr] {
		if h.key == r.key {
			continue
		}
		if r.sharingKey == "" || h.sharingKey != r.sharingKey || portsClash(h.ports, r.ports) {
			return false
		}
	}
	return true
}

func portsClash(a, b []portKey) bool {
	for _, p := range a {
		if slices.Contains(b, p) {
			return true
		}
	}
	return false
}

func (a *ipam) take(addr netip.Addr, r request) {
	a.used[addr] = append(a.used[addr], holder{key: r.key, sharingKey: r.sharingKey, ports: r.ports})
}

// pick finds an address of one family for r, or says why there is none.
func (a *ipam) pick(r request, v6 bool) (netip.Addr, string, string) {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	var wanted []netip.Addr
	for _, w := range r.want {
		if w.Is6() == v6 {
			wanted = append(wanted, w)
		}
	}
	if len(wanted) > 0 {
		for _, w := range wanted {
			pool := a.poolOf(w, r)
			switch {
			case pool == "":
				return netip.Addr{}, "", fmt.Sprintf("requested address %s is in no pool that selects the Service", w)
			case !a.free(w, r):
				return netip.Addr{}, "", fmt.Sprintf("requested address %s is in use by %s", w, a.used[w][0].key)
			default:
				return w, pool, ""
			}
		}
	}
	// An address shared under the same key first.
	if r.sharingKey != "" {
		var shared []netip.Addr
		for addr, hs := range a.used {
			if addr.Is6() == v6 && slices.ContainsFunc(hs, func(h holder) bool { return h.sharingKey == r.sharingKey }) && a.free(addr, r) && a.poolOf(addr, r) != "" {
				shared = append(shared, addr)
			}
		}
		if len(shared) > 0 {
			slices.SortFunc(shared, netip.Addr.Compare)
			return shared[0], a.poolOf(shared[0], r), ""
		}
	}
	selecting := 0
	for i := range a.pools {
		p := &a.pools[i]
		if !p.ServiceSelector.Matches(r.labels) {
			continue
		}
		for _, b := range p.Blocks {
			first, last := b.Allocatable()
			if first.Is6() != v6 {
				continue
			}
			selecting++
			for addr := first; addr.IsValid() && addr.Compare(last) <= 0; addr = addr.Next() {
				if len(a.used[addr]) == 0 {
					return addr, p.Name, ""
				}
			}
		}
	}
	if selecting == 0 {
		return netip.Addr{}, "", fmt.Sprintf("no pool with %s addresses selects the Service", family)
	}
	return netip.Addr{}, "", fmt.Sprintf("no free %s address in the pools that select the Service", family)
}

func poolContains(p *config.Pool, addr netip.Addr) bool {
	for _, b := range p.Blocks {
		first, last := b.Allocatable()
		if addr.BitLen() == first.BitLen() && first.Compare(addr) <= 0 && addr.Compare(last) <= 0 {
			return true
		}
	}
	return false
}
