package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// bgpSource is implemented by a metrics source that may run a BGP speaker.
type bgpSource interface {
	// BGPMetrics returns the speaker's status, or false without one.
	BGPMetrics() (BGPInfo, bool)
	// L2State returns the mode and state of the L2 announcers.
	L2StateMetrics() L2StateInfo
}

// bgpStates are the session states of RFC 4271, as BGPPeerInfo names them.
var bgpStates = []string{"idle", "connect", "active", "opensent", "openconfirm", "established"}

var (
	bgpSessionStateDesc = prometheus.NewDesc("xdplb_bgp_session_state",
		"1 for the state the BGP session with a peer is in, 0 for the others.", []string{"peer", "state"}, nil)
	bgpPrefixesSentDesc = prometheus.NewDesc("xdplb_bgp_prefixes_sent",
		"Prefixes the speaker has sent to a peer and not withdrawn.", []string{"peer"}, nil)
	bgpPrefixesReceivedDesc = prometheus.NewDesc("xdplb_bgp_prefixes_received",
		"Prefixes a peer has sent the speaker.", []string{"peer"}, nil)
	bgpRoutesDesc = prometheus.NewDesc("xdplb_bgp_routes_advertised",
		"Host routes of VIPs in the speaker's RIB, advertised to every established peer.", nil, nil)
	bgpDrainedDesc = prometheus.NewDesc("xdplb_bgp_drained",
		"1 while the appliance is drained (xdplb drain), else 0.", nil, nil)
	l2ActiveDesc = prometheus.NewDesc("xdplb_announce_l2_active",
		"1 while the L2 announcers answer for the VIPs, 0 on standby (announce.l2.mode external).", []string{"mode"}, nil)
)

// bgpCollector exports the speaker's sessions and routes at scrape time.
type bgpCollector struct{ src bgpSource }

func (c bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bgpSessionStateDesc, bgpPrefixesSentDesc, bgpPrefixesReceivedDesc, bgpRoutesDesc, bgpDrainedDesc, l2ActiveDesc} {
		ch <- d
	}
}

func (c bgpCollector) Collect(ch chan<- prometheus.Metric) {
	l2 := c.src.L2StateMetrics()
	if l2.Mode != "" {
		ch <- prometheus.MustNewConstMetric(l2ActiveDesc, prometheus.GaugeValue, boolFloat(l2.State == "active"), l2.Mode)
	}
	b, ok := c.src.BGPMetrics()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(bgpRoutesDesc, prometheus.GaugeValue, float64(len(b.Routes)))
	ch <- prometheus.MustNewConstMetric(bgpDrainedDesc, prometheus.GaugeValue, boolFloat(b.Drained))
	for _, p := range b.Peers {
		for _, s := range bgpStates {
			ch <- prometheus.MustNewConstMetric(bgpSessionStateDesc, prometheus.GaugeValue, boolFloat(p.State == s), p.Address, s)
		}
		ch <- prometheus.MustNewConstMetric(bgpPrefixesSentDesc, prometheus.GaugeValue, float64(p.Sent), p.Address)
		ch <- prometheus.MustNewConstMetric(bgpPrefixesReceivedDesc, prometheus.GaugeValue, float64(p.Received), p.Address)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
