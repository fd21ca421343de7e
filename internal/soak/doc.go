// Package soak runs xdplb the way an appliance lives: the real daemon in a
// namespace topology (internal/testnet) carrying long-lived TCP connections
// and a steady stream of new ones through four VIPs (IPv4 and IPv6, DSR L2
// and DSR IPIP), while the soak keeps changing things under it: backends
// added, removed, reweighted and drained, whole services added and removed,
// the daemon restarted, backends' health flapped, and bad configurations
// sent. Every connection that breaks is classified at the end against the
// timeline of what happened: a break on a backend that had been removed or
// had gone down is expected (and must have come fast, as a reset); anything
// else is a defect. `go run ./bench soak` and the privileged test of
// package bench share it.
package soak
