package kubernetes

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdplb/xdplb/config"
)

func ptr[T any](v T) *T { return &v }

func lbService(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr(config.DefaultLoadBalancerClass),
			Ports: ports, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}},
	}
}

func endpoint(addr string, ready, serving, terminating *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}}
}

// TestMapService: one service per port, named namespace/name:port; ready
// endpoints serve, serving and terminating ones drain, the rest are no
// backends; the slice's port of the same name is the backend's port.
func TestMapService(t *testing.T) {
	svc := lbService("web", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1"},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
		},
		Endpoints: []discoveryv1.Endpoint{
			endpoint("198.18.0.11", ptr(true), ptr(true), ptr(false)),
			endpoint("198.18.0.12", ptr(false), ptr(true), ptr(true)),  // terminating: drains
			endpoint("198.18.0.13", ptr(false), ptr(false), ptr(true)), // gone
			endpoint("198.18.0.14", nil, nil, nil),                     // unknown: ready
			endpoint("198.18.0.15", ptr(false), ptr(false), nil),       // not ready
		},
	}
	v6 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv6, Ports: es.Ports,
		Endpoints: []discoveryv1.Endpoint{endpoint("2001:db8::11", nil, nil, nil)}}
	st, err := parseSettings(nil, config.DefaultTableSize)
	if err != nil {
		t.Fatal(err)
	}
	k := &config.Kubernetes{Backends: config.BackendsPods}
	got := mapService(svc, []netip.Addr{netip.MustParseAddr("198.18.100.10")}, st, []*discoveryv1.EndpointSlice{es, v6}, nil, k)
	be := func(a string, port uint16, w uint32) config.Backend {
		return config.Backend{Addr: netip.MustParseAddr(a), Port: port, Weight: w}
	}
	want := []config.Service{
		{Name: "default/web:80", Addr: netip.MustParseAddr("198.18.100.10"), Protocol: config.ProtocolTCP, Ports: []uint16{80},
			Backends: []config.Backend{be("198.18.0.11", 8080, 1), be("198.18.0.12", 8080, 0), be("198.18.0.14", 8080, 1)}},
		{Name: "default/web:53/udp", Addr: netip.MustParseAddr("198.18.100.10"), Protocol: config.ProtocolUDP, Ports: []uint16{53},
			Backends: []config.Backend{be("198.18.0.11", 5353, 1), be("198.18.0.12", 5353, 0), be("198.18.0.14", 5353, 1)}},
	}
	for i := range want {
		want[i].Mode, want[i].Encap, want[i].TableSize, want[i].MinHealthyBackends, want[i].Announce, want[i].HealthCheck =
			config.ModeDSR, config.EncapNone, config.DefaultTableSize, 1, true, st.HealthCheck
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("mapService (-want +got):\n%s", diff)
	}
	if n := ServiceName("ns", "a", 443, corev1.ProtocolTCP, netip.MustParseAddr("2001:db8:100::1")); n != "ns/a:443/v6" {
		t.Errorf("IPv6 name %q", n)
	}
}

// TestNodeBackends: backends: nodes forwards to ready nodes on the NodePort;
// externalTrafficPolicy Local keeps only nodes with a ready endpoint.
func TestNodeBackends(t *testing.T) {
	node := func(name, addr string, ready bool) *corev1.Node {
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}}}
	}
	nodes := []*corev1.Node{node("n1", "198.18.0.11", true), node("n2", "198.18.0.12", true), node("n3", "198.18.0.13", false)}
	es := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"198.19.5.5"}, NodeName: ptr("n2")}}}
	p := corev1.ServicePort{Port: 80, NodePort: 30080}
	svc := lbService("web", p)
	vip := netip.MustParseAddr("198.18.100.10")
	addrs := func(bs []config.Backend) []string {
		var out []string
		for _, b := range bs {
			out = append(out, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		return out
	}
	if got, want := addrs(nodeBackends(svc, p, vip, []*discoveryv1.EndpointSlice{es}, nodes)), []string{"198.18.0.11:30080", "198.18.0.12:30080"}; !cmp.Equal(got, want) {
		t.Errorf("cluster policy: %v, want %v", got, want)
	}
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if got, want := addrs(nodeBackends(svc, p, vip, []*discoveryv1.EndpointSlice{es}, nodes)), []string{"198.18.0.12:30080"}; !cmp.Equal(got, want) {
		t.Errorf("local policy: %v, want %v", got, want)
	}
}

func TestParseSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		wantErr string
		check   func(settings) bool
	}{
		{name: "defaults", check: func(s settings) bool {
			return s.Mode == config.ModeDSR && s.Encap == config.EncapNone && s.TableSize == 16381
		}},
		{name: "all", ann: map[string]string{AnnotationEncap: "ipip", AnnotationTableSize: "251", AnnotationHealthCheck: "{type: http, path: /healthz}", AnnotationIPs: "198.18.100.3, 2001:db8:100::3", AnnotationSharingKey: "k"},
			check: func(s settings) bool {
				return s.Encap == config.EncapIPIP && s.TableSize == 251 && s.HealthCheck.Type == config.HealthCheckHTTP && s.HealthCheck.Path == "/healthz" && len(s.IPs) == 2 && s.SharingKey == "k"
			}},
		{name: "bad table size", ann: map[string]string{AnnotationTableSize: "1000"}, wantErr: `annotation xdplb.io/table-size: "1000" is not a prime between 251 and 131071`},
		{name: "bad encap", ann: map[string]string{AnnotationEncap: "gre"}, wantErr: `annotation xdplb.io/encap: "gre" is not one of none, ipip`},
		{name: "snat", ann: map[string]string{AnnotationMode: "snat"}, check: func(s settings) bool {
			return s.Mode == config.ModeSNAT && s.Encap == ""
		}},
		{name: "dsr", ann: map[string]string{AnnotationMode: "dsr", AnnotationEncap: "none"}, check: func(s settings) bool {
			return s.Mode == config.ModeDSR && s.Encap == config.EncapNone
		}},
		{name: "bad mode", ann: map[string]string{AnnotationMode: "nat"}, wantErr: `annotation xdplb.io/mode: "nat" is not one of dsr, snat`},
		{name: "snat with encap", ann: map[string]string{AnnotationMode: "snat", AnnotationEncap: "none"}, wantErr: `annotation xdplb.io/encap: "none" applies to mode dsr only, and xdplb.io/mode is "snat"`},
		{name: "snat with a bad encap", ann: map[string]string{AnnotationMode: "snat", AnnotationEncap: "gre", AnnotationTableSize: "1"},
			wantErr: `annotation xdplb.io/encap: "gre" applies to mode dsr only, and xdplb.io/mode is "snat"; annotation xdplb.io/table-size: "1" is not a prime between 251 and 131071`},
		{name: "bad check", ann: map[string]string{AnnotationHealthCheck: "{type: http, pth: /}"}, wantErr: `annotation xdplb.io/health-check: "{type: http, pth: /}" is not a health check: healthCheck.pth: unknown key; did you mean path? (line 1, column 14)`},
		{name: "unknown", ann: map[string]string{"xdplb.io/modes": "dsr"}, wantErr: `annotation xdplb.io/modes: "dsr" is not an xdplb annotation (known: xdplb.io/mode, xdplb.io/encap, xdplb.io/table-size, xdplb.io/health-check, xdplb.io/ips, xdplb.io/sharing-key)`},
		{name: "other prefixes are not ours", ann: map[string]string{"example.com/x": "y"}, check: func(s settings) bool { return true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseSettings(tc.ann, 16381)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("error %v\nwant   %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(s) {
				t.Errorf("settings %+v, %v", s, err)
			}
		})
	}
}

// TestCheckSNAT: a snat Service needs a SNAT source of the family of each
// address it has or asks for, and of each family of spec.ipFamilies it has
// no address of yet; the error names the address when there is one.
func TestCheckSNAT(t *testing.T) {
	v4, v6 := corev1.IPv4Protocol, corev1.IPv6Protocol
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	snat := settings{Mode: config.ModeSNAT}
	for _, tc := range []struct {
		name     string
		st       settings
		addrs    []netip.Addr
		families []corev1.IPFamily
		sources  []netip.Addr
		wantErr  string
	}{
		{name: "dsr needs none", st: settings{Mode: config.ModeDSR}, addrs: addrs("198.18.20.1"), families: []corev1.IPFamily{v4}},
		{name: "source of the family", st: snat, addrs: addrs("198.18.20.1"), families: []corev1.IPFamily{v4}, sources: addrs("2001:db8::1", "198.18.0.1")},
		{name: "no IPv4 source", st: snat, addrs: addrs("198.18.20.1"), families: []corev1.IPFamily{v4}, sources: addrs("2001:db8::1"),
			wantErr: `annotation xdplb.io/mode: "snat" needs an IPv4 address under snat.sources for 198.18.20.1`},
		{name: "no address yet", st: snat, families: []corev1.IPFamily{v6}, sources: addrs("198.18.0.1"),
			wantErr: `annotation xdplb.io/mode: "snat" needs an IPv6 address under snat.sources for the IPv6 address spec.ipFamilies asks for`},
		{name: "an asked-for address", st: snat, addrs: addrs("198.18.20.1", "2001:db8:20::3"), families: []corev1.IPFamily{v4, v6}, sources: addrs("198.18.0.1"),
			wantErr: `annotation xdplb.io/mode: "snat" needs an IPv6 address under snat.sources for 2001:db8:20::3`},
		{name: "no source at all, once per family", st: snat, addrs: addrs("198.18.20.1", "198.18.20.2"), families: []corev1.IPFamily{v6, v4},
			wantErr: `annotation xdplb.io/mode: "snat" needs an IPv4 address under snat.sources for 198.18.20.1; annotation xdplb.io/mode: "snat" needs an IPv6 address under snat.sources for the IPv6 address spec.ipFamilies asks for`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkSNAT(tc.st, tc.addrs, tc.families, config.SNAT{Sources: tc.sources})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.wantErr {
				t.Errorf("error %q\nwant  %q", got, tc.wantErr)
			}
		})
	}
}

// TestMapServiceSNAT: a snat Service maps to snat services with no encap,
// whose backends are the endpoints of the VIP's family only, on the port
// the slice gives (snat sends the flows to it).
func TestMapServiceSNAT(t *testing.T) {
	svc := lbService("nat", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	ports := []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}}
	eps := []*discoveryv1.EndpointSlice{
		{AddressType: discoveryv1.AddressTypeIPv4, Ports: ports, Endpoints: []discoveryv1.Endpoint{
			endpoint("198.18.0.11", nil, nil, nil),
			endpoint("2001:db8::99", nil, nil, nil), // in an IPv4 slice: not a backend of either VIP
		}},
		{AddressType: discoveryv1.AddressTypeIPv6, Ports: ports, Endpoints: []discoveryv1.Endpoint{
			endpoint("2001:db8::11", nil, nil, nil),
			endpoint("198.18.0.99", nil, nil, nil),
		}},
	}
	st, err := parseSettings(map[string]string{AnnotationMode: "snat"}, config.DefaultTableSize)
	if err != nil {
		t.Fatal(err)
	}
	got := mapService(svc, []netip.Addr{netip.MustParseAddr("198.18.100.10"), netip.MustParseAddr("2001:db8:100::10")}, st, eps, nil, &config.Kubernetes{Backends: config.BackendsPods})
	want := []config.Service{
		{Name: "default/nat:80", Addr: netip.MustParseAddr("198.18.100.10"),
			Backends: []config.Backend{{Addr: netip.MustParseAddr("198.18.0.11"), Port: 8080, Weight: 1}}},
		{Name: "default/nat:80/v6", Addr: netip.MustParseAddr("2001:db8:100::10"),
			Backends: []config.Backend{{Addr: netip.MustParseAddr("2001:db8::11"), Port: 8080, Weight: 1}}},
	}
	for i := range want {
		want[i].Protocol, want[i].Ports, want[i].Mode, want[i].TableSize, want[i].MinHealthyBackends, want[i].Announce, want[i].HealthCheck =
			config.ProtocolTCP, []uint16{80}, config.ModeSNAT, config.DefaultTableSize, 1, true, st.HealthCheck
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("mapService (-want +got):\n%s", diff)
	}
}
