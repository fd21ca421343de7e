package xdp

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Counter is one of the program's global counters.
type Counter struct {
	// Action is the verdict of the packets counted ("pass", "drop", "tx",
	// "redirect"), or "event" for things that happened to a packet on its way.
	Action string
	// Reason names it, as in docs/metrics.md.
	Reason string
	Value  uint64
}

type counterName struct{ action, reason string }

// counterNames names every counter of bpf/consts.h, index by index.
var counterNames = map[lbXdplbCounter]counterName{
	lbXdplbCounterCNT_PASS_NOT_IP:           {"pass", "not_ip"},
	lbXdplbCounterCNT_PASS_NOT_VIP:          {"pass", "not_vip"},
	lbXdplbCounterCNT_PASS_TRUNCATED:        {"pass", "truncated"},
	lbXdplbCounterCNT_PASS_BAD_L3:           {"pass", "bad_ip_header"},
	lbXdplbCounterCNT_PASS_VLAN_STACKED:     {"pass", "vlan_stacked"},
	lbXdplbCounterCNT_PASS_NDP:              {"pass", "ndp"},
	lbXdplbCounterCNT_PASS_NAT_NO_FLOW:      {"pass", "snat_no_flow"},
	lbXdplbCounterCNT_DROP_FRAGMENT:         {"drop", "fragment"},
	lbXdplbCounterCNT_DROP_FRAGMENT_UNKNOWN: {"drop", "fragment_unknown"},
	lbXdplbCounterCNT_DROP_IP_OPTIONS:       {"drop", "ip_options"},
	lbXdplbCounterCNT_DROP_IPV6EXT:          {"drop", "ipv6_extension_header"},
	lbXdplbCounterCNT_DROP_PROTOCOL:         {"drop", "protocol"},
	lbXdplbCounterCNT_DROP_BAD_L3:           {"drop", "bad_ip_header"},
	lbXdplbCounterCNT_DROP_TRUNCATED:        {"drop", "truncated"},
	lbXdplbCounterCNT_DROP_BAD_L4:           {"drop", "bad_tcp_header"},
	lbXdplbCounterCNT_DROP_NO_SERVICE:       {"drop", "no_service"},
	lbXdplbCounterCNT_DROP_NO_BACKEND:       {"drop", "no_backend"},
	lbXdplbCounterCNT_DROP_TOO_BIG_NO_DF:    {"drop", "too_big_df_clear"},
	lbXdplbCounterCNT_DROP_ICMP:             {"drop", "icmp"},
	lbXdplbCounterCNT_DROP_ADJUST:           {"drop", "adjust_failed"},
	lbXdplbCounterCNT_DROP_REDIRECT:         {"drop", "redirect_failed"},
	lbXdplbCounterCNT_DROP_UNSUPPORTED_MODE: {"drop", "unsupported_mode"},
	lbXdplbCounterCNT_DROP_NO_ENCAP_SOURCE:  {"drop", "no_encap_source"},
	lbXdplbCounterCNT_DROP_NAT_NO_SOURCE:    {"drop", "snat_no_source"},
	lbXdplbCounterCNT_DROP_NAT_NO_PORT:      {"drop", "snat_no_port"},
	lbXdplbCounterCNT_DROP_NAT_FULL:         {"drop", "snat_table_full"},
	lbXdplbCounterCNT_DROP_NAT_NO_FLOW:      {"drop", "snat_no_flow"},
	lbXdplbCounterCNT_DROP_NAT_UNSUPPORTED:  {"drop", "snat_unsupported"},
	lbXdplbCounterCNT_TX_L2:                 {"tx", "dsr_l2"},
	lbXdplbCounterCNT_REDIRECT_L2:           {"redirect", "dsr_l2"},
	lbXdplbCounterCNT_TX_IPIP:               {"tx", "dsr_ipip"},
	lbXdplbCounterCNT_REDIRECT_IPIP:         {"redirect", "dsr_ipip"},
	lbXdplbCounterCNT_TX_SNAT:               {"tx", "snat"},
	lbXdplbCounterCNT_REDIRECT_SNAT:         {"redirect", "snat"},
	lbXdplbCounterCNT_TX_SNAT_REPLY:         {"tx", "snat_reply"},
	lbXdplbCounterCNT_REDIRECT_SNAT_REPLY:   {"redirect", "snat_reply"},
	lbXdplbCounterCNT_TX_NAT_RST:            {"tx", "snat_rst"},
	lbXdplbCounterCNT_TX_SNAT_ICMP:          {"tx", "snat_icmp_error"},
	lbXdplbCounterCNT_REDIRECT_SNAT_ICMP:    {"redirect", "snat_icmp_error"},
	lbXdplbCounterCNT_TX_ICMP_ECHO:          {"tx", "icmp_echo_reply"},
	lbXdplbCounterCNT_TX_ICMP_TOO_BIG:       {"tx", "icmp_too_big"},
	lbXdplbCounterCNT_TX_ICMP_TIME_EXCEEDED: {"tx", "icmp_time_exceeded"},
	lbXdplbCounterCNT_TX_ICMP_ERROR:         {"tx", "icmp_error_to_backend"},
	lbXdplbCounterCNT_REDIRECT_ICMP_ERROR:   {"redirect", "icmp_error_to_backend"},
	lbXdplbCounterCNT_EV_PIN_CREATED:        {"event", "pin_created"},
	lbXdplbCounterCNT_EV_PIN_HIT:            {"event", "pin_hit"},
	lbXdplbCounterCNT_EV_PIN_STALE:          {"event", "pin_stale"},
	lbXdplbCounterCNT_EV_PIN_FULL:           {"event", "pin_table_full"},
	lbXdplbCounterCNT_EV_VLAN:               {"event", "vlan_tagged"},
	lbXdplbCounterCNT_EV_NEW_FLOW:           {"event", "tcp_syn"},
	lbXdplbCounterCNT_EV_FRAGMENT_FIRST:     {"event", "fragment_first"},
	lbXdplbCounterCNT_EV_FRAGMENT_FOLLOWED:  {"event", "fragment_followed"},
	lbXdplbCounterCNT_EV_NAT_CREATED:        {"event", "snat_flow_created"},
	lbXdplbCounterCNT_EV_NAT_PORT_RETRY:     {"event", "snat_port_retry"},
	lbXdplbCounterCNT_EV_NAT_BACKEND_LOST:   {"event", "snat_backend_lost"},
	lbXdplbCounterCNT_EV_PIN_BUSY:           {"event", "pin_bucket_busy"},
}

// Counters reads the global counters, summed over CPUs, in index order.
func (d *Datapath) Counters() ([]Counter, error) {
	out := make([]Counter, 0, lbXdplbCounterCOUNTER_MAX)
	var perCPU []uint64
	for i := lbXdplbCounter(0); i < lbXdplbCounterCOUNTER_MAX; i++ {
		if err := d.objs.Stats.Lookup(i, &perCPU); err != nil {
			return nil, fmt.Errorf("reading counter %d: %w", i, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		n := counterNames[i]
		out = append(out, Counter{Action: n.action, Reason: n.reason, Value: sum})
	}
	return out, nil
}

// Counter reads one counter by action and reason, summed over CPUs.
func (d *Datapath) Counter(action, reason string) (uint64, error) {
	for i, n := range counterNames {
		if n.action != action || n.reason != reason {
			continue
		}
		var perCPU []uint64
		if err := d.objs.Stats.Lookup(i, &perCPU); err != nil {
			return 0, fmt.Errorf("reading counter %s/%s: %w", action, reason, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		return sum, nil
	}
	return 0, fmt.Errorf("no counter %s/%s", action, reason)
}

// Stats are the counters of one VIP or backend, summed over CPUs.
type Stats struct {
	Packets, Bytes, NewFlows uint64
}

func sumStats(m *ebpf.Map, idx uint32) (Stats, error) {
	var perCPU []lbLbStats
	if err := m.Lookup(idx, &perCPU); err != nil {
		return Stats{}, err
	}
	var s Stats
	for _, v := range perCPU {
		s.Packets += v.Packets
		s.Bytes += v.Bytes
		s.NewFlows += v.NewFlows
	}
	return s, nil
}

// VIPStats reads a service's counters.
func (d *Datapath) VIPStats(k VIPKey) (Stats, error) {
	d.mu.Lock()
	st, ok := d.vips[k]
	d.mu.Unlock()
	if !ok {
		return Stats{}, fmt.Errorf("reading counters of %s: %w", k, ErrNotFound)
	}
	s, err := sumStats(d.objs.VipStats, st.meta.VipId)
	if err != nil {
		return s, fmt.Errorf("reading counters of %s: %w", k, err)
	}
	return s, nil
}

// BackendStats reads a backend's counters.
func (d *Datapath) BackendStats(id uint32) (Stats, error) {
	s, err := sumStats(d.objs.BackendStats, id)
	if err != nil {
		return s, fmt.Errorf("reading counters of backend %d: %w", id, err)
	}
	return s, nil
}
