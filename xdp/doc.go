// Package xdp owns xdplb's datapath: the XDP load-balancer program and the
// backend-side decapsulation program (C sources in bpf/, built by bpf2go and
// committed), their loader, and typed access to their maps.
//
// A Datapath loads the program with its knobs, pins its maps under a pin
// directory and reuses them when opened again, so a restarted daemon keeps
// established flows and counters. Services (VIPs) get a Maglev table each;
// SetTable swaps a VIP's table atomically and keeps the previous one for a
// grace period, during which flows whose slot moved are pinned to the backend
// they started on (see docs/architecture.md). Everything above this package
// talks in netip addresses, backend ids and tables; map layouts stay here.
package xdp
