package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/promtest"
	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// dashboardPath is the Grafana dashboard docs/metrics.md tells operators to
// import.
var dashboardPath = filepath.Join("..", "..", "docs", "grafana-dashboard.json")

// dashboardQuery is one PromQL expression of the dashboard and where it is.
type dashboardQuery struct {
	where, expr string
}

// dashboardQueries extracts every PromQL expression of the dashboard: the
// panels' targets, the annotations, and the series of the template
// variables' label_values() queries.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Annotations struct {
			List []struct {
				Name string `json:"name"`
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: no title or uid", dashboardPath)
	}
	var out []dashboardQuery
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			out = append(out, dashboardQuery{fmt.Sprintf("panel %q target %d", p.Title, i), tg.Expr})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*), *([a-z_]+)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %q: query %q is no label_values(SERIES, LABEL)", v.Name, s)
			continue
		}
		out = append(out, dashboardQuery{fmt.Sprintf("variable %q", v.Name), fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
	}
	for _, a := range d.Annotations.List {
		out = append(out, dashboardQuery{fmt.Sprintf("annotation %q", a.Name), a.Expr})
	}
	return out
}

// grafanaVars replaces the dashboard's variables as Grafana would with "All"
// selected and a short range.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "5m", "$service", ".*", "$vip", ".*")

// TestDashboardNames: every metric the dashboard queries is one the daemon
// exports (docs/metrics.md lists them, and TestMetricsDocumented keeps that
// list true).
func TestDashboardNames(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`xdplb_[a-z0-9_]+`)
	qs := dashboardQueries(t)
	if len(qs) < 20 {
		t.Errorf("%d queries in the dashboard: the extraction is broken", len(qs))
	}
	for _, q := range qs {
		for _, m := range name.FindAllString(q.expr, -1) {
			if !strings.Contains(string(doc), "`"+m+"`") {
				t.Errorf("%s: %s is not in docs/metrics.md", q.where, m)
			}
		}
	}
}

// TestDashboardQueries runs every query of the dashboard against a real
// Prometheus scraping the real daemon, with traffic through two VIPs,
// health checks, L2 announcements and a reload: each must parse and return
// data.
// opsDaemon is the real daemon of the ops tests, in the namespace topology
// with its servers: two VIPs (web4, web6) over three backends with TCP
// health checks, L2 announcements on eth0, metrics scraped by a real
// Prometheus.
type opsDaemon struct {
	bin, socket, cfgPath, config string
	addrs                        []string
	topo                         *testnet.Topology
	srv                          *scenario.Servers
	prom                         *promtest.Server
	d                            *runningDaemon
}

func opsConfig(f testFiles, addrs []string, weight string) string {
	check := "    healthCheck: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 2}\n"
	web4 := serviceYAML("web4", "198.18.100.1", addrs, check)
	if weight != "" {
		web4 = strings.Replace(web4, "{address: "+addrs[0]+"}", "{address: "+addrs[0]+", weight: "+weight+"}", 1)
	}
	return applianceYAML(f, "198.18.0.2", "2001:db8::2", "announce:\n  l2:\n    interfaces: [eth0]\nservices:\n"+
		web4+serviceYAML("web6", "2001:db8:100::1", addrs, check))
}

func startOpsDaemon(t *testing.T) *opsDaemon {
	t.Helper()
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	o := &opsDaemon{bin: bin}
	o.topo = testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	o.srv, err = scenario.StartServers(o.topo, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.srv.Close() })
	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	o.cfgPath = filepath.Join(dir, "xdplb.yaml")
	o.socket = filepath.Join(dir, "xdplb.sock")
	for _, b := range o.topo.Backends {
		o.addrs = append(o.addrs, b.IPv4.String())
	}
	o.config = opsConfig(testFiles{Socket: o.socket, State: dir + "/state", BPF: bpf, Metrics: "127.0.0.1:9650"}, o.addrs, "")
	writeAtomically(t, o.cfgPath, o.config)
	o.d = startTestDaemon(t, bin, o.topo.LB.NS, o.cfgPath, o.socket)
	t.Cleanup(func() {
		o.d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("log of xdplb run:\n%s", o.d.log)
		}
	})
	o.prom = promtest.StartWith(t, "127.0.0.1:9650", promtest.Options{NS: o.topo.LB.NS})
	return o
}

func TestDashboardQueries(t *testing.T) {
	queries := dashboardQueries(t)
	o := startOpsDaemon(t)
	ctx := context.Background()
	bin, socket, cfgPath, config, srv, prom := o.bin, o.socket, o.cfgPath, o.config, o.srv, o.prom
	var err error

	// Traffic, until the queries are done: rates need two scrapes of it.
	tctx, stopTraffic := context.WithCancel(ctx)
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for tctx.Err() == nil {
			for _, vip := range []netip.Addr{scenario.VIP4, scenario.VIP6} {
				if _, err := srv.Connections(tctx, vip, 20, 4); err != nil && tctx.Err() == nil {
					t.Logf("traffic to %s: %v", vip, err)
				}
			}
			select {
			case <-tctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	defer func() {
		stopTraffic()
		<-trafficDone
	}()
	// A reload, for the reload panel and annotation, once Prometheus has
	// scraped the counter before it.
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = prom.WaitFor(wctx, `xdplb_config_reloads_total{result="success"}`, func(v promtest.Vector) bool { return len(v) == 1 })
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * promtest.ScrapeInterval)
	writeAtomically(t, cfgPath, config+"# edited\n")
	if out, err := cli(t, bin, "reload", "--socket", socket); err != nil {
		t.Fatalf("xdplb reload: %v\n%s", err, out)
	}

	deadline, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for _, q := range queries {
		expr := grafanaVars.Replace(q.expr)
		if strings.Contains(expr, "$") {
			t.Errorf("%s: a variable the test does not replace: %s", q.where, expr)
			continue
		}
		// A query Prometheus cannot parse is answered 400 at once.
		if _, err := prom.Query(deadline, expr); err != nil && strings.Contains(err.Error(), "400 Bad Request") {
			t.Errorf("%s: %s: %v", q.where, expr, err)
			continue
		}
		v, err := prom.WaitFor(deadline, expr, func(v promtest.Vector) bool { return len(v) > 0 })
		if err != nil {
			t.Errorf("%s: %s: no data: %v", q.where, expr, err)
			continue
		}
		t.Logf("%s: %d series, e.g. %v", q.where, len(v), v[0])
	}
}
