// Package controlplane is the running xdplb appliance: it loads the
// configuration file, merges the services of every source (the file, and
// others such as a Kubernetes watcher) with a first-claimant-keeps rule for
// VIPs two sources offer, and runs the one loop that brings the datapath in
// line with them through the reconciler (package lb), given the backends'
// health (package lb/health) and their next hops as the kernel's neighbours
// and routes say. From what is applied it decides once which VIPs are
// announceable and hands them to every Announcer: the L2 announcers of
// announce.l2 (silent on standby when an outside election drives them) and
// the BGP speaker of announce.bgp, which it drains and undrains on request.
// It answers the status that the control socket and the metrics collector
// of cmd/xdplb serve, and kicks systemd's watchdog from its loop.
package controlplane
