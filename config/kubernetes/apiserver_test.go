package kubernetes

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/internal/kubetest"
	"github.com/xdplb/xdplb/internal/testnet"
)

// rbac is the manifest of docs/kubernetes.md, which these tests run under.
func rbac(t *testing.T) string {
	b, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "<!-- rbac:begin -->"), strings.Index(s, "<!-- rbac:end -->")
	if i < 0 || j < i {
		t.Fatal("no rbac block in docs/kubernetes.md")
	}
	s = strings.TrimSpace(s[i+len("<!-- rbac:begin -->") : j])
	return strings.TrimSuffix(strings.TrimPrefix(s, "```yaml"), "```")
}

// apiServer starts the API server with the user xdplb bound by the
// documented RBAC and returns the admin's and xdplb's clients.
func apiServer(t *testing.T) (admin, user kubernetes.Interface) {
	testnet.RequirePrivileged(t) // the binary cache is root's
	env := kubetest.NewTest(t, kubetest.Options{Users: []string{"xdplb"}})
	if err := env.ApplyRBAC(context.Background(), rbac(t)); err != nil {
		t.Fatal(err)
	}
	return env.Client(kubetest.AdminUser), env.Client("xdplb")
}

func ipamConfig(t *testing.T) *config.Config {
	cfg, err := config.Parse("test.yaml", []byte(`
interfaces: [{name: eth0}]
maglev: {seed: AAAAAAAAAAAAAAAAAAAAAA==}
pools:
  - name: edge
    blocks: [{cidr: 198.18.20.0/29}]
    serviceSelector: {matchLabels: {tier: edge}}
kubernetes: {kubeconfig: /dev/null, leaseNamespace: default}
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runSource runs a source with the user's client until the test ends (or
// stop is called).
func runSource(t *testing.T, client kubernetes.Interface, id string) (*Source, *offers, func()) {
	return runSourceWith(t, client, id, ipamConfig(t))
}

// runSourceWith is runSource with a configuration of the test's own.
func runSourceWith(t *testing.T, client kubernetes.Interface, id string, cfg *config.Config) (*Source, *offers, func()) {
	src, err := New(cfg, Options{Client: client, Identity: id, LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var o offers
	go func() { done <- src.Run(ctx, o.update) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	waitFor(t, "the source to lead", src.Leader)
	return src, &o, stop
}

func newLB(name string, labels map[string]string, ann map[string]string, ports ...int32) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels, Annotations: ann},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr(config.DefaultLoadBalancerClass)},
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: fmt.Sprint("p", p), Port: p, Protocol: corev1.ProtocolTCP})
	}
	return svc
}

func ingressOf(t *testing.T, c kubernetes.Interface, name string) []string {
	svc, err := c.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		out = append(out, in.IP)
	}
	return out
}

func eventsOf(t *testing.T, c kubernetes.Interface, name string) []string {
	list, err := c.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return out
}

func hasPrefix(list []string, prefix string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

// TestSourceIPAM runs the source as the documented RBAC's user against a
// real API server: addresses from the pool whose selector matches, lowest
// first; sharing by key with ports apart; a Service no pool selects gets the
// condition False and an Event; leaving the class frees the address; a new
// instance (a restart) keeps every address.
func TestSourceIPAM(t *testing.T) {
	admin, user := apiServer(t)
	ctx := context.Background()
	_, o, stop := runSource(t, user, "first")
	svcs := admin.CoreV1().Services("default")
	for _, s := range []*corev1.Service{
		newLB("a", map[string]string{"tier": "edge"}, nil, 80),
		newLB("b", map[string]string{"tier": "edge"}, map[string]string{AnnotationSharingKey: "k"}, 80),
		newLB("c", map[string]string{"tier": "edge"}, map[string]string{AnnotationSharingKey: "k"}, 443),
		newLB("d", map[string]string{"tier": "core"}, nil, 80),
	} {
		if _, err := svcs.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // creation times a second apart: a is oldest
	}
	want := map[string][]string{"a": {"198.18.20.1"}, "b": {"198.18.20.2"}, "c": {"198.18.20.2"}, "d": nil}
	check := func(what string) {
		t.Helper()
		waitFor(t, what, func() bool {
			for name, w := range want {
				if !slices.Equal(ingressOf(t, admin, name), w) {
					return false
				}
			}
			return true
		})
	}
	check("addresses of a, b, c (shared with b)")
	waitFor(t, "d's condition and event", func() bool {
		s, _ := svcs.Get(ctx, "d", metav1.GetOptions{})
		ok := len(s.Status.Conditions) == 1 && s.Status.Conditions[0].Reason == "NoAddress" &&
			s.Status.Conditions[0].Message == "no pool with IPv4 addresses selects the Service"
		return ok && hasPrefix(eventsOf(t, admin, "d"), "NoAddress: no pool with IPv4 addresses selects the Service")
	})
	waitFor(t, "an offer of a, b, c", func() bool {
		got, _ := o.get()
		var names []string
		for _, s := range got {
			names = append(names, s.Name+" "+s.Addr.String())
		}
		return slices.Equal(names, []string{"default/a:80 198.18.20.1", "default/b:80 198.18.20.2", "default/c:443 198.18.20.2"})
	})

	// A restart: a new instance keeps every address from the status. a is
	// deleted meanwhile: its address is free again.
	stop()
	if err := svcs.Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	delete(want, "a")
	runSource(t, user, "second")
	check("addresses after a restart")
	e := newLB("e", map[string]string{"tier": "edge"}, nil, 80)
	if _, err := svcs.Create(ctx, e, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want["e"] = []string{"198.18.20.1"} // a's, freed
	check("the freed address given to e")

	// Leaving the class frees the address and clears the status.
	s, _ := svcs.Get(ctx, "b", metav1.GetOptions{})
	s.Spec.Type = corev1.ServiceTypeClusterIP
	s.Spec.LoadBalancerClass = nil
	s.Spec.Ports[0].NodePort = 0
	if _, err := svcs.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want["b"] = nil
	check("b's status cleared")
	f := newLB("f", map[string]string{"tier": "edge"}, map[string]string{AnnotationIPs: "198.18.20.2"}, 80)
	if _, err := svcs.Create(ctx, f, metav1.CreateOptions{}); err != nil { // c's address, and no sharing key
		t.Fatal(err)
	}
	waitFor(t, "f's request refused", func() bool {
		return hasPrefix(eventsOf(t, admin, "f"), "NoAddress: requested address 198.18.20.2 is in use by default/c")
	})
}

// TestSourceBadAnnotation: a bad annotation is an Event, and the Service
// keeps its last good settings.
func TestSourceBadAnnotation(t *testing.T) {
	admin, user := apiServer(t)
	ctx := context.Background()
	_, o, _ := runSource(t, user, "only")
	svcs := admin.CoreV1().Services("default")
	if _, err := svcs.Create(ctx, newLB("web", map[string]string{"tier": "edge"}, map[string]string{AnnotationTableSize: "251"}, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tableSize := func() int {
		got, _ := o.get()
		if len(got) != 1 {
			return 0
		}
		return got[0].TableSize
	}
	waitFor(t, "web offered with table size 251", func() bool { return tableSize() == 251 })
	s, _ := svcs.Get(ctx, "web", metav1.GetOptions{})
	s.Annotations[AnnotationTableSize] = "250"
	s.Annotations[AnnotationEncap] = "ipip"
	if _, err := svcs.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the InvalidAnnotation event", func() bool {
		return hasPrefix(eventsOf(t, admin, "web"), `InvalidAnnotation: annotation xdplb.io/table-size: "250" is not a prime`)
	})
	got, _ := o.get()
	if len(got) != 1 || got[0].TableSize != 251 || got[0].Encap != config.EncapNone {
		t.Errorf("after a bad annotation: %+v, want the last good settings (251, no encap)", got)
	}
	s, _ = svcs.Get(ctx, "web", metav1.GetOptions{})
	s.Annotations[AnnotationTableSize] = "257"
	if _, err := svcs.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fixed annotation applied", func() bool {
		got, _ := o.get()
		return len(got) == 1 && got[0].TableSize == 257 && got[0].Encap == config.EncapIPIP
	})
}

// TestSourceLeaderHandover: two sources, one leads; when it stops it
// releases the Lease and the other leads and allocates.
func TestSourceLeaderHandover(t *testing.T) {
	admin, user := apiServer(t)
	ctx := context.Background()
	a, oa, stopA := runSource(t, user, "a")
	b, err := New(ipamConfig(t), Options{Client: user, Identity: "b", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var ob offers
	go func() { done <- b.Run(bctx, ob.update) }()
	defer func() { cancel(); <-done }()
	svcs := admin.CoreV1().Services("default")
	if _, err := svcs.Create(ctx, newLB("x", map[string]string{"tier": "edge"}, nil, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both offer x", func() bool {
		ga, _ := oa.get()
		gb, _ := ob.get()
		return len(ga) == 1 && len(gb) == 1
	})
	ga, _ := oa.get()
	gb, _ := ob.get()
	if fmt.Sprint(ga) != fmt.Sprint(gb) {
		t.Errorf("the two offer differently:\n%v\n%v", ga, gb)
	}
	if !a.Leader() || b.Leader() || !b.Synced() {
		t.Errorf("a leads %v, b leads %v, b synced %v", a.Leader(), b.Leader(), b.Synced())
	}
	stopA()
	waitFor(t, "b leads", b.Leader)
	if _, err := svcs.Create(ctx, newLB("y", map[string]string{"tier": "edge"}, nil, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b allocates for y", func() bool { return slices.Equal(ingressOf(t, admin, "y"), []string{"198.18.20.2"}) })
}

// TestSourceDualStack: a RequireDualStack Service gets an address of each
// family, both in its status, and is offered on both (the IPv6 one named
// …/v6), with the endpoints of each family.
func TestSourceDualStack(t *testing.T) {
	admin, user := apiServer(t)
	ctx := context.Background()
	cfg, err := config.Parse("test.yaml", []byte(`
interfaces: [{name: eth0}]
maglev: {seed: AAAAAAAAAAAAAAAAAAAAAA==}
pools:
  - name: both
    blocks: [{cidr: 198.18.20.0/29}, {cidr: 2001:db8:20::/125}]
kubernetes: {kubeconfig: /dev/null, leaseNamespace: default}
`))
	if err != nil {
		t.Fatal(err)
	}
	src, err := New(cfg, Options{Client: user, Identity: "ds", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var o offers
	go func() { done <- src.Run(rctx, o.update) }()
	defer func() { cancel(); <-done }()
	svc := newLB("ds", nil, nil, 80)
	svc.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	if _, err := admin.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createDualStackSlices(ctx, t, admin, "ds", 80)
	waitFor(t, "both families in the status", func() bool {
		return slices.Equal(ingressOf(t, admin, "ds"), []string{"2001:db8:20::1", "198.18.20.1"})
	})
	waitFor(t, "both families offered", func() bool {
		got, _ := o.get()
		var names []string
		for _, s := range got {
			if len(s.Backends) == 1 {
				names = append(names, s.Name+" "+s.Addr.String()+" "+s.Backends[0].Addr.String())
			}
		}
		return slices.Equal(names, []string{"default/ds:80 198.18.20.1 198.18.0.11", "default/ds:80/v6 2001:db8:20::1 2001:db8::11"})
	})
}

// TestSourceSNAT: a Service annotated xdplb.io/mode: snat is offered as a
// snat service, with no encap and the endpoints of its address's family on
// their own port; a snat Service of a family without a SNAT source, or with
// xdplb.io/encap, gets an InvalidAnnotation Event and is not served; a
// reload that takes the source away stops serving the first one too.
func TestSourceSNAT(t *testing.T) {
	admin, user := apiServer(t)
	ctx := context.Background()
	parse := func(snat string) *config.Config {
		cfg, err := config.Parse("test.yaml", []byte(`
interfaces: [{name: eth0}]
maglev: {seed: AAAAAAAAAAAAAAAAAAAAAA==}
pools:
  - name: both
    blocks: [{cidr: 198.18.20.0/29}, {cidr: 2001:db8:20::/125}]
kubernetes: {kubeconfig: /dev/null, leaseNamespace: default}
`+snat))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	src, o, _ := runSourceWith(t, user, "nat", parse("snat: {sources: [198.18.0.1]}\n"))
	svcs := admin.CoreV1().Services("default")
	snat := map[string]string{AnnotationMode: "snat"}
	if _, err := svcs.Create(ctx, newLB("nat", nil, snat, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createDualStackSlices(ctx, t, admin, "nat", 8080)
	offered := func() []string {
		got, _ := o.get()
		var out []string
		for _, s := range got {
			line := fmt.Sprintf("%s %s mode %s encap %q", s.Name, s.Addr, s.Mode, s.Encap)
			for _, b := range s.Backends {
				line += fmt.Sprintf(" %s weight %d", netip.AddrPortFrom(b.Addr, b.Port), b.Weight)
			}
			out = append(out, line)
		}
		return out
	}
	want := []string{`default/nat:80 198.18.20.1 mode snat encap "" 198.18.0.11:8080 weight 1`}
	waitFor(t, "nat offered as snat", func() bool { return slices.Equal(offered(), want) })

	// No IPv6 source: the Service asking for an IPv6 address is refused,
	// and so is encap beside snat.
	nat6 := newLB("nat6", nil, map[string]string{AnnotationMode: "snat", AnnotationIPs: "2001:db8:20::3"}, 80)
	nat6.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicySingleStack)
	nat6.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	encap := newLB("encap", nil, map[string]string{AnnotationMode: "snat", AnnotationEncap: "ipip"}, 80)
	for _, s := range []*corev1.Service{nat6, encap} {
		if _, err := svcs.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, event := range map[string]string{
		"nat6":  `InvalidAnnotation: annotation xdplb.io/mode: "snat" needs an IPv6 address under snat.sources for 2001:db8:20::3; the Service is not served`,
		"encap": `InvalidAnnotation: annotation xdplb.io/encap: "ipip" applies to mode dsr only, and xdplb.io/mode is "snat"; the Service is not served`,
	} {
		waitFor(t, name+"'s event", func() bool { return slices.Contains(eventsOf(t, admin, name), event) })
	}
	if got := offered(); !slices.Equal(got, want) {
		t.Errorf("offered %q, want %q", got, want)
	}
	for _, name := range []string{"nat6", "encap"} {
		if got := ingressOf(t, admin, name); len(got) != 0 {
			t.Errorf("%s, which is not served, has the addresses %v", name, got)
		}
	}

	// A reload without the source.
	src.ConfigChanged(parse(""))
	waitFor(t, "nat's event after the reload", func() bool {
		return slices.Contains(eventsOf(t, admin, "nat"), `InvalidAnnotation: annotation xdplb.io/mode: "snat" needs an IPv4 address under snat.sources for 198.18.20.1; the Service is not served`)
	})
	waitFor(t, "nat no longer offered", func() bool { return len(offered()) == 0 })
}

// createDualStackSlices gives Service svc one EndpointSlice per family,
// svc-4 with 198.18.0.11 and svc-6 with 2001:db8::11, each serving port
// "p80" on port.
func createDualStackSlices(ctx context.Context, t *testing.T, admin kubernetes.Interface, svc string, port int32) {
	t.Helper()
	for _, fam := range []struct {
		suffix string
		typ    discoveryv1.AddressType
		addr   string
	}{{"-4", discoveryv1.AddressTypeIPv4, "198.18.0.11"}, {"-6", discoveryv1.AddressTypeIPv6, "2001:db8::11"}} {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + fam.suffix, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: fam.typ,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("p80"), Port: ptr(port), Protocol: ptr(corev1.ProtocolTCP)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{fam.addr}}},
		}
		if _, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
