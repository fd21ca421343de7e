package config

import (
	"net/netip"
	"slices"
)

// Service is a service resolved for the datapath: its VIP known, its
// defaults applied, nothing left of the YAML. Its slices belong to it.
type Service struct {
	Name string
	Addr netip.Addr
	// Protocol is TCP or UDP.
	Protocol Protocol
	// Ports are the VIP's ports, ascending; [0] means every port.
	Ports []uint16
	// Mode is ModeDSR or ModeSNAT.
	Mode Mode
	// Encap is how a DSR service reaches its backends.
	Encap     Encap
	TableSize int
	Backends  []Backend
	// MinHealthyBackends is the number of healthy backends below which the
	// service counts as down.
	MinHealthyBackends int
	// Announce says whether the VIP is announced, on the L2 interfaces and
	// by BGP.
	Announce bool
	// HealthCheck is how the backends are checked. Its Port is 0 when the
	// file does not set it: each backend is then checked on its own port,
	// or on the service's lowest port when it has none.
	HealthCheck HealthCheck
}

// Backend is a backend of a [Service].
type Backend struct {
	Addr netip.Addr
	// Port is the backend's port, or 0 for the port the client connected
	// to. DSR ignores it.
	Port uint16
	// Weight is the backend's relative share of new flows, from 0
	// (draining) to MaxWeight.
	Weight uint32
}

// Services resolves the services of the file in file order. alloc holds the
// addresses an [Allocator] gave to services that name a pool; such a service
// without an address in alloc (its pool is exhausted) is left out.
func (c *Config) Services(alloc map[string]netip.Addr) []Service {
	out := make([]Service, 0, len(c.ServiceSpecs))
	for _, s := range c.ServiceSpecs {
		addr := s.Address
		if s.Pool != "" {
			a, ok := alloc[s.Name]
			if !ok {
				continue
			}
			addr = a
		}
		ports := slices.Clone(s.Ports)
		slices.Sort(ports)
		backends := make([]Backend, len(s.Backends))
		for i, b := range s.Backends {
			backends[i] = Backend{Addr: b.Address, Port: b.Port, Weight: b.Weight}
		}
		out = append(out, Service{
			Name:               s.Name,
			Addr:               addr,
			Protocol:           s.Protocol,
			Ports:              ports,
			Mode:               s.Mode,
			Encap:              s.Encap,
			TableSize:          s.TableSize,
			Backends:           backends,
			MinHealthyBackends: s.MinHealthyBackends,
			Announce:           s.Announce,
			HealthCheck:        s.HealthCheck.clone(),
		})
	}
	return out
}
