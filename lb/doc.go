// Package lb holds the load-balancing logic of xdplb that does not touch the
// kernel: it decides which backend owns which part of the flow space and
// leaves programming the datapath to package xdp.
//
// Its centrepiece is the Maglev consistent-hashing table (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
// §3.4). A table is a prime number of slots, each holding a backend ID; the
// datapath hashes a flow's 5-tuple to a slot and sends the flow to that slot's
// backend. Every appliance in a fleet that is given the same seed and the same
// backends builds the same table, byte for byte, so a flow lands on the same
// backend whichever appliance ECMP picks, and adding or removing a backend
// moves few flows that belonged to the others. See [MaglevBuilder] for the
// exact algorithm, which is part of the fleet's wire contract.
//
// The package will also hold the reconciler, which turns the running
// configuration and backend health into tables and pushes them to the
// datapath.
package lb
