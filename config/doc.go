// Package config reads xdplb's configuration file: one YAML file, by default
// /etc/xdplb/xdplb.yaml, that names the interfaces to attach to, the Maglev
// seed, the VIP pools and the services with their backends.
//
// Reading is strict, in the way CoreDNS reloads its Corefile: [Parse] decodes
// the YAML node by node, so that an unknown key, a value of the wrong type or
// a malformed value is an [Error] that names the item by its path
// (services[2].backends[0].address), quotes the value and gives its line and
// column; it then validates the file as a whole (duplicate names, a VIP port
// defined twice, overlapping pools, …). Every problem found is reported at
// once, as an [ErrorList] sorted by position, and a file with any problem
// yields no [Config] at all: the caller keeps running what it has.
//
// A parsed [Config] is the file as written, with defaults filled in. Services
// that take their address from a pool get it from an [Allocator], which keeps
// the allocations under the state directory so that a service keeps its
// address across reloads and restarts. [Config.Services] then resolves the
// file into plain [Service] values, the desired state the rest of the
// program consumes. [Check] does all of this without touching the host, for
// `xdplb check FILE`.
//
// The schema, its defaults and the error format are documented in
// docs/config.md.
package config
