package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xdplb/xdplb/xdp"
)

// Metrics are read from the daemon at scrape time: every scrape of /metrics
// asks metricsSource for the current counters (summed over CPUs from the BPF
// maps), so there is no cache to go stale and no goroutine to own. Each
// metric is described in docs/metrics.md; a test checks that the page lists
// every name the handler serves.

// metricsSource is what the metrics collector reads at scrape time. The
// daemon implements it; tests use a fake.
type metricsSource interface {
	// DatapathCounters returns the global verdict and event counters.
	DatapathCounters() ([]xdp.Counter, error)
	// VIPMetrics returns each VIP (address, port, protocol) with its counters.
	VIPMetrics() ([]VIPMetric, error)
	// BackendMetrics returns each backend of each VIP with its counters.
	BackendMetrics() ([]BackendMetric, error)
	// ConntrackEntries returns the pinned flows per family as of the last
	// maintenance pass, and the capacity of each family's table.
	ConntrackEntries() (v4, v6, capacity int)
	// NATStats returns the NAT table's use and the SNAT counters.
	NATStats() (xdp.NATStats, error)
	// ConfigSHA256 returns the hex SHA-256 of the running configuration
	// file, or "" before one is loaded.
	ConfigSHA256() string
	// ReloadCounts returns how many configuration loads succeeded and failed
	// since the daemon started.
	ReloadCounts() (success, failure uint64)
}

var (
	vipLabels     = []string{"service", "vip", "port", "protocol"}
	backendLabels = []string{"service", "vip", "port", "protocol", "backend"}

	vipPacketsDesc = prometheus.NewDesc("xdplb_vip_packets_total",
		"Packets sent to the VIP (address, port and protocol) that the XDP program handed to backend selection, including those then dropped for want of a backend.",
		vipLabels, nil)
	vipBytesDesc = prometheus.NewDesc("xdplb_vip_bytes_total",
		"Bytes of the packets counted by xdplb_vip_packets_total, as received: whole Ethernet frames, VLAN tag included, before any encapsulation.",
		vipLabels, nil)
	vipNewFlowsDesc = prometheus.NewDesc("xdplb_vip_new_flows_total",
		"TCP SYN packets (SYN without ACK) counted by xdplb_vip_packets_total: connection attempts, always 0 for UDP.",
		vipLabels, nil)

	backendPacketsDesc = prometheus.NewDesc("xdplb_backend_packets_total",
		"Packets of the VIP for which the XDP program chose this backend, by its Maglev table or a flow pin.",
		backendLabels, nil)
	backendBytesDesc = prometheus.NewDesc("xdplb_backend_bytes_total",
		"Bytes of the packets counted by xdplb_backend_packets_total, as received: whole Ethernet frames, before any encapsulation.",
		backendLabels, nil)
	backendNewFlowsDesc = prometheus.NewDesc("xdplb_backend_new_flows_total",
		"TCP SYN packets (SYN without ACK) of the VIP sent to this backend: connection attempts, always 0 for UDP.",
		backendLabels, nil)
	backendUpDesc = prometheus.NewDesc("xdplb_backend_up",
		"Whether the backend is usable for the VIP (1) or down (0); a down backend gets no new flows.",
		backendLabels, nil)

	datapathPacketsDesc = prometheus.NewDesc("xdplb_datapath_packets_total",
		"Packets the XDP program finished with, by verdict (action: pass, drop, tx, redirect) and reason; each packet is counted exactly once.",
		[]string{"action", "reason"}, nil)
	datapathEventsDesc = prometheus.NewDesc("xdplb_datapath_events_total",
		"Things that happened to packets in the XDP program on their way to a verdict, by event; a packet may count under several events or none.",
		[]string{"event"}, nil)

	conntrackEntriesDesc = prometheus.NewDesc("xdplb_conntrack_entries",
		"Flows pinned to a backend in the connection-tracking table of the address family, as of the last maintenance pass.",
		[]string{"family"}, nil)
	conntrackCapacityDesc = prometheus.NewDesc("xdplb_conntrack_capacity",
		"Flows the connection-tracking table of the address family can hold (conntrack.maxFlows).",
		[]string{"family"}, nil)

	snatFlowsDesc = prometheus.NewDesc("xdplb_snat_flows",
		"NAT flows of snat services (both directions of each), as of the last maintenance pass.", nil, nil)
	snatCapacityDesc = prometheus.NewDesc("xdplb_snat_capacity",
		"NAT flows of each family the NAT tables are sized for (conntrack.maxNATFlows); a new flow whose buckets are full is dropped (reason snat_table_full) and established ones are untouched.", nil, nil)
	snatSourceFlowsDesc = prometheus.NewDesc("xdplb_snat_source_flows_total",
		"NAT flows created with the SNAT source.", []string{"source"}, nil)
	snatAllocFailDesc = prometheus.NewDesc("xdplb_snat_allocation_failures_total",
		"New flows dropped because every port of the SNAT source they tried was taken toward their backend.", []string{"source"}, nil)
	snatExpiredDesc = prometheus.NewDesc("xdplb_snat_expired_total",
		"NAT flows removed by the daemon since it started, by reason: tcp_established_idle, tcp_transitory_idle, udp_idle, orphan.", []string{"reason"}, nil)

	configReloadsDesc = prometheus.NewDesc("xdplb_config_reloads_total",
		"Configuration reloads since the daemon started (SIGHUP, xdplb reload, a changed file), by result: success (applied) or failure (refused; the running configuration is kept).",
		[]string{"result"}, nil)
	configInfoDesc = prometheus.NewDesc("xdplb_config_info",
		"The running configuration, identified by the SHA-256 of its file; always 1.",
		[]string{"sha256"}, nil)
	buildInfoDesc = prometheus.NewDesc("xdplb_build_info",
		"The xdplb binary: its version, the Go version that built it and the VCS revision; always 1.",
		[]string{"version", "goversion", "revision"}, nil)
)

// eventAction is the xdp.Counter Action of event counters, which count
// happenings rather than verdicts.
const eventAction = "event"

// metricsCollector is the prometheus.Collector for everything xdplb
// exports. It reads its source on every Collect.
type metricsCollector struct {
	src   metricsSource
	build []string // version, goversion, revision label values
}

func newMetricsCollector(src metricsSource) *metricsCollector {
	return &metricsCollector{src: src, build: buildLabels()}
}

// buildLabels returns the label values of xdplb_build_info.
func buildLabels() []string {
	v, rev := version, ""
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	if v == "" {
		v = "unknown"
	}
	if rev == "" {
		rev = "unknown"
	}
	return []string{v, runtime.Version(), rev}
}

// Describe implements prometheus.Collector.
func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		vipPacketsDesc, vipBytesDesc, vipNewFlowsDesc,
		backendPacketsDesc, backendBytesDesc, backendNewFlowsDesc, backendUpDesc,
		datapathPacketsDesc, datapathEventsDesc,
		conntrackEntriesDesc, conntrackCapacityDesc,
		snatFlowsDesc, snatCapacityDesc, snatSourceFlowsDesc, snatAllocFailDesc, snatExpiredDesc,
		configReloadsDesc, configInfoDesc, buildInfoDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A source that fails is reported
// as an invalid metric, which fails the scrape with the error text rather
// than serving a silently incomplete one.
func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	if cs, err := c.src.DatapathCounters(); err != nil {
		ch <- prometheus.NewInvalidMetric(datapathPacketsDesc, fmt.Errorf("reading datapath counters: %w", err))
	} else {
		for _, k := range cs {
			if k.Action == eventAction {
				counter(datapathEventsDesc, k.Value, k.Reason)
			} else {
				counter(datapathPacketsDesc, k.Value, k.Action, k.Reason)
			}
		}
	}

	if vs, err := c.src.VIPMetrics(); err != nil {
		ch <- prometheus.NewInvalidMetric(vipPacketsDesc, fmt.Errorf("reading VIP counters: %w", err))
	} else {
		for _, v := range vs {
			l := []string{v.Service, v.VIP, v.Port, v.Protocol}
			counter(vipPacketsDesc, v.Stats.Packets, l...)
			counter(vipBytesDesc, v.Stats.Bytes, l...)
			counter(vipNewFlowsDesc, v.Stats.NewFlows, l...)
		}
	}

	if bs, err := c.src.BackendMetrics(); err != nil {
		ch <- prometheus.NewInvalidMetric(backendPacketsDesc, fmt.Errorf("reading backend counters: %w", err))
	} else {
		for _, b := range bs {
			l := []string{b.Service, b.VIP, b.Port, b.Protocol, b.Backend}
			counter(backendPacketsDesc, b.Stats.Packets, l...)
			counter(backendBytesDesc, b.Stats.Bytes, l...)
			counter(backendNewFlowsDesc, b.Stats.NewFlows, l...)
			up := 0.0
			if b.Up {
				up = 1
			}
			gauge(backendUpDesc, up, l...)
		}
	}

	v4, v6, capacity := c.src.ConntrackEntries()
	gauge(conntrackEntriesDesc, float64(v4), "ipv4")
	gauge(conntrackEntriesDesc, float64(v6), "ipv6")
	gauge(conntrackCapacityDesc, float64(capacity), "ipv4")
	gauge(conntrackCapacityDesc, float64(capacity), "ipv6")

	if ns, err := c.src.NATStats(); err != nil {
		ch <- prometheus.NewInvalidMetric(snatFlowsDesc, fmt.Errorf("reading NAT counters: %w", err))
	} else {
		gauge(snatFlowsDesc, float64(ns.Flows))
		gauge(snatCapacityDesc, float64(ns.Capacity))
		for _, s := range ns.Sources {
			counter(snatSourceFlowsDesc, s.Flows, s.Source.String())
			counter(snatAllocFailDesc, s.AllocFailures, s.Source.String())
		}
		for _, r := range xdp.NATExpireReasons {
			counter(snatExpiredDesc, ns.Expired[r], r)
		}
	}

	ok, failed := c.src.ReloadCounts()
	counter(configReloadsDesc, ok, "success")
	counter(configReloadsDesc, failed, "failure")
	if sum := c.src.ConfigSHA256(); sum != "" {
		gauge(configInfoDesc, 1, sum)
	}
	gauge(buildInfoDesc, 1, c.build...)
}

// newMetricsHandler serves /metrics (xdplb's collector and the Go runtime and
// process collectors, in a registry of its own), /healthz (200 while the
// process serves) and /readyz (200 when ready returns nil, else 503 with the
// error). A nil ready means always ready.
func newMetricsHandler(src metricsSource, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(newMetricsRegistry(src), promhttp.HandlerOpts{
		ErrorHandling: promhttp.HTTPErrorOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			if err := ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, err)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// newMetricsRegistry returns a registry of xdplb's collector, the
// announcers' (when src announces) and the Go runtime and process collectors.
func newMetricsRegistry(src metricsSource) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newMetricsCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if as, ok := src.(announceSource); ok {
		reg.MustRegister(announceCollector{as})
	}
	if hs, ok := src.(healthSource); ok {
		reg.MustRegister(healthCollector{hs})
	}
	if cs, ok := src.(interface{ Collectors() []prometheus.Collector }); ok {
		reg.MustRegister(cs.Collectors()...)
	}
	if cs, ok := src.(sourceConflicts); ok {
		reg.MustRegister(conflictCollector{cs})
	}
	if bs, ok := src.(bgpSource); ok {
		reg.MustRegister(bgpCollector{bs})
	}
	return reg
}

// metricsShutdownTimeout bounds how long serveMetrics waits for scrapes in
// progress when its context ends.
const metricsShutdownTimeout = 5 * time.Second

// serveMetrics serves h on addr until ctx is done, then shuts the server down
// gracefully and returns nil. An address it cannot listen on is returned at
// once, so the daemon fails fast; a later serving error is returned as it
// happens.
func serveMetrics(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %q: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("serving metrics", "address", ln.Addr().String())

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), metricsShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-done
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	log.Info("stopped serving metrics")
	return nil
}
