package health

import (
	"net/netip"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

// Targets returns the targets of the backends of services that have a
// health check, keyed as the reconciler keys backends. A backend is checked
// on its address, at the check's port, else the backend's port, else the
// service's lowest port. Drained backends (weight 0) are checked too: a
// drained backend that goes down loses its established flows.
func Targets(services []config.Service) []Target {
	var out []Target
	for _, s := range services {
		h := s.HealthCheck
		if h.Type == config.HealthCheckNone || h.Type == "" {
			continue
		}
		var lowest uint16
		for _, p := range s.Ports {
			if p != 0 && (lowest == 0 || p < lowest) {
				lowest = p
			}
		}
		for _, b := range s.Backends {
			port := h.Port
			if port == 0 {
				port = b.Port
			}
			if port == 0 {
				port = lowest
			}
			if port == 0 {
				continue // config refuses this: nothing to check
			}
			out = append(out, Target{
				Key:   lb.BackendKey{Service: s.Name, Backend: netip.AddrPortFrom(b.Addr, b.Port)},
				Addr:  netip.AddrPortFrom(b.Addr, port),
				Check: h,
			})
		}
	}
	return out
}
