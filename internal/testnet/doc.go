// Package testnet builds network namespaces for privileged tests and the demo.
//
// Every test network lives in namespaces this package creates (named under
// /run/netns, so `ip netns` and `nsenter` see them) and is joined to nothing
// else: hosts reach each other only through a bridge inside a "switch"
// namespace. The root namespace's interfaces, routes and sysctls are never
// touched. Addresses come only from 198.18.0.0/15 and 2001:db8::/32.
//
// [RequirePrivileged] is the one gate for privileged tests: it skips with a
// reason when the process is not root or the kernel lacks a feature, and fails
// instead when XDPLB_REQUIRE_PRIVILEGED=1, so CI never hides a failure behind a
// skip.
//
// [NewTopology] builds the LAN that the datapath end-to-end tests and `make
// demo` use: a client, a load balancer and backends, each in its own
// namespace, set up so that XDP on a veth behaves like XDP on a real NIC (see
// the comments on [NewTopology] for the veth pitfalls it works around).
package testnet
