// Package kubernetes is the Kubernetes source of services: it watches
// Services of type LoadBalancer of one loadBalancerClass, their
// EndpointSlices (and Nodes, for backends on NodePorts) with client-go shared
// informers and offers the control plane one service per Service port and
// address, named namespace/name:port. The leader of the appliances (a
// coordination.k8s.io Lease) gives each Service an address per family from
// the configuration's pools and writes it into the Service's status; every
// appliance, the leader too, programs its datapath from the addresses in
// the status, so all of them build the same tables and a change of leader
// changes nothing in any datapath.
//
// Nothing is offered before the caches have synced; an API server that goes
// away leaves the last offer in place until the watches resume.
package kubernetes
