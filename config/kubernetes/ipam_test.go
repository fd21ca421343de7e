package kubernetes

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/xdplb/xdplb/config"
)

func mustAddrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestAllocate(t *testing.T) {
	edge := &config.Selector{MatchLabels: map[string]string{"tier": "edge"}}
	pools := []config.Pool{
		{Name: "edge", ServiceSelector: edge, Blocks: []config.Block{{CIDR: netip.MustParsePrefix("198.18.20.0/30"), Start: netip.MustParseAddr("198.18.20.0"), Stop: netip.MustParseAddr("198.18.20.3")}}},
		{Name: "any", Blocks: []config.Block{
			{Start: netip.MustParseAddr("198.18.30.1"), Stop: netip.MustParseAddr("198.18.30.2")},
			{Start: netip.MustParseAddr("2001:db8:30::1"), Stop: netip.MustParseAddr("2001:db8:30::1")},
		}},
	}
	v4 := []corev1.IPFamily{corev1.IPv4Protocol}
	http := []portKey{{80, corev1.ProtocolTCP}}
	for _, tc := range []struct {
		name string
		reqs []request
		want map[string]allocation
	}{
		{
			name: "lowest free, by selector, oldest first",
			reqs: []request{
				{key: "a/x", created: 2, families: v4, labels: map[string]string{"tier": "edge"}},
				{key: "a/y", created: 1, families: v4, labels: map[string]string{"tier": "edge"}},
				{key: "a/z", created: 3, families: v4},
			},
			want: map[string]allocation{
				"a/y": {addrs: mustAddrs("198.18.20.1"), pools: []string{"edge"}},
				"a/x": {addrs: mustAddrs("198.18.20.2"), pools: []string{"edge"}},
				"a/z": {addrs: mustAddrs("198.18.30.1"), pools: []string{"any"}},
			},
		},
		{
			name: "current kept, requested taken, dual stack",
			reqs: []request{
				{key: "a/x", families: v4, current: mustAddrs("198.18.30.2")},
				{key: "a/y", families: v4, want: mustAddrs("198.18.30.1")},
				{key: "a/z", families: []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}},
			},
			want: map[string]allocation{
				"a/x": {addrs: mustAddrs("198.18.30.2"), pools: []string{"any"}},
				"a/y": {addrs: mustAddrs("198.18.30.1"), pools: []string{"any"}},
				"a/z": {addrs: mustAddrs("2001:db8:30::1"), pools: []string{"any"}, problem: "no free IPv4 address in the pools that select the Service"},
			},
		},
		{
			name: "sharing key, ports apart; a clash gets its own",
			reqs: []request{
				{key: "a/x", created: 1, families: v4, sharingKey: "k", ports: http},
				{key: "a/y", created: 2, families: v4, sharingKey: "k", ports: []portKey{{443, corev1.ProtocolTCP}}},
				{key: "a/z", created: 3, families: v4, sharingKey: "k", ports: http},
				{key: "a/w", created: 4, families: v4, want: mustAddrs("198.18.30.1")},
			},
			want: map[string]allocation{
				"a/x": {addrs: mustAddrs("198.18.30.1"), pools: []string{"any"}},
				"a/y": {addrs: mustAddrs("198.18.30.1"), pools: []string{"any"}},
				"a/z": {addrs: mustAddrs("198.18.30.2"), pools: []string{"any"}},
				"a/w": {problem: "requested address 198.18.30.1 is in use by a/x"},
			},
		},
		{
			name: "no pool for the family; a request outside the pools",
			reqs: []request{
				{key: "a/x", families: []corev1.IPFamily{corev1.IPv6Protocol}, labels: map[string]string{"tier": "edge"}, want: mustAddrs("2001:db8:99::1")},
				{key: "a/y", families: v4, want: mustAddrs("198.18.20.1")},
			},
			want: map[string]allocation{
				"a/x": {problem: "requested address 2001:db8:99::1 is in no pool that selects the Service"},
				"a/y": {problem: "requested address 198.18.20.1 is in no pool that selects the Service"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := allocate(pools, tc.reqs)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(allocation{}), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("allocate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoolsFor(t *testing.T) {
	cfg := &config.Config{Pools: []config.Pool{{Name: "file"}, {Name: "k8s"}}, ServiceSpecs: []config.ServiceSpec{{Name: "s", Pool: "file"}}}
	if got := poolsFor(cfg); len(got) != 1 || got[0].Name != "k8s" {
		t.Errorf("poolsFor = %v, want only k8s: the file's services name the other", got)
	}
}
