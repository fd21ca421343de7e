package config

import (
	"bytes"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var cmpAddrs = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func mustParse(t *testing.T, file string) *Config {
	t.Helper()
	c, err := Parse("xdplb.yaml", []byte(file))
	if err != nil {
		t.Fatalf("Parse: %v\nfile:\n%s", err, file)
	}
	return c
}

func TestDefaults(t *testing.T) {
	minimal := head + "services:\n" + svc + "    backends:\n      - {address: 198.18.1.1}\n"
	for _, tc := range []struct {
		name string
		file string
		get  func(c *Config) any
		want any
	}{
		{"xdpMode", minimal, func(c *Config) any { return c.Interfaces[0].XDPMode }, XDPModeAuto},
		{"maglev.tableSize", minimal, func(c *Config) any { return c.Maglev.TableSize }, 16381},
		{"conntrack", minimal, func(c *Config) any { return c.Conntrack }, Conntrack{MaxFlows: 1048576, IdleTimeout: 15 * time.Minute, MaxNATFlows: 262144}},
		{"encap", minimal, func(c *Config) any { return c.Encap }, EncapSources{}},
		{"pools", minimal, func(c *Config) any { return c.Pools }, []Pool(nil)},
		{"announce", minimal, func(c *Config) any { return c.Announce }, Announce{L2: L2Announce{GratuitousCount: 3, GratuitousInterval: time.Second, Mode: L2ModeAlways}}},
		{
			"announce.bgp",
			minimal + "announce:\n  bgp:\n    localASN: 65010\n    routerID: 198.18.0.1\n    peers:\n      - {address: 198.18.0.254, asn: 65000}\n",
			func(c *Config) any { return c.Announce.BGP },
			&BGPAnnounce{
				LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.1"), ListenPort: 179,
				Peers:           []BGPPeer{{Address: netip.MustParseAddr("198.18.0.254"), ASN: 65000, HoldTime: 90 * time.Second}},
				GracefulRestart: GracefulRestart{Enabled: true, RestartTime: 120 * time.Second},
				Drain:           DrainWithdraw,
			},
		},
		{
			"announce.bgp as the issue writes it",
			minimal + `announce:
  bgp:
    localASN: 65010
    routerID: 198.18.0.1
    listenPort: -1
    peers:
      - {address: 198.18.0.254, asn: 65000, holdTime: 9s, password: "s3cret"}
    communities: ["65010:100"]
    gracefulRestart: {restartTime: 30s}
    drain: gracefulShutdown
`,
			func(c *Config) any { return c.Announce.BGP },
			&BGPAnnounce{
				LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.1"), ListenPort: -1,
				Peers:           []BGPPeer{{Address: netip.MustParseAddr("198.18.0.254"), ASN: 65000, HoldTime: 9 * time.Second, Password: "s3cret"}},
				Communities:     []string{"65010:100"},
				CommunityValues: []uint32{65010<<16 | 100},
				GracefulRestart: GracefulRestart{Enabled: true, RestartTime: 30 * time.Second},
				Drain:           DrainGracefulShutdown,
			},
		},
		{"metrics.listen", minimal, func(c *Config) any { return c.Metrics.Listen }, "127.0.0.1:9650"},
		{"paths", minimal, func(c *Config) any { return c.Paths }, Paths{Socket: "/run/xdplb/xdplb.sock", State: "/var/lib/xdplb", BPF: "/sys/fs/bpf/xdplb"}},
		{"service", minimal, func(c *Config) any { return c.ServiceSpecs[0] }, ServiceSpec{
			Name:               "web",
			Address:            netip.MustParseAddr("198.18.10.10"),
			Protocol:           ProtocolTCP,
			Ports:              []uint16{80},
			Mode:               ModeDSR,
			Encap:              EncapNone,
			TableSize:          16381,
			Backends:           []BackendSpec{{Address: netip.MustParseAddr("198.18.1.1"), Port: 0, Weight: 1}},
			MinHealthyBackends: 1,
			Announce:           true,
			HealthCheck:        HealthCheck{Type: HealthCheckNone, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		}},
		{
			"service tableSize from maglev.tableSize",
			head + "  tableSize: 251\nservices:\n" + svc,
			func(c *Config) any { return c.ServiceSpecs[0].TableSize },
			251,
		},
		{
			"service tableSize of its own",
			head + "  tableSize: 251\nservices:\n" + svc + "    tableSize: 509\n",
			func(c *Config) any { return c.ServiceSpecs[0].TableSize },
			509,
		},
		{
			"null values count as left out",
			head + "conntrack:\n  maxFlows:\nmetrics:\nservices:\n" + svc + "    backends:\n    encap: ~\n",
			func(c *Config) any {
				return []any{c.Conntrack.MaxFlows, c.Metrics.Listen, c.ServiceSpecs[0].Backends, c.ServiceSpecs[0].Encap}
			},
			[]any{uint32(1048576), "127.0.0.1:9650", []BackendSpec(nil), EncapNone},
		},
		{
			"health check: http fills in path and expectStatus",
			head + "services:\n" + svc + "    healthCheck: {type: http}\n",
			func(c *Config) any { return c.ServiceSpecs[0].HealthCheck },
			HealthCheck{Type: HealthCheckHTTP, Path: "/", ExpectStatus: StatusRanges{{200, 399}}, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			"health check: every key",
			head + "services:\n" + svc + "    healthCheck:\n      type: https\n      port: 8443\n      path: /ready?full=1\n" +
				"      host: \"www.example.com:8443\"\n      expectStatus: 200, 204-206,302\n      interval: 1m\n      timeout: 1500ms\n      rise: 1\n      fall: 100\n",
			func(c *Config) any { return c.ServiceSpecs[0].HealthCheck },
			HealthCheck{
				Type: HealthCheckHTTPS, Port: 8443, Path: "/ready?full=1", Host: "www.example.com:8443",
				ExpectStatus: StatusRanges{{200, 200}, {204, 206}, {302, 302}},
				Interval:     time.Minute, Timeout: 1500 * time.Millisecond, Rise: 1, Fall: 100,
			},
		},
		{
			"health check: udp",
			head + "services:\n" + svc + "    healthCheck: {type: udp, send: \"ping\\n\", expect: \"\"}\n",
			func(c *Config) any { return c.ServiceSpecs[0].HealthCheck },
			HealthCheck{Type: HealthCheckUDP, Send: "ping\n", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			"health check: type none keeps the timing",
			head + "services:\n" + svc + "    healthCheck: {type: none, interval: 5s, rise: 4}\n",
			func(c *Config) any { return c.ServiceSpecs[0].HealthCheck },
			HealthCheck{Type: HealthCheckNone, Interval: 5 * time.Second, Timeout: time.Second, Rise: 4, Fall: 3},
		},
		{
			"health check: null counts as left out",
			head + "services:\n" + svc + "    healthCheck:\n",
			func(c *Config) any { return c.ServiceSpecs[0].HealthCheck },
			HealthCheck{Type: HealthCheckNone, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			"encap source address is a one-address prefix",
			head + "encap: {sourceIPv4: 198.18.0.1, sourceIPv6: \"2001:db8::/112\"}\n",
			func(c *Config) any { return c.Encap },
			EncapSources{SourceIPv4: netip.MustParsePrefix("198.18.0.1/32"), SourceIPv6: netip.MustParsePrefix("2001:db8::/112")},
		},
		{
			"pool blocks",
			head + "pools:\n  - {name: p, blocks: [{cidr: 198.18.10.0/30}, {start: 198.18.11.1, stop: 198.18.11.1}]}\n",
			func(c *Config) any { return c.Pools },
			[]Pool{{Name: "p", Blocks: []Block{
				{CIDR: netip.MustParsePrefix("198.18.10.0/30"), Start: netip.MustParseAddr("198.18.10.0"), Stop: netip.MustParseAddr("198.18.10.3")},
				{Start: netip.MustParseAddr("198.18.11.1"), Stop: netip.MustParseAddr("198.18.11.1")},
			}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, tc.file)
			if diff := cmp.Diff(tc.want, tc.get(c), cmpAddrs); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestExample(t *testing.T) {
	const path = "testdata/example.yaml"
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s):\n%v", path, err)
	}
	if err := Check(path); err != nil {
		t.Fatalf("Check(%s):\n%v", path, err)
	}

	// docs/config.md shows the same file, byte for byte.
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := bytes.Cut(doc, []byte("```yaml\n"))
	if !ok {
		t.Fatal("docs/config.md has no ```yaml block")
	}
	block, _, ok = bytes.Cut(block, []byte("```\n"))
	if !ok {
		t.Fatal("docs/config.md's first ```yaml block does not end")
	}
	if diff := cmp.Diff(string(example), string(block)); diff != "" {
		t.Errorf("docs/config.md's first yaml block differs from %s (-file +doc):\n%s", path, diff)
	}

	// What the example means, resolved, with dns given the first address of
	// main-pool.
	want := []Service{
		{
			Name:      "web",
			Addr:      netip.MustParseAddr("198.18.10.10"),
			Protocol:  ProtocolTCP,
			Ports:     []uint16{80, 443},
			Mode:      ModeDSR,
			Encap:     EncapNone,
			TableSize: 16381,
			Backends: []Backend{
				{Addr: netip.MustParseAddr("198.18.1.11"), Weight: 1},
				{Addr: netip.MustParseAddr("198.18.1.12"), Weight: 1},
				{Addr: netip.MustParseAddr("198.18.1.13"), Weight: 0},
			},
			MinHealthyBackends: 1,
			Announce:           true,
			HealthCheck: HealthCheck{
				Type: HealthCheckHTTP, Port: 80, Path: "/healthz", Host: "www.example.com",
				ExpectStatus: StatusRanges{{200, 399}},
				Interval:     2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
			},
		},
		{
			Name:      "dns",
			Addr:      netip.MustParseAddr("198.18.10.100"),
			Protocol:  ProtocolUDP,
			Ports:     []uint16{53},
			Mode:      ModeDSR,
			Encap:     EncapIPIP,
			TableSize: 4093,
			Backends: []Backend{
				{Addr: netip.MustParseAddr("198.18.2.21"), Weight: 1},
				{Addr: netip.MustParseAddr("198.18.2.22"), Weight: 2},
				{Addr: netip.MustParseAddr("2001:db8:2::23"), Weight: 1},
			},
			MinHealthyBackends: 2,
			Announce:           true,
			HealthCheck: HealthCheck{
				Type: HealthCheckUDP, Port: 5353, Send: "ping", Expect: "pong",
				Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
			},
		},
		{
			Name:               "catch-all",
			Addr:               netip.MustParseAddr("2001:db8:10::1000"),
			Protocol:           ProtocolTCP,
			Ports:              []uint16{0},
			Mode:               ModeDSR,
			Encap:              EncapNone,
			TableSize:          16381,
			Backends:           []Backend{{Addr: netip.MustParseAddr("2001:db8:1::31"), Weight: 1}},
			MinHealthyBackends: 1,
			Announce:           false,
			HealthCheck:        HealthCheck{Type: HealthCheckTCP, Port: 443, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
	}
	alloc, errs := allocate(c, nil)
	if len(errs) > 0 {
		t.Fatalf("allocate: %v", errs)
	}
	if diff := cmp.Diff(want, c.Services(alloc), cmpAddrs); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
	if got, want := len(c.SHA256()), 64; got != want {
		t.Errorf("SHA256() = %q, want %d hex digits", c.SHA256(), want)
	}
}

func TestServices(t *testing.T) {
	c := mustParse(t, head+"pools:\n  - {name: p, blocks: [{cidr: 198.18.10.0/30}]}\nservices:\n"+
		"  - {name: a, pool: p, protocol: tcp, ports: [443, 80], mode: dsr, backends: [{address: 198.18.1.1, port: 8080, weight: 7}],\n"+
		"     healthCheck: {type: https, expectStatus: \"200,204\"}}\n"+
		"  - {name: b, pool: p, protocol: udp, ports: [53], mode: dsr}\n")

	// A pool service without an address is left out.
	got := c.Services(map[string]netip.Addr{"a": netip.MustParseAddr("198.18.10.1")})
	want := []Service{{
		Name:               "a",
		Addr:               netip.MustParseAddr("198.18.10.1"),
		Protocol:           ProtocolTCP,
		Ports:              []uint16{80, 443},
		Mode:               ModeDSR,
		Encap:              EncapNone,
		TableSize:          16381,
		Backends:           []Backend{{Addr: netip.MustParseAddr("198.18.1.1"), Port: 8080, Weight: 7}},
		MinHealthyBackends: 1,
		Announce:           true,
		HealthCheck: HealthCheck{
			Type: HealthCheckHTTPS, Path: "/", ExpectStatus: StatusRanges{{200, 200}, {204, 204}},
			Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
		},
	}}
	if diff := cmp.Diff(want, got, cmpAddrs); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}

	// The view shares nothing with the Config.
	got[0].Ports[0] = 1
	got[0].Backends[0].Weight = 1
	got[0].HealthCheck.ExpectStatus[0].Lo = 100
	if s := c.ServiceSpecs[0]; s.Ports[0] != 443 || s.Backends[0].Weight != 7 || s.HealthCheck.ExpectStatus[0].Lo != 200 {
		t.Errorf("changing the view changed the Config: %+v", s)
	}
}

func TestSHA256(t *testing.T) {
	a := mustParse(t, head)
	b := mustParse(t, head+"# a comment\n")
	// printf '%s' "$head" | sha256sum
	if got, want := a.SHA256(), "8e53589d08cf0e2f5a0b709acfa9e04bf48c01ba6db925c223c5056396be4379"; got != want {
		t.Errorf("SHA256() = %q, want %q", got, want)
	}
	if a.SHA256() == b.SHA256() {
		t.Errorf("files differing in a comment have the same SHA256 %s", a.SHA256())
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/no-such-file.yaml")
	if got, want := err.Error(), "reading config: open testdata/no-such-file.yaml: no such file or directory"; got != want {
		t.Errorf("Load error = %q, want %q", got, want)
	}
}

func TestStatusRanges(t *testing.T) {
	r := StatusRanges{{200, 204}, {302, 302}}
	if got, want := r.String(), "200-204,302"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for code, want := range map[int]bool{199: false, 200: true, 204: true, 205: false, 301: false, 302: true, 303: false} {
		if got := r.Contains(code); got != want {
			t.Errorf("Contains(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestHealthCheckEqual(t *testing.T) {
	a := mustParse(t, head+"services:\n"+svc+"    healthCheck: {type: http, expectStatus: \"200,204\"}\n").ServiceSpecs[0].HealthCheck
	b := a.clone()
	if !a.Equal(b) {
		t.Errorf("%+v is not Equal to its clone", a)
	}
	b.ExpectStatus[1].Hi = 205
	if a.Equal(b) {
		t.Errorf("%+v is Equal to %+v", a, b)
	}
}

// TestSeedOptional: a file without maglev.seed is valid (the appliance makes
// a seed of its own); SeedSet says which.
func TestSeedOptional(t *testing.T) {
	for _, tt := range []struct {
		file string
		set  bool
	}{
		{"interfaces:\n  - name: eth0\n", false},
		{"interfaces:\n  - name: eth0\nmaglev:\n  tableSize: 251\n", false},
		{"interfaces:\n  - name: eth0\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n", true},
	} {
		c, err := Parse("xdplb.yaml", []byte(tt.file))
		if err != nil {
			t.Errorf("%q: %v", tt.file, err)
			continue
		}
		if c.Maglev.SeedSet != tt.set {
			t.Errorf("%q: SeedSet = %v, want %v", tt.file, c.Maglev.SeedSet, tt.set)
		}
		if !tt.set && c.Maglev.Seed != [16]byte{} {
			t.Errorf("%q: seed %x without one in the file", tt.file, c.Maglev.Seed)
		}
	}
}
