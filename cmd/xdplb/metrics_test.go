package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/xdplb/xdplb/announce"
	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/config/kubernetes"
	"github.com/xdplb/xdplb/internal/promtest"
	"github.com/xdplb/xdplb/xdp"
)

// fakeMetrics is a metricsSource with settable state, safe for concurrent
// scrapes.
type fakeMetrics struct {
	// collectors are the sources' metrics: a Kubernetes source's.
	collectors []prometheus.Collector

	mu         sync.Mutex
	counters   []xdp.Counter
	vips       []VIPMetric
	backends   []BackendMetric
	ct4, ct6   int
	ctCapacity int
	sha        string
	reloadsOK  uint64
	reloadsBad uint64

	countersErr, vipsErr, backendsErr error
}

// Collectors are the sources' metrics.
func (f *fakeMetrics) Collectors() []prometheus.Collector { return f.collectors }

func (f *fakeMetrics) DatapathCounters() ([]xdp.Counter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.counters), f.countersErr
}

func (f *fakeMetrics) VIPMetrics() ([]VIPMetric, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.vips), f.vipsErr
}

func (f *fakeMetrics) BackendMetrics() ([]BackendMetric, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.backends), f.backendsErr
}

func (f *fakeMetrics) ConntrackEntries() (v4, v6, capacity int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ct4, f.ct6, f.ctCapacity
}

func (f *fakeMetrics) NATStats() (xdp.NATStats, error) {
	return xdp.NATStats{Flows: 3, Capacity: 262144, Sources: []xdp.NATSourceStats{{Source: netip.MustParseAddr("198.18.0.1"), Flows: 40, AllocFailures: 2}},
		Expired: map[string]uint64{xdp.NATExpiredTransitory: 5}}, nil
}

func (f *fakeMetrics) ConfigSHA256() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sha
}

func (f *fakeMetrics) ReloadCounts() (success, failure uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadsOK, f.reloadsBad
}

// setVIPPackets sets the packet counter of the VIP with address vip.
func (f *fakeMetrics) setVIPPackets(vip string, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.vips {
		if f.vips[i].VIP == vip {
			f.vips[i].Stats.Packets = n
		}
	}
}

const testConfigSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// newFakeMetrics is a small state: a TCP VIP with two backends, a UDP IPv6
// VIP with one down backend, and a few global counters.
func (f *fakeMetrics) AnnounceStats() []announce.Stats {
	drops := map[announce.Reason]uint64{}
	for _, r := range announce.DropReasons {
		drops[r] = 0
	}
	drops[announce.ReasonNotOurs] = 4
	return []announce.Stats{{
		Interface: "eth0",
		ARP:       announce.ProtocolStats{Received: 10, Replies: 6, Gratuitous: 6, Drops: drops},
		NDP:       announce.ProtocolStats{Received: 3, Replies: 2, Gratuitous: 3, Drops: drops},
		VIPs: []announce.VIPStats{
			{VIP: netip.MustParseAddr("198.18.100.1"), Requests: 6, Replies: 6, Gratuitous: 6},
			{VIP: netip.MustParseAddr("2001:db8::100"), Requests: 2, Replies: 2, Gratuitous: 3},
		},
	}}
}

func (f *fakeMetrics) HealthTransitions() (toUp, toDown uint64) { return 3, 2 }

func (f *fakeMetrics) BGPMetrics() (BGPInfo, bool) { return newFakeAPI().bgp, true }

func (f *fakeMetrics) L2StateMetrics() L2StateInfo {
	return L2StateInfo{Mode: "external", State: "standby", VIPs: []string{}}
}

func (f *fakeMetrics) Conflicts() map[string]int { return map[string]int{"file": 0, "kubernetes": 1} }

func newFakeMetrics() *fakeMetrics {
	cfg, err := config.Parse("fake.yaml", []byte("interfaces: [{name: eth0}]\npools: [{name: k8s, blocks: [{cidr: 198.18.20.0/29}]}]\nkubernetes: {kubeconfig: /dev/null}\n"))
	if err != nil {
		panic(err)
	}
	src, err := kubernetes.New(cfg, kubernetes.Options{Client: fake.NewClientset()})
	if err != nil {
		panic(err)
	}
	return &fakeMetrics{
		collectors: []prometheus.Collector{src},
		counters: []xdp.Counter{
			{Action: "pass", Reason: "not_ip", Value: 7},
			{Action: "pass", Reason: "not_vip", Value: 120},
			{Action: "drop", Reason: "fragment", Value: 2},
			{Action: "drop", Reason: "no_backend", Value: 0},
			{Action: "tx", Reason: "dsr_l2", Value: 1000},
			{Action: "redirect", Reason: "dsr_ipip", Value: 30},
			{Action: "event", Reason: "pin_hit", Value: 5},
			{Action: "event", Reason: "tcp_syn", Value: 10},
		},
		vips: []VIPMetric{
			{Service: "web", VIP: "198.18.100.1", Port: "80", Protocol: "tcp",
				Stats: xdp.Stats{Packets: 1000, Bytes: 74000, NewFlows: 10}},
			{Service: "dns", VIP: "2001:db8::100", Port: "53", Protocol: "udp",
				Stats: xdp.Stats{Packets: 30, Bytes: 2700}},
		},
		backends: []BackendMetric{
			{Service: "web", VIP: "198.18.100.1", Port: "80", Protocol: "tcp", Backend: "198.18.1.11", Up: true,
				Stats: xdp.Stats{Packets: 600, Bytes: 44400, NewFlows: 6}},
			{Service: "web", VIP: "198.18.100.1", Port: "80", Protocol: "tcp", Backend: "198.18.1.12", Up: true,
				Stats: xdp.Stats{Packets: 400, Bytes: 29600, NewFlows: 4}},
			{Service: "dns", VIP: "2001:db8::100", Port: "53", Protocol: "udp", Backend: "[2001:db8:1::11]:5353", Up: false,
				Stats: xdp.Stats{Packets: 30, Bytes: 2700}},
		},
		ct4: 3, ct6: 1, ctCapacity: 1048576,
		sha:       testConfigSHA,
		reloadsOK: 2, reloadsBad: 1,
	}
}

const wantExposition = `# HELP xdplb_backend_bytes_total Bytes of the packets counted by xdplb_backend_packets_total, as received: whole Ethernet frames, before any encapsulation.
# TYPE xdplb_backend_bytes_total counter
xdplb_backend_bytes_total{backend="198.18.1.11",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 44400
xdplb_backend_bytes_total{backend="198.18.1.12",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 29600
xdplb_backend_bytes_total{backend="[2001:db8:1::11]:5353",port="53",protocol="udp",service="dns",vip="2001:db8::100"} 2700
# HELP xdplb_backend_new_flows_total TCP SYN packets (SYN without ACK) of the VIP sent to this backend: connection attempts, always 0 for UDP.
# TYPE xdplb_backend_new_flows_total counter
xdplb_backend_new_flows_total{backend="198.18.1.11",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 6
xdplb_backend_new_flows_total{backend="198.18.1.12",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 4
xdplb_backend_new_flows_total{backend="[2001:db8:1::11]:5353",port="53",protocol="udp",service="dns",vip="2001:db8::100"} 0
# HELP xdplb_backend_packets_total Packets of the VIP for which the XDP program chose this backend, by its Maglev table or a flow pin.
# TYPE xdplb_backend_packets_total counter
xdplb_backend_packets_total{backend="198.18.1.11",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 600
xdplb_backend_packets_total{backend="198.18.1.12",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 400
xdplb_backend_packets_total{backend="[2001:db8:1::11]:5353",port="53",protocol="udp",service="dns",vip="2001:db8::100"} 30
# HELP xdplb_backend_up Whether the backend is usable for the VIP (1) or down (0); a down backend gets no new flows.
# TYPE xdplb_backend_up gauge
xdplb_backend_up{backend="198.18.1.11",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 1
xdplb_backend_up{backend="198.18.1.12",port="80",protocol="tcp",service="web",vip="198.18.100.1"} 1
xdplb_backend_up{backend="[2001:db8:1::11]:5353",port="53",protocol="udp",service="dns",vip="2001:db8::100"} 0
# HELP xdplb_build_info The xdplb binary: its version, the Go version that built it and the VCS revision; always 1.
# TYPE xdplb_build_info gauge
xdplb_build_info{goversion="go1.26.0",revision="0123abc",version="v0.1.0"} 1
# HELP xdplb_config_info The running configuration, identified by the SHA-256 of its file; always 1.
# TYPE xdplb_config_info gauge
xdplb_config_info{sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"} 1
# HELP xdplb_config_reloads_total Configuration reloads since the daemon started (SIGHUP, xdplb reload, a changed file), by result: success (applied) or failure (refused; the running configuration is kept).
# TYPE xdplb_config_reloads_total counter
xdplb_config_reloads_total{result="failure"} 1
xdplb_config_reloads_total{result="success"} 2
# HELP xdplb_conntrack_capacity Flows the connection-tracking table of the address family can hold (conntrack.maxFlows).
# TYPE xdplb_conntrack_capacity gauge
xdplb_conntrack_capacity{family="ipv4"} 1.048576e+06
xdplb_conntrack_capacity{family="ipv6"} 1.048576e+06
# HELP xdplb_conntrack_entries Flows pinned to a backend in the connection-tracking table of the address family, as of the last maintenance pass.
# TYPE xdplb_conntrack_entries gauge
xdplb_conntrack_entries{family="ipv4"} 3
xdplb_conntrack_entries{family="ipv6"} 1
# HELP xdplb_datapath_events_total Things that happened to packets in the XDP program on their way to a verdict, by event; a packet may count under several events or none.
# TYPE xdplb_datapath_events_total counter
xdplb_datapath_events_total{event="pin_hit"} 5
xdplb_datapath_events_total{event="tcp_syn"} 10
# HELP xdplb_datapath_packets_total Packets the XDP program finished with, by verdict (action: pass, drop, tx, redirect) and reason; each packet is counted exactly once.
# TYPE xdplb_datapath_packets_total counter
xdplb_datapath_packets_total{action="drop",reason="fragment"} 2
xdplb_datapath_packets_total{action="drop",reason="no_backend"} 0
xdplb_datapath_packets_total{action="pass",reason="not_ip"} 7
xdplb_datapath_packets_total{action="pass",reason="not_vip"} 120
xdplb_datapath_packets_total{action="redirect",reason="dsr_ipip"} 30
xdplb_datapath_packets_total{action="tx",reason="dsr_l2"} 1000
# HELP xdplb_snat_allocation_failures_total New flows dropped because every port of the SNAT source they tried was taken toward their backend.
# TYPE xdplb_snat_allocation_failures_total counter
xdplb_snat_allocation_failures_total{source="198.18.0.1"} 2
# HELP xdplb_snat_capacity NAT flows of each family the NAT tables are sized for (conntrack.maxNATFlows); a new flow whose buckets are full is dropped (reason snat_table_full) and established ones are untouched.
# TYPE xdplb_snat_capacity gauge
xdplb_snat_capacity 262144
# HELP xdplb_snat_expired_total NAT flows removed by the daemon since it started, by reason: tcp_established_idle, tcp_transitory_idle, udp_idle, orphan.
# TYPE xdplb_snat_expired_total counter
xdplb_snat_expired_total{reason="orphan"} 0
xdplb_snat_expired_total{reason="tcp_established_idle"} 0
xdplb_snat_expired_total{reason="tcp_transitory_idle"} 5
xdplb_snat_expired_total{reason="udp_idle"} 0
# HELP xdplb_snat_flows NAT flows of snat services (both directions of each), as of the last maintenance pass.
# TYPE xdplb_snat_flows gauge
xdplb_snat_flows 3
# HELP xdplb_snat_source_flows_total NAT flows created with the SNAT source.
# TYPE xdplb_snat_source_flows_total counter
xdplb_snat_source_flows_total{source="198.18.0.1"} 40
# HELP xdplb_vip_bytes_total Bytes of the packets counted by xdplb_vip_packets_total, as received: whole Ethernet frames, VLAN tag included, before any encapsulation.
# TYPE xdplb_vip_bytes_total counter
xdplb_vip_bytes_total{port="53",protocol="udp",service="dns",vip="2001:db8::100"} 2700
xdplb_vip_bytes_total{port="80",protocol="tcp",service="web",vip="198.18.100.1"} 74000
# HELP xdplb_vip_new_flows_total TCP SYN packets (SYN without ACK) counted by xdplb_vip_packets_total: connection attempts, always 0 for UDP.
# TYPE xdplb_vip_new_flows_total counter
xdplb_vip_new_flows_total{port="53",protocol="udp",service="dns",vip="2001:db8::100"} 0
xdplb_vip_new_flows_total{port="80",protocol="tcp",service="web",vip="198.18.100.1"} 10
# HELP xdplb_vip_packets_total Packets sent to the VIP (address, port and protocol) that the XDP program handed to backend selection, including those then dropped for want of a backend.
# TYPE xdplb_vip_packets_total counter
xdplb_vip_packets_total{port="53",protocol="udp",service="dns",vip="2001:db8::100"} 30
xdplb_vip_packets_total{port="80",protocol="tcp",service="web",vip="198.18.100.1"} 1000
`

// testCollector is the collector over src with fixed build labels, so that
// the exposition does not depend on how the test binary was built.
func testCollector(src metricsSource) *metricsCollector {
	c := newMetricsCollector(src)
	c.build = []string{"v0.1.0", "go1.26.0", "0123abc"}
	return c
}

func TestMetricsExposition(t *testing.T) {
	if err := testutil.CollectAndCompare(testCollector(newFakeMetrics()), strings.NewReader(wantExposition)); err != nil {
		t.Error(err)
	}
}

// TestMetricsBeforeConfig: with no configuration loaded there is no
// xdplb_config_info, and both reload results are still present.
func TestMetricsBeforeConfig(t *testing.T) {
	f := &fakeMetrics{ctCapacity: 1024}
	want := `# HELP xdplb_config_reloads_total Configuration reloads since the daemon started (SIGHUP, xdplb reload, a changed file), by result: success (applied) or failure (refused; the running configuration is kept).
# TYPE xdplb_config_reloads_total counter
xdplb_config_reloads_total{result="failure"} 0
xdplb_config_reloads_total{result="success"} 0
`
	if err := testutil.CollectAndCompare(testCollector(f), strings.NewReader(want),
		"xdplb_config_reloads_total", "xdplb_config_info", "xdplb_vip_packets_total"); err != nil {
		t.Error(err)
	}
}

func TestBuildLabels(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })

	version = "v9.9.9"
	got := buildLabels()
	if got[0] != "v9.9.9" || got[1] != runtime.Version() || got[2] == "" {
		t.Errorf("buildLabels() = %q, want [v9.9.9 %s REVISION]", got, runtime.Version())
	}
	version = ""
	if got := buildLabels(); got[0] == "" || got[2] == "" {
		t.Errorf("buildLabels() without a linked version = %q: want no empty value", got)
	}
}

// TestMetricsLabelsBounded checks the label names of every xdplb metric and
// that the address labels only ever hold configured addresses: VIPs and
// backends, never a client.
func TestMetricsLabelsBounded(t *testing.T) {
	wantLabels := map[string][]string{
		"xdplb_vip_packets_total":              {"port", "protocol", "service", "vip"},
		"xdplb_vip_bytes_total":                {"port", "protocol", "service", "vip"},
		"xdplb_vip_new_flows_total":            {"port", "protocol", "service", "vip"},
		"xdplb_backend_packets_total":          {"backend", "port", "protocol", "service", "vip"},
		"xdplb_backend_bytes_total":            {"backend", "port", "protocol", "service", "vip"},
		"xdplb_backend_new_flows_total":        {"backend", "port", "protocol", "service", "vip"},
		"xdplb_backend_up":                     {"backend", "port", "protocol", "service", "vip"},
		"xdplb_datapath_packets_total":         {"action", "reason"},
		"xdplb_datapath_events_total":          {"event"},
		"xdplb_conntrack_entries":              {"family"},
		"xdplb_conntrack_capacity":             {"family"},
		"xdplb_snat_flows":                     nil,
		"xdplb_snat_capacity":                  nil,
		"xdplb_snat_source_flows_total":        {"source"},
		"xdplb_snat_expired_total":             {"reason"},
		"xdplb_snat_allocation_failures_total": {"source"},
		"xdplb_config_reloads_total":           {"result"},
		"xdplb_config_info":                    {"sha256"},
		"xdplb_build_info":                     {"goversion", "revision", "version"},

		"xdplb_backend_health_transitions_total":     {"to"},
		"xdplb_source_conflicts":                     {"source"},
		"xdplb_announce_active":                      {"interface", "vip"},
		"xdplb_announce_requests_total":              {"interface", "vip"},
		"xdplb_announce_replies_total":               {"interface", "vip"},
		"xdplb_announce_gratuitous_total":            {"interface", "vip"},
		"xdplb_announce_received_total":              {"interface", "protocol"},
		"xdplb_announce_drops_total":                 {"interface", "protocol", "reason"},
		"xdplb_announce_send_errors_total":           {"interface", "protocol"},
		"xdplb_announce_l2_active":                   {"mode"},
		"xdplb_bgp_session_state":                    {"peer", "state"},
		"xdplb_bgp_prefixes_sent":                    {"peer"},
		"xdplb_bgp_prefixes_received":                {"peer"},
		"xdplb_bgp_routes_advertised":                nil,
		"xdplb_bgp_drained":                          nil,
		"xdplb_kubernetes_invalid_annotations_total": nil,
		"xdplb_kubernetes_leader":                    nil,
		"xdplb_kubernetes_pool_allocations":          {"pool"},
		"xdplb_kubernetes_watch_events_total":        {"resource", "type"},
	}
	// The only values some labels may take, whatever the state.
	closed := map[string][]string{
		"action":   {"drop", "pass", "redirect", "tx"},
		"family":   {"ipv4", "ipv6"},
		"protocol": {"tcp", "udp"},
		"result":   {"failure", "success"},
		"to":       {"down", "up"},
		"resource": {"endpointslices", "nodes", "services"},
		"type":     {"add", "delete", "update"},
		"state":    bgpStates,
		"mode":     {"always", "external"},
		// Peers are configured addresses: the fake's.
		"peer": {"198.18.0.254", "2001:db8::fe"},
	}
	// The announcers' protocol label names the packets they answer.
	announceProtocols := []string{"arp", "ndp"}
	f := newFakeMetrics()
	configured := map[string][]string{"vip": {}, "backend": {}}
	for _, b := range f.backends {
		configured["vip"] = append(configured["vip"], b.VIP)
		configured["backend"] = append(configured["backend"], b.Backend)
	}

	mfs, err := newMetricsRegistry(f).Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "xdplb_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var names []string
			for _, lp := range m.GetLabel() {
				names = append(names, lp.GetName())
				v := lp.GetValue()
				allowed, ok := closed[lp.GetName()]
				if strings.HasPrefix(name, "xdplb_announce_") && lp.GetName() == "protocol" {
					allowed = announceProtocols
				}
				if ok && !slices.Contains(allowed, v) {
					t.Errorf("%s: label %s=%q, want one of %q", name, lp.GetName(), v, allowed)
				}
				if allowed, ok := configured[lp.GetName()]; ok && !slices.Contains(allowed, v) {
					t.Errorf("%s: label %s=%q is no configured address", name, lp.GetName(), v)
				}
			}
			got[name] = names
		}
	}
	if diff := cmp.Diff(wantLabels, got); diff != "" {
		t.Errorf("label names (-want +got):\n%s", diff)
	}
}

func TestMetricsSourceErrors(t *testing.T) {
	errMap := errors.New("map lookup: no such file or directory")
	tests := []struct {
		name    string
		set     func(*fakeMetrics)
		wantErr string
	}{
		{"counters", func(f *fakeMetrics) { f.countersErr = errMap }, "reading datapath counters: map lookup: no such file or directory"},
		{"vips", func(f *fakeMetrics) { f.vipsErr = errMap }, "reading VIP counters: map lookup: no such file or directory"},
		{"backends", func(f *fakeMetrics) { f.backendsErr = errMap }, "reading backend counters: map lookup: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeMetrics()
			tt.set(f)

			// The collector reports the failure as an invalid metric...
			ch := make(chan prometheus.Metric, 100)
			testCollector(f).Collect(ch)
			close(ch)
			var invalid []string
			for m := range ch {
				if err := m.Write(&dto.Metric{}); err != nil {
					invalid = append(invalid, err.Error())
				}
			}
			if diff := cmp.Diff([]string{tt.wantErr}, invalid); diff != "" {
				t.Errorf("invalid metrics (-want +got):\n%s", diff)
			}

			// ... which fails the scrape with the error text.
			code, body := get(t, newMetricsHandler(f, nil), "/metrics")
			if code != http.StatusInternalServerError || !strings.Contains(body, tt.wantErr) {
				t.Errorf("GET /metrics = %d %q, want 500 with %q", code, body, tt.wantErr)
			}
		})
	}
}

func TestHealthAndReadiness(t *testing.T) {
	var (
		mu       sync.Mutex
		notReady = errors.New("datapath not attached yet")
		readyErr = notReady
	)
	h := newMetricsHandler(newFakeMetrics(), func() error {
		mu.Lock()
		defer mu.Unlock()
		return readyErr
	})
	check := func(path string, wantCode int, wantBody string) {
		t.Helper()
		if code, body := get(t, h, path); code != wantCode || body != wantBody {
			t.Errorf("GET %s = %d %q, want %d %q", path, code, body, wantCode, wantBody)
		}
	}
	check("/healthz", 200, "ok\n")
	check("/readyz", 503, "datapath not attached yet\n")
	mu.Lock()
	readyErr = nil
	mu.Unlock()
	check("/healthz", 200, "ok\n")
	check("/readyz", 200, "ready\n")
	check("/nothing", 404, "404 page not found\n")

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/metrics", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics = %d, want 405", rec.Code)
	}
}

// TestPromtoolCheckMetrics runs `promtool check metrics` on what /metrics
// serves, Go and process metrics included, and fails on any complaint.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := promtest.Binary(t, "promtool")
	code, body := get(t, newMetricsHandler(newFakeMetrics(), nil), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d %q", code, body)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestMetricsDocumented checks that docs/metrics.md names every metric the
// handler serves and no xdplb metric it does not, and lists every counter
// of xdp/counters.go with its action and reason.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := newMetricsRegistry(newFakeMetrics()).Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, mf := range mfs {
		served[mf.GetName()] = true
		if !bytes.Contains(doc, []byte("`"+mf.GetName()+"`")) {
			t.Errorf("docs/metrics.md does not list %s", mf.GetName())
		}
	}
	for _, m := range regexp.MustCompile(`\bxdplb_[a-z0-9_]+`).FindAll(doc, -1) {
		if !served[string(m)] {
			t.Errorf("docs/metrics.md names %s, which is not served", m)
		}
	}

	src, err := os.ReadFile("../../xdp/counters.go")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`\{"(pass|drop|tx|redirect|event)", "([a-z0-9_]+)"\}`).FindAllStringSubmatch(string(src), -1)
	if len(names) < 30 {
		t.Fatalf("found %d counter names in xdp/counters.go; has its counterNames table changed shape?", len(names))
	}
	for _, n := range names {
		row := "| `" + n[1] + "` | `" + n[2] + "` |"
		if n[1] == eventAction {
			row = "| `" + n[2] + "` |"
		}
		if !bytes.Contains(doc, []byte("\n"+row)) {
			t.Errorf("docs/metrics.md has no table row starting %q", row)
		}
	}
}

// TestMetricsThroughPrometheus has a real Prometheus scrape the handler and
// reads a VIP's packet counter back through the query API, before and after
// it moves.
func TestMetricsThroughPrometheus(t *testing.T) {
	f := newFakeMetrics()
	srv := httptest.NewServer(newMetricsHandler(f, nil))
	defer srv.Close()
	prom := promtest.Start(t, srv.Listener.Addr().String())

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const expr = `xdplb_vip_packets_total{vip="198.18.100.1"}`
	v, err := prom.WaitFor(ctx, expr, promtest.Equals(1000))
	if err != nil {
		t.Fatalf("%v\n%s", err, prom.Logs())
	}
	want := map[string]string{
		"__name__": "xdplb_vip_packets_total", "instance": srv.Listener.Addr().String(), "job": promtest.Job,
		"service": "web", "vip": "198.18.100.1", "port": "80", "protocol": "tcp",
	}
	if diff := cmp.Diff(want, v[0].Metric); diff != "" {
		t.Errorf("series labels (-want +got):\n%s", diff)
	}

	f.setVIPPackets("198.18.100.1", 1500)
	changed := time.Now()
	soon, cancelSoon := context.WithTimeout(ctx, 5*time.Second)
	defer cancelSoon()
	if _, err := prom.WaitFor(soon, expr, promtest.Equals(1500)); err != nil {
		t.Fatal(err)
	}
	t.Logf("new value visible through Prometheus after %v", time.Since(changed).Round(10*time.Millisecond))
}

func TestServeMetrics(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newMetricsHandler(newFakeMetrics(), nil)

	t.Run("address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		errc := make(chan error, 1)
		go func() { errc <- serveMetrics(t.Context(), ln.Addr().String(), h, log) }()
		select {
		case err := <-errc:
			if err == nil || !strings.Contains(err.Error(), "address already in use") ||
				!strings.HasPrefix(err.Error(), `listening on "`+ln.Addr().String()+`": `) {
				t.Errorf("serveMetrics = %v, want an address-in-use error naming the address", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("serveMetrics did not return on an address in use")
		}
	})

	t.Run("serves until cancelled", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- serveMetrics(ctx, addr, h, log) }()

		var body string
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/healthz")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(b)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /healthz: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if body != "ok\n" {
			t.Errorf("GET /healthz = %q, want \"ok\\n\"", body)
		}
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("serveMetrics after cancel = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("serveMetrics did not return after its context ended")
		}
		if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
			t.Error("still serving after serveMetrics returned")
		}
	})
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// TestAnnounceAndHealthMetrics checks the exposition of the announcers' and
// the health checks' counters.
func TestAnnounceAndHealthMetrics(t *testing.T) {
	src := newFakeMetrics()
	want := `# HELP xdplb_announce_active 1 for each VIP the appliance answers ARP or NDP for on an interface.
# TYPE xdplb_announce_active gauge
xdplb_announce_active{interface="eth0",vip="198.18.100.1"} 1
xdplb_announce_active{interface="eth0",vip="2001:db8::100"} 1
# HELP xdplb_announce_drops_total ARP or NDP frames received and not answered, by reason.
# TYPE xdplb_announce_drops_total counter
xdplb_announce_drops_total{interface="eth0",protocol="arp",reason="malformed"} 0
xdplb_announce_drops_total{interface="eth0",protocol="arp",reason="not_a_request"} 0
xdplb_announce_drops_total{interface="eth0",protocol="arp",reason="not_ours"} 4
xdplb_announce_drops_total{interface="eth0",protocol="arp",reason="rate_limited"} 0
xdplb_announce_drops_total{interface="eth0",protocol="arp",reason="reply_ignored"} 0
xdplb_announce_drops_total{interface="eth0",protocol="ndp",reason="malformed"} 0
xdplb_announce_drops_total{interface="eth0",protocol="ndp",reason="not_a_request"} 0
xdplb_announce_drops_total{interface="eth0",protocol="ndp",reason="not_ours"} 4
xdplb_announce_drops_total{interface="eth0",protocol="ndp",reason="rate_limited"} 0
xdplb_announce_drops_total{interface="eth0",protocol="ndp",reason="reply_ignored"} 0
# HELP xdplb_announce_gratuitous_total Gratuitous ARP packets and unsolicited neighbour advertisements sent for a VIP since it became active.
# TYPE xdplb_announce_gratuitous_total counter
xdplb_announce_gratuitous_total{interface="eth0",vip="198.18.100.1"} 6
xdplb_announce_gratuitous_total{interface="eth0",vip="2001:db8::100"} 3
# HELP xdplb_announce_replies_total ARP replies and neighbour advertisements sent for a VIP since it became active.
# TYPE xdplb_announce_replies_total counter
xdplb_announce_replies_total{interface="eth0",vip="198.18.100.1"} 6
xdplb_announce_replies_total{interface="eth0",vip="2001:db8::100"} 2
# HELP xdplb_announce_requests_total ARP requests and neighbour solicitations received for a VIP since it became active.
# TYPE xdplb_announce_requests_total counter
xdplb_announce_requests_total{interface="eth0",vip="198.18.100.1"} 6
xdplb_announce_requests_total{interface="eth0",vip="2001:db8::100"} 2
# HELP xdplb_backend_health_transitions_total Backends that went up or down by their health checks since the daemon started.
# TYPE xdplb_backend_health_transitions_total counter
xdplb_backend_health_transitions_total{to="down"} 2
xdplb_backend_health_transitions_total{to="up"} 3
# HELP xdplb_source_conflicts VIPs (address, port and protocol) and service names a source offers that another source already holds; they are left out until the holder lets them go.
# TYPE xdplb_source_conflicts gauge
xdplb_source_conflicts{source="file"} 0
xdplb_source_conflicts{source="kubernetes"} 1
`
	reg := prometheus.NewRegistry()
	reg.MustRegister(announceCollector{src}, healthCollector{src}, conflictCollector{src})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"xdplb_announce_active", "xdplb_announce_drops_total", "xdplb_announce_gratuitous_total",
		"xdplb_announce_replies_total", "xdplb_announce_requests_total", "xdplb_backend_health_transitions_total",
		"xdplb_source_conflicts"); err != nil {
		t.Error(err)
	}
}
