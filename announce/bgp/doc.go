// Package bgp announces the appliance's VIPs by BGP: an embedded GoBGP
// speaker (github.com/osrg/gobgp/v3, its server package) sends every peer a
// host route, a /32 or a /128, for each VIP the control plane calls
// announceable, with the appliance's own address on the peering link as the
// next hop, and withdraws it when the VIP stops being announceable. Several
// appliances announcing the same VIPs make a router spread flows over them
// by ECMP; since they all build the same Maglev tables, a flow moved from one
// appliance to another still reaches the same backend.
//
// A [Speaker] is a second implementation of the control plane's Announcer,
// next to the L2 announcer of package announce. It restarts gracefully (RFC
// 4724): when the daemon stops, the sessions are closed without a
// NOTIFICATION, so routers keep the routes for the restart time while the
// pinned datapath keeps forwarding, and a restarted daemon that took the
// datapath over says so with the forwarding-state bit. A dead appliance is
// still withdrawn when the router's hold timer expires: the speaker never
// negotiates RFC 8538's notification mode.
//
// Draining withdraws every route, or keeps them tagged with the
// GRACEFUL_SHUTDOWN community (RFC 8326) so that routers that honour it move
// traffic away first.
package bgp
