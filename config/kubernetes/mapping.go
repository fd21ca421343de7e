package kubernetes

import (
	"net/netip"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/xdplb/xdplb/config"
)

// ServiceName is the name of the service of one port and address of a
// Kubernetes Service, as `xdplb vips` shows it: namespace/name:port, then
// /udp for a UDP port and /v6 for the IPv6 address of the Service.
func ServiceName(namespace, name string, port int32, proto corev1.Protocol, addr netip.Addr) string {
	s := namespace + "/" + name + ":" + strconv.Itoa(int(port))
	if proto == corev1.ProtocolUDP {
		s += "/udp"
	}
	if addr.Is6() {
		s += "/v6"
	}
	return s
}

// inClass reports whether the source serves svc: a LoadBalancer Service of
// the configured class (or of none, with defaultClass).
func inClass(svc *corev1.Service, k *config.Kubernetes) bool {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil {
		return k.DefaultClass
	}
	return *svc.Spec.LoadBalancerClass == k.LoadBalancerClass
}

// ingressAddrs are the addresses in a Service's status.
func ingressAddrs(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil && a.Zone() == "" {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// weights of endpoints by their conditions: ready serves traffic, serving
// and terminating drains (established flows stay, no new ones), anything
// else is no backend.
const (
	weightReady    = config.DefaultWeight
	weightDraining = 0
)

// endpointWeight returns the weight of an endpoint and whether it is a
// backend at all. Unset conditions are read as the API documents them:
// ready and serving unknown count as true, terminating unknown as false.
func endpointWeight(c discoveryv1.EndpointConditions) (uint32, bool) {
	ready := c.Ready == nil || *c.Ready
	serving := c.Serving == nil || *c.Serving
	terminating := c.Terminating != nil && *c.Terminating
	switch {
	case ready && !terminating:
		return weightReady, true
	case serving && terminating:
		return weightDraining, true
	}
	return 0, false
}

// mapService returns the services of one Kubernetes Service: one per port
// and address. slices are the Service's EndpointSlices; nodes are used for
// backends on NodePorts.
func mapService(svc *corev1.Service, addrs []netip.Addr, st settings, slices_ []*discoveryv1.EndpointSlice, nodes []*corev1.Node, k *config.Kubernetes) []config.Service {
	var out []config.Service
	for _, addr := range addrs {
		for _, p := range svc.Spec.Ports {
			var proto config.Protocol
			switch p.Protocol {
			case corev1.ProtocolTCP, "":
				proto = config.ProtocolTCP
			case corev1.ProtocolUDP:
				proto = config.ProtocolUDP
			default:
				continue // SCTP: the datapath forwards TCP and UDP only
			}
			var backends []config.Backend
			if k.Backends == config.BackendsNodes {
				backends = nodeBackends(svc, p, addr, slices_, nodes)
			} else {
				backends = podBackends(p, addr, slices_)
			}
			out = append(out, config.Service{
				Name:               ServiceName(svc.Namespace, svc.Name, p.Port, p.Protocol, addr),
				Addr:               addr,
				Protocol:           proto,
				Ports:              []uint16{uint16(p.Port)},
				Mode:               st.Mode,
				Encap:              st.Encap,
				TableSize:          st.TableSize,
				Backends:           backends,
				MinHealthyBackends: config.DefaultMinHealthyBackends,
				Announce:           true,
				HealthCheck:        st.HealthCheck,
			})
		}
	}
	return out
}

// podBackends are the endpoints of the slices of addr's family with the
// port the slices name for the Service port p; an address of the other
// family in a slice (which the API server refuses) is no backend either.
// An address in several slices counts once, with its highest weight.
func podBackends(p corev1.ServicePort, addr netip.Addr, eps []*discoveryv1.EndpointSlice) []config.Backend {
	byAddr := map[netip.Addr]config.Backend{}
	for _, es := range eps {
		if (addr.Is4() && es.AddressType != discoveryv1.AddressTypeIPv4) || (addr.Is6() && es.AddressType != discoveryv1.AddressTypeIPv6) {
			continue
		}
		port, ok := slicePort(es, p)
		if !ok {
			continue
		}
		for _, ep := range es.Endpoints {
			w, ok := endpointWeight(ep.Conditions)
			if !ok {
				continue
			}
			for _, s := range ep.Addresses {
				a, err := netip.ParseAddr(s)
				if err != nil || a.Unmap().Is4() != addr.Is4() {
					continue // of another family: snat does not translate between families
				}
				a = a.Unmap()
				if old, ok := byAddr[a]; ok && old.Weight >= w {
					continue
				}
				byAddr[a] = config.Backend{Addr: a, Port: port, Weight: w}
			}
		}
	}
	return sortedBackends(byAddr)
}

// slicePort is the port a slice gives the Service port p: the one of the
// same name and protocol.
func slicePort(es *discoveryv1.EndpointSlice, p corev1.ServicePort) (uint16, bool) {
	for _, sp := range es.Ports {
		name := ""
		if sp.Name != nil {
			name = *sp.Name
		}
		proto := corev1.ProtocolTCP
		if sp.Protocol != nil {
			proto = *sp.Protocol
		}
		pproto := p.Protocol
		if pproto == "" {
			pproto = corev1.ProtocolTCP
		}
		if name == p.Name && proto == pproto && sp.Port != nil {
			return uint16(*sp.Port), true
		}
	}
	return 0, false
}

// nodeBackends are the ready nodes, with an address of addr's family, on
// the Service port's NodePort. With externalTrafficPolicy Local only the
// nodes with a ready endpoint of the Service are backends.
func nodeBackends(svc *corev1.Service, p corev1.ServicePort, addr netip.Addr, eps []*discoveryv1.EndpointSlice, nodes []*corev1.Node) []config.Backend {
	if p.NodePort == 0 {
		return nil
	}
	local := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	withEndpoint := map[string]bool{}
	for _, es := range eps {
		for _, ep := range es.Endpoints {
			if w, ok := endpointWeight(ep.Conditions); ok && w > 0 && ep.NodeName != nil {
				withEndpoint[*ep.NodeName] = true
			}
		}
	}
	byAddr := map[netip.Addr]config.Backend{}
	for _, n := range nodes {
		if !nodeReady(n) || (local && !withEndpoint[n.Name]) {
			continue
		}
		for _, na := range n.Status.Addresses {
			if na.Type != corev1.NodeInternalIP {
				continue
			}
			a, err := netip.ParseAddr(na.Address)
			if err != nil || a.Unmap().Is4() != addr.Is4() {
				continue
			}
			byAddr[a.Unmap()] = config.Backend{Addr: a.Unmap(), Port: uint16(p.NodePort), Weight: weightReady}
			break
		}
	}
	return sortedBackends(byAddr)
}

func nodeReady(n *corev1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func sortedBackends(m map[netip.Addr]config.Backend) []config.Backend {
	out := make([]config.Backend, 0, len(m))
	for _, b := range m {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b config.Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// key is a Service's namespace/name.
func key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }
