package kubernetes

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/xdplb/xdplb/config"
)

// offers records what a source offers.
type offers struct {
	mu   sync.Mutex
	last []config.Service
	n    int
}

func (o *offers) update(s []config.Service) {
	o.mu.Lock()
	o.last, o.n = s, o.n+1
	o.mu.Unlock()
}

func (o *offers) get() ([]config.Service, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last, o.n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(`
interfaces: [{name: eth0}]
maglev: {seed: AAAAAAAAAAAAAAAAAAAAAA==}
pools:
  - name: k8s
    blocks: [{cidr: 198.18.20.0/29}]
kubernetes: {kubeconfig: /dev/null, leaseNamespace: default}
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestSourceFake runs the source against a fake clientset: it leads, writes
// the lowest pool address into the Service's status (ipMode VIP, with the
// condition), and offers the port with the ready endpoints; a Service of
// another class is left alone.
func TestSourceFake(t *testing.T) {
	svc := lbService("web", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	other := lbService("other", corev1.ServicePort{Port: 80})
	other.Spec.LoadBalancerClass = ptr("example.com/other")
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(80)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{endpoint("198.18.0.11", ptr(true), nil, nil)},
	}
	client := fake.NewClientset(svc, other, es)
	src, err := New(testConfig(t), Options{Client: client, Identity: "a", LeaseDuration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var o offers
	go func() { done <- src.Run(ctx, o.update) }()
	defer func() {
		cancel()
		<-done
	}()
	waitFor(t, "an offer with the service", func() bool {
		s, _ := o.get()
		return len(s) == 1
	})
	got, _ := o.get()
	if s := got[0]; s.Name != "default/web:80" || s.Addr != netip.MustParseAddr("198.18.20.1") || len(s.Backends) != 1 {
		t.Errorf("offered %+v", s)
	}
	if !src.Leader() || !src.Synced() {
		t.Errorf("leader %v, synced %v", src.Leader(), src.Synced())
	}
	st, err := client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in := st.Status.LoadBalancer.Ingress
	if len(in) != 1 || in[0].IP != "198.18.20.1" || in[0].IPMode == nil || *in[0].IPMode != corev1.LoadBalancerIPModeVIP {
		t.Errorf("status ingress %+v", in)
	}
	if len(st.Status.Conditions) != 1 || st.Status.Conditions[0].Type != ConditionAllocated || st.Status.Conditions[0].Status != metav1.ConditionTrue {
		t.Errorf("conditions %+v", st.Status.Conditions)
	}
	ot, _ := client.CoreV1().Services("default").Get(ctx, "other", metav1.GetOptions{})
	if len(ot.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("a Service of another class got %v", ot.Status.LoadBalancer.Ingress)
	}
}

// TestSettingsOfSNAT: the SNAT source check is reported like a bad
// annotation, as an Event from the leader: a dsr Service annotated snat
// without a source of its family keeps dsr; with the source it is snat; a
// reload that takes the source away leaves it with nothing good to keep.
func TestSettingsOfSNAT(t *testing.T) {
	parse := func(snat string) *config.Config {
		cfg, err := config.Parse("test.yaml", []byte(`
interfaces: [{name: eth0}]
maglev: {seed: AAAAAAAAAAAAAAAAAAAAAA==}
pools: [{name: k8s, blocks: [{cidr: 198.18.20.0/29}]}]
kubernetes: {kubeconfig: /dev/null, leaseNamespace: default}
`+snat))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	without, with := parse(""), parse(`snat: {sources: ["2001:db8::1", 198.18.0.1]}`)
	src, err := New(without, Options{Client: fake.NewClientset(), Identity: "a"})
	if err != nil {
		t.Fatal(err)
	}
	src.leader.Store(true)
	rec := record.NewFakeRecorder(10)
	svc := lbService("nat", corev1.ServicePort{Port: 80})
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.18.20.1"}}
	event := func() string {
		select {
		case e := <-rec.Events:
			return e
		default:
			return ""
		}
	}
	if st, ok := src.settingsOf(svc, without, rec); !ok || st.Mode != config.ModeDSR {
		t.Fatalf("dsr: %+v, %v", st, ok)
	}
	svc.Annotations = map[string]string{AnnotationMode: "snat"}
	if st, ok := src.settingsOf(svc, without, rec); !ok || st.Mode != config.ModeDSR || st.Encap != config.EncapNone {
		t.Errorf("snat without a source: %+v, %v; want the last good settings (dsr)", st, ok)
	}
	if got, want := event(), `Warning InvalidAnnotation annotation xdplb.io/mode: "snat" needs an IPv4 address under snat.sources for 198.18.20.1; the Service keeps its last good settings`; got != want {
		t.Errorf("event %q\nwant  %q", got, want)
	}
	if st, ok := src.settingsOf(svc, without, rec); !ok || event() != "" {
		t.Errorf("the same problem again: %+v, %v; want it reported once", st, ok)
	}
	if st, ok := src.settingsOf(svc, with, rec); !ok || st.Mode != config.ModeSNAT || st.Encap != "" {
		t.Errorf("snat with a source: %+v, %v", st, ok)
	}
	if st, ok := src.settingsOf(svc, without, rec); ok {
		t.Errorf("after a reload without the source: %+v, want no settings to serve with", st)
	}
	if got, want := event(), `Warning InvalidAnnotation annotation xdplb.io/mode: "snat" needs an IPv4 address under snat.sources for 198.18.20.1; the Service is not served`; got != want {
		t.Errorf("event after a reload without the source %q\nwant  %q", got, want)
	}
}
