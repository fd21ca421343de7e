package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	k8ssource "github.com/xdplb/xdplb/config/kubernetes"
	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/kubetest"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// The pool of the Kubernetes tests, inside the VIPs the client routes via
// the load balancer: the first address handed out is .17.
const k8sPool = "198.18.100.16/29"

var k8sVIP = netip.MustParseAddr("198.18.100.17")

// rbacManifest is the RBAC manifest of docs/kubernetes.md: the tests run the
// appliances as the user it binds, so the document's verbs are the ones
// proven enough.
func rbacManifest(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "<!-- rbac:begin -->"), strings.Index(s, "<!-- rbac:end -->")
	if i < 0 || j < i {
		t.Fatal("docs/kubernetes.md has no rbac:begin/rbac:end block")
	}
	s = s[i+len("<!-- rbac:begin -->") : j]
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "```yaml")
	s = strings.TrimSuffix(s, "```")
	return s
}

// k8sEnv is a topology with the API server on the last backend host (on the
// LAN, so that appliances in other namespaces reach it) and a user xdplb
// with the documented RBAC.
type k8sEnv struct {
	topo   *testnet.Topology
	api    *kubetest.Env
	admin  kubernetes.Interface
	apiHst *testnet.Host
	bin    string
}

func newK8sEnv(t *testing.T, backends int) *k8sEnv {
	t.Helper()
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: backends + 1})
	h := topo.Backends[backends]
	api := kubetest.NewTest(t, kubetest.Options{NetNS: h.NS.Path(), Address: h.IPv4, Users: []string{"xdplb"}})
	if err := api.ApplyRBAC(context.Background(), rbacManifest(t)); err != nil {
		t.Fatal(err)
	}
	return &k8sEnv{topo: topo, api: api, admin: api.Client(kubetest.AdminUser), apiHst: h, bin: bin}
}

// k8sAppliance is a daemon with the Kubernetes source.
type k8sAppliance struct {
	*runningDaemon
	host   *testnet.Host
	dir    string
	cfg    string
	bpf    string
	socket string
}

func (e *k8sEnv) startAppliance(t *testing.T, host *testnet.Host) *k8sAppliance {
	t.Helper()
	dir := t.TempDir()
	a := &k8sAppliance{host: host, dir: dir, cfg: filepath.Join(dir, "xdplb.yaml"), socket: filepath.Join(dir, "xdplb.sock"),
		bpf: filepath.Join(testnet.MountBPFFS(t), "xdplb")}
	body := fmt.Sprintf("pools:\n  - name: k8s\n    blocks: [{cidr: %s}]\n    serviceSelector: {matchLabels: {tier: edge}}\nkubernetes:\n  kubeconfig: %s\n  leaseNamespace: default\n",
		k8sPool, e.api.UserKubeconfig("xdplb"))
	writeAtomically(t, a.cfg, applianceYAML(testFiles{Socket: a.socket, State: dir + "/state", BPF: a.bpf, Metrics: "127.0.0.1:9652"},
		"198.18.0.2", "2001:db8::2", body))
	a.runningDaemon = startTestDaemon(t, e.bin, host.NS, a.cfg, a.socket)
	t.Cleanup(func() {
		a.stop(t)
		if out, err := cli(t, e.bin, "detach", "--pin-path", a.bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", host.Name, a.log)
		}
	})
	return a
}

func (a *k8sAppliance) status(t *testing.T) StatusInfo {
	t.Helper()
	var st StatusInfo
	if err := controlplane.Call(context.Background(), a.socket, Request{Command: "status"}, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (a *k8sAppliance) vips(t *testing.T) []VIPInfo {
	t.Helper()
	var vs []VIPInfo
	if err := controlplane.Call(context.Background(), a.socket, Request{Command: "vips"}, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

// k8sSource is the appliance's Kubernetes source in its status.
func (a *k8sAppliance) k8sSource(t *testing.T) SourceInfo {
	for _, s := range a.status(t).Sources {
		if s.Name == k8ssource.Name {
			return s
		}
	}
	t.Fatalf("no %s source in the status", k8ssource.Name)
	return SourceInfo{}
}

// backendsOf are the addresses and weights of service's backends, as
// `xdplb vips` shows them, or nil when the service is not there.
func (a *k8sAppliance) backendsOf(t *testing.T, service string) []string {
	for _, v := range a.vips(t) {
		if v.Service != service {
			continue
		}
		out := []string{}
		for _, b := range v.Backends {
			out = append(out, fmt.Sprintf("%s w%d", b.Address, b.Weight))
		}
		slices.Sort(out)
		return out
	}
	return nil
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func webService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"tier": "edge"}},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptrTo("xdplb.io/lb"),
			Ports:             []corev1.ServicePort{{Name: "http", Port: scenario.Port, Protocol: corev1.ProtocolTCP}},
		},
	}
}

// endpointState is how a test sets an endpoint.
type endpointState int

const (
	epReady endpointState = iota
	epTerminating
)

// setSlice writes the EndpointSlice of web: the hosts with their states.
func (e *k8sEnv) setSlice(t *testing.T, hosts map[*testnet.Host]endpointState) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default", Labels: map[string]string{
			discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "xdplb-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(scenario.Port)), Protocol: ptrTo(corev1.ProtocolTCP)}},
	}
	var names []string
	for h := range hosts {
		names = append(names, h.Name)
	}
	slices.Sort(names)
	for _, n := range names {
		for h, st := range hosts {
			if h.Name != n {
				continue
			}
			c := discoveryv1.EndpointConditions{Ready: ptrTo(true), Serving: ptrTo(true), Terminating: ptrTo(false)}
			if st == epTerminating {
				c = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
			}
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{h.IPv4.String()}, Conditions: c})
		}
	}
	ctx := context.Background()
	old, err := e.admin.DiscoveryV1().EndpointSlices("default").Get(ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = e.admin.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = e.admin.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// ingress is the addresses in a Service's status.
func (e *k8sEnv) ingress(t *testing.T, name string) []string {
	t.Helper()
	svc, err := e.admin.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	var out []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		mode := "-"
		if in.IPMode != nil {
			mode = string(*in.IPMode)
		}
		out = append(out, in.IP+" "+mode)
	}
	return out
}

func wantBackends(hosts map[*testnet.Host]uint32) []string {
	var out []string
	for h, w := range hosts {
		out = append(out, fmt.Sprintf("%s:%d w%d", h.IPv4, scenario.Port, w))
	}
	slices.Sort(out)
	return out
}

// TestDaemonKubernetes runs the daemon with the Kubernetes source against a
// real API server, as the user of the documented RBAC: a Service and an
// EndpointSlice get the pool's first address, written to the status; the
// client's connections spread over the endpoints; scaling the slice adds and
// removes backends; a terminating endpoint drains (a held connection goes
// on, new ones avoid it); the API server killed and restarted under traffic
// breaks nothing; a daemon restarted while the API server is away keeps
// forwarding from the pinned datapath until it has synced; deleting the
// Service withdraws the VIP and frees the address.
func TestDaemonKubernetes(t *testing.T) {
	e := newK8sEnv(t, 3)
	b1, b2, b3 := e.topo.Backends[0], e.topo.Backends[1], e.topo.Backends[2]
	for _, b := range []*testnet.Host{b1, b2, b3} {
		if err := b.AddVIP(k8sVIP); err != nil {
			t.Fatal(err)
		}
	}
	startNameServers(t, b1, b2, b3)
	a := e.startAppliance(t, e.topo.LB)
	ctx := context.Background()

	e.setSlice(t, map[*testnet.Host]endpointState{b1: epReady, b2: epReady})
	if _, err := e.admin.CoreV1().Services("default").Create(ctx, webService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the address in the status", func() (bool, string) {
		in := e.ingress(t, "web")
		return slices.Equal(in, []string{k8sVIP.String() + " VIP"}), fmt.Sprint(in)
	})
	want := wantBackends(map[*testnet.Host]uint32{b1: 1, b2: 1})
	eventually(t, 30*time.Second, "default/web:80 in xdplb vips", func() (bool, string) {
		got := a.backendsOf(t, "default/web:80")
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	src := a.k8sSource(t)
	if src.Synced == nil || !*src.Synced || src.Leader == nil || !*src.Leader || src.LastEvent.IsZero() || src.Services != 1 {
		t.Errorf("status of the source: %+v", src)
	}
	checkConnections(t, e.topo.Client, k8sVIP, 60, []*testnet.Host{b1, b2})

	// Scaling up and down.
	e.setSlice(t, map[*testnet.Host]endpointState{b1: epReady, b2: epReady, b3: epReady})
	want = wantBackends(map[*testnet.Host]uint32{b1: 1, b2: 1, b3: 1})
	eventually(t, 30*time.Second, "three backends", func() (bool, string) {
		got := a.backendsOf(t, "default/web:80")
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	checkConnections(t, e.topo.Client, k8sVIP, 90, []*testnet.Host{b1, b2, b3})
	e.setSlice(t, map[*testnet.Host]endpointState{b1: epReady, b3: epReady})
	want = wantBackends(map[*testnet.Host]uint32{b1: 1, b3: 1})
	eventually(t, 30*time.Second, "b2 removed", func() (bool, string) {
		got := a.backendsOf(t, "default/web:80")
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	checkConnections(t, e.topo.Client, k8sVIP, 60, []*testnet.Host{b1, b3})

	// A held connection to the endpoint that turns terminating goes on;
	// new connections avoid it.
	held, name := holdConnection(t, e.topo.Client, k8sVIP)
	defer held.close()
	drained := b1
	if name == b3.Name {
		drained = b3
	}
	other := b3
	if drained == b3 {
		other = b1
	}
	e.setSlice(t, map[*testnet.Host]endpointState{drained: epTerminating, other: epReady})
	want = wantBackends(map[*testnet.Host]uint32{drained: 0, other: 1})
	eventually(t, 30*time.Second, "the terminating endpoint drained", func() (bool, string) {
		got := a.backendsOf(t, "default/web:80")
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	held.echo(t)
	checkConnections(t, e.topo.Client, k8sVIP, 40, []*testnet.Host{other})
	held.echo(t)

	// The API server killed and restarted under traffic: nothing changes.
	before := a.vips(t)
	traffic := startTraffic(e.topo.Client, k8sVIP)
	if err := e.api.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if got := a.backendsOf(t, "default/web:80"); !slices.Equal(got, want) {
		t.Errorf("with the API server gone: backends %v, want %v", got, want)
	}
	if err := e.api.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	// The watches resume: a change made now arrives.
	e.setSlice(t, map[*testnet.Host]endpointState{drained: epTerminating, other: epReady, b2: epReady})
	want = wantBackends(map[*testnet.Host]uint32{drained: 0, other: 1, b2: 1})
	eventually(t, 60*time.Second, "a change after the API server's restart", func() (bool, string) {
		got := a.backendsOf(t, "default/web:80")
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	ok, failed := traffic.stop()
	t.Logf("traffic while the API server restarted: %d connections answered, %d failed", ok, failed)
	if failed > 0 || ok == 0 {
		t.Errorf("traffic while the API server restarted: %d answered, %d failed", ok, failed)
	}
	if len(before) != 1 {
		t.Errorf("VIPs before the restart: %+v", before)
	}
	held.echo(t)

	// The daemon restarted while the API server is away: the pinned
	// datapath keeps forwarding until the caches have synced.
	if err := e.api.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	a.stop(t)
	a.runningDaemon = startTestDaemon(t, e.bin, a.host.NS, a.cfg, a.socket)
	if s := a.k8sSource(t); s.Synced == nil || *s.Synced {
		t.Errorf("the source says it synced with the API server away: %+v", s)
	}
	checkConnections(t, e.topo.Client, k8sVIP, 40, []*testnet.Host{other, b2})
	held.echo(t)
	if err := e.api.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "synced after the restarts", func() (bool, string) {
		s := a.k8sSource(t)
		got := a.backendsOf(t, "default/web:80")
		return s.Synced != nil && *s.Synced && slices.Equal(got, want), fmt.Sprint(got)
	})
	checkConnections(t, e.topo.Client, k8sVIP, 40, []*testnet.Host{other, b2})

	// Deleting the Service withdraws the VIP and frees the address: a new
	// Service gets it.
	if err := e.admin.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the VIP withdrawn", func() (bool, string) {
		vs := a.vips(t)
		return len(vs) == 0, fmt.Sprint(vs)
	})
	next := webService()
	next.Name = "web2"
	if _, err := e.admin.CoreV1().Services("default").Create(ctx, next, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the freed address given again", func() (bool, string) {
		in := e.ingress(t, "web2")
		return slices.Equal(in, []string{k8sVIP.String() + " VIP"}), fmt.Sprint(in)
	})
}

// heldConnection is a connection through the VIP kept open.
type heldConnection struct {
	c interface {
		Write([]byte) (int, error)
		Close() error
		SetDeadline(time.Time) error
	}
	r *bufio.Reader
	n int
}

func holdConnection(t *testing.T, client *testnet.Host, vip netip.Addr) (*heldConnection, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", netip.AddrPortFrom(vip, scenario.Port).String())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	name, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return &heldConnection{c: c, r: r}, strings.TrimSpace(name)
}

func (h *heldConnection) echo(t *testing.T) {
	t.Helper()
	h.n++
	msg := fmt.Sprintf("still here %d\n", h.n)
	h.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.c.Write([]byte(msg)); err != nil {
		t.Fatalf("held connection: %v", err)
	}
	got, err := h.r.ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("held connection: echo %q, %v", got, err)
	}
}

func (h *heldConnection) close() { h.c.Close() }

// traffic makes connections to a VIP one after another until stopped.
type traffic struct {
	stopc      chan struct{}
	done       chan struct{}
	ok, failed int
}

func startTraffic(client *testnet.Host, vip netip.Addr) *traffic {
	tr := &traffic{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stopc:
				return
			default:
			}
			if _, err := annDial(context.Background(), client, vip); err != nil {
				tr.failed++
			} else {
				tr.ok++
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return tr
}

func (tr *traffic) stop() (ok, failed int) {
	close(tr.stopc)
	<-tr.done
	return tr.ok, tr.failed
}

// TestDaemonKubernetesLeader runs two appliances against one API server:
// both program the same tables from the same objects, exactly one leads and
// writes status; when the leader dies (SIGKILL, the Lease not released) the
// other takes over within the lease duration and allocates for a new
// Service, and the survivor's datapath does not change.
func TestDaemonKubernetesLeader(t *testing.T) {
	e := newK8sEnv(t, 3)
	b1, b2 := e.topo.Backends[0], e.topo.Backends[1]
	lb2 := e.topo.Backends[2] // the second appliance
	a1 := e.startAppliance(t, e.topo.LB)
	a2 := e.startAppliance(t, lb2)
	ctx := context.Background()
	e.setSlice(t, map[*testnet.Host]endpointState{b1: epReady, b2: epReady})
	if _, err := e.admin.CoreV1().Services("default").Create(ctx, webService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := wantBackends(map[*testnet.Host]uint32{b1: 1, b2: 1})
	for _, a := range []*k8sAppliance{a1, a2} {
		eventually(t, 30*time.Second, a.host.Name+" serves default/web:80", func() (bool, string) {
			got := a.backendsOf(t, "default/web:80")
			return slices.Equal(got, want), fmt.Sprint(got)
		})
	}
	leaders := func() (l []*k8sAppliance) {
		for _, a := range []*k8sAppliance{a1, a2} {
			if s := a.k8sSource(t); s.Leader != nil && *s.Leader {
				l = append(l, a)
			}
		}
		return l
	}
	eventually(t, 30*time.Second, "one leader", func() (bool, string) {
		l := leaders()
		return len(l) == 1, fmt.Sprint(len(l))
	})
	leader, follower := a1, a2
	if leaders()[0] == a2 {
		leader, follower = a2, a1
	}
	t.Logf("leader: %s (%s)", leader.host.Name, leader.k8sSource(t).Identity)
	// The metrics say the same: leader state, allocations by pool, watch
	// events.
	for _, a := range []*k8sAppliance{leader, follower} {
		text := scrape(t, a.host.NS, "http://127.0.0.1:9652/metrics")
		wantLeader := 0.0
		if a == leader {
			wantLeader = 1
		}
		if line := fmt.Sprintf("xdplb_kubernetes_leader %g", wantLeader); !slices.Contains(strings.Split(text, "\n"), line) {
			t.Errorf("%s: the metrics have no line %q", a.host.Name, line)
		}
		if v, ok := metricSample(text, "xdplb_kubernetes_watch_events_total", map[string]string{"resource": "services", "type": "add"}); !ok || v < 1 {
			t.Errorf("%s: services add events = %v (%v), want at least 1", a.host.Name, v, ok)
		}
		if a == leader {
			if v, ok := metricSample(text, "xdplb_kubernetes_pool_allocations", map[string]string{"pool": "k8s"}); !ok || v != 1 {
				t.Errorf("leader: allocations of pool k8s = %v (%v), want 1", v, ok)
			}
		}
	}
	tables := func(a *k8sAppliance) string {
		var b strings.Builder
		for _, v := range a.vips(t) {
			fmt.Fprintf(&b, "%s %s", v.Service, v.VIP)
			for _, be := range v.Backends {
				fmt.Fprintf(&b, " %s:%d", be.Address, be.Slots)
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	before := tables(follower)
	if lt := tables(leader); lt != before {
		t.Errorf("tables differ:\nleader:\n%s\nfollower:\n%s", lt, before)
	}

	// The leader dies without releasing the Lease.
	leader.cmd.Process.Kill()
	<-leader.done
	start := time.Now()
	eventually(t, 2*k8ssource.DefaultLeaseDuration+10*time.Second, "the follower leads", func() (bool, string) {
		s := follower.k8sSource(t)
		return s.Leader != nil && *s.Leader, ""
	})
	t.Logf("handed over %s after the leader's death", time.Since(start).Round(100*time.Millisecond))
	if after := tables(follower); after != before {
		t.Errorf("the survivor's tables changed with the leader:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	next := webService()
	next.Name = "web2"
	next.Spec.Ports[0].Port = 8080
	if _, err := e.admin.CoreV1().Services("default").Create(ctx, next, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the new leader allocates", func() (bool, string) {
		in := e.ingress(t, "web2")
		return len(in) == 1 && in[0] == "198.18.100.18 VIP", fmt.Sprint(in)
	})
}
