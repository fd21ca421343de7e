package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdplb/xdplb/announce"
)

// announceSource is implemented by a metrics source that announces VIPs.
type announceSource interface {
	// AnnounceStats returns the counters of each interface's announcer.
	AnnounceStats() []announce.Stats
}

var (
	announceVIPLabels   = []string{"interface", "vip"}
	announceProtoLabels = []string{"interface", "protocol"}

	announceActiveDesc = prometheus.NewDesc("xdplb_announce_active",
		"1 for each VIP the appliance answers ARP or NDP for on an interface.", announceVIPLabels, nil)
	announceRequestsDesc = prometheus.NewDesc("xdplb_announce_requests_total",
		"ARP requests and neighbour solicitations received for a VIP since it became active.", announceVIPLabels, nil)
	announceRepliesDesc = prometheus.NewDesc("xdplb_announce_replies_total",
		"ARP replies and neighbour advertisements sent for a VIP since it became active.", announceVIPLabels, nil)
	announceGratuitousDesc = prometheus.NewDesc("xdplb_announce_gratuitous_total",
		"Gratuitous ARP packets and unsolicited neighbour advertisements sent for a VIP since it became active.", announceVIPLabels, nil)
	announceReceivedDesc = prometheus.NewDesc("xdplb_announce_received_total",
		"ARP or NDP frames the announcer of an interface received.", announceProtoLabels, nil)
	announceDropsDesc = prometheus.NewDesc("xdplb_announce_drops_total",
		"ARP or NDP frames received and not answered, by reason.", append(announceProtoLabels, "reason"), nil)
	announceSendErrorsDesc = prometheus.NewDesc("xdplb_announce_send_errors_total",
		"Replies and gratuitous packets the interface's socket refused.", announceProtoLabels, nil)
)

// healthSource is implemented by a metrics source that checks backends.
type healthSource interface {
	// HealthTransitions counts backends going up and down.
	HealthTransitions() (toUp, toDown uint64)
}

var healthTransitionsDesc = prometheus.NewDesc("xdplb_backend_health_transitions_total",
	"Backends that went up or down by their health checks since the daemon started.", []string{"to"}, nil)

// healthCollector exports the health checks' transitions.
type healthCollector struct{ src healthSource }

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- healthTransitionsDesc }

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	up, down := c.src.HealthTransitions()
	ch <- prometheus.MustNewConstMetric(healthTransitionsDesc, prometheus.CounterValue, float64(up), "up")
	ch <- prometheus.MustNewConstMetric(healthTransitionsDesc, prometheus.CounterValue, float64(down), "down")
}

// announceCollector exports the announcers' counters at scrape time.
type announceCollector struct{ src announceSource }

func (c announceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{announceActiveDesc, announceRequestsDesc, announceRepliesDesc,
		announceGratuitousDesc, announceReceivedDesc, announceDropsDesc, announceSendErrorsDesc} {
		ch <- d
	}
}

func (c announceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.AnnounceStats() {
		for _, v := range s.VIPs {
			vip := v.VIP.String()
			ch <- prometheus.MustNewConstMetric(announceActiveDesc, prometheus.GaugeValue, 1, s.Interface, vip)
			ch <- prometheus.MustNewConstMetric(announceRequestsDesc, prometheus.CounterValue, float64(v.Requests), s.Interface, vip)
			ch <- prometheus.MustNewConstMetric(announceRepliesDesc, prometheus.CounterValue, float64(v.Replies), s.Interface, vip)
			ch <- prometheus.MustNewConstMetric(announceGratuitousDesc, prometheus.CounterValue, float64(v.Gratuitous), s.Interface, vip)
		}
		for proto, p := range map[string]announce.ProtocolStats{"arp": s.ARP, "ndp": s.NDP} {
			ch <- prometheus.MustNewConstMetric(announceReceivedDesc, prometheus.CounterValue, float64(p.Received), s.Interface, proto)
			ch <- prometheus.MustNewConstMetric(announceSendErrorsDesc, prometheus.CounterValue, float64(p.SendErrors), s.Interface, proto)
			for reason, n := range p.Drops {
				ch <- prometheus.MustNewConstMetric(announceDropsDesc, prometheus.CounterValue, float64(n), s.Interface, proto, reason.Label())
			}
		}
	}
}

// sourceConflicts is implemented by a metrics source that merges several
// sources of services.
type sourceConflicts interface {
	// Conflicts returns, for each source, how many of its claims another
	// source holds.
	Conflicts() map[string]int
}

var sourceConflictsDesc = prometheus.NewDesc("xdplb_source_conflicts",
	"VIPs (address, port and protocol) and service names a source offers that another source already holds; they are left out until the holder lets them go.", []string{"source"}, nil)

// conflictCollector exports the sources' conflicts.
type conflictCollector struct{ src sourceConflicts }

func (c conflictCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sourceConflictsDesc }

func (c conflictCollector) Collect(ch chan<- prometheus.Metric) {
	for source, n := range c.src.Conflicts() {
		ch <- prometheus.MustNewConstMetric(sourceConflictsDesc, prometheus.GaugeValue, float64(n), source)
	}
}
