package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults for settings the file leaves out. docs/config.md lists them too.
const (
	DefaultPath               = "/etc/xdplb/xdplb.yaml"
	DefaultTableSize          = 16381 // as lb.DefaultTableSize
	DefaultMaxFlows           = 1 << 20
	DefaultMaxNATFlows        = 1 << 18
	MaxMaxNATFlows            = 1 << 26
	DefaultIdleTimeout        = 15 * time.Minute
	DefaultGratuitousCount    = 3
	DefaultGratuitousInterval = time.Second
	DefaultBGPListenPort      = 179
	DefaultBGPHoldTime        = 90 * time.Second
	DefaultBGPRestartTime     = 120 * time.Second
	DefaultMetricsListen      = "127.0.0.1:9650"
	DefaultSocketPath         = "/run/xdplb/xdplb.sock"
	DefaultStateDir           = "/var/lib/xdplb"
	DefaultBPFDir             = "/sys/fs/bpf/xdplb"
	DefaultWeight             = 1
	DefaultMinHealthyBackends = 1

	DefaultSNATPortLo         = 1024
	DefaultSNATPortHi         = 32767
	DefaultSNATTCPEstablished = 6 * time.Hour
	DefaultSNATTCPTransitory  = 60 * time.Second
	DefaultSNATUDP            = 60 * time.Second

	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
	DefaultHealthPath     = "/"
)

// DefaultExpectStatus is the status codes an HTTP or HTTPS check accepts
// when the file does not say: 200 to 399.
var DefaultExpectStatus = StatusRanges{{200, 399}}

// Limits on values, checked when the file is read.
const (
	// MinTableSize and MaxTableSize bound a Maglev table size, which must
	// also be a prime. They repeat package lb's, since lb consumes config and
	// config may not import it; a test keeps them equal.
	MinTableSize = 251
	MaxTableSize = 131071
	// MaxWeight is the largest backend weight, as in package lb.
	MaxWeight = 10000
	// MaxMinHealthyBackends is the largest minHealthyBackends.
	MaxMinHealthyBackends = 10000
	// MaxInterfaceName is the longest Linux interface name, IFNAMSIZ-1.
	MaxInterfaceName = 15
	// MaxSocketPath is the longest Unix socket path, sizeof(sun_path)-1.
	MaxSocketPath = 107
	// MaxServiceName is the longest service name.
	MaxServiceName = 253
	// MaxEncapHostBitsIPv4 and MaxEncapHostBitsIPv6 bound the host bits of
	// an encap source prefix: the outer source varies by flow hash over at
	// most this many.
	MaxEncapHostBitsIPv4 = 16
	MaxEncapHostBitsIPv6 = 32
	// MinHealthInterval and MinHealthTimeout bound a health check's interval
	// and timeout from below; the timeout must also be shorter than the
	// interval.
	MinHealthInterval = 100 * time.Millisecond
	MinHealthTimeout  = 10 * time.Millisecond
	// MaxHealthRiseFall is the largest rise and fall of a health check.
	MaxHealthRiseFall = 100
	// MaxHealthPayload is the longest send and expect of a UDP health check,
	// in bytes.
	MaxHealthPayload = 1024
)

// Config is a configuration file as written, with defaults filled in. A
// Config returned by [Parse] or [Load] is valid; treat it as read-only.
type Config struct {
	// Interfaces are the NICs the XDP program is attached to.
	Interfaces []Interface
	Maglev     Maglev
	Conntrack  Conntrack
	Encap      EncapSources
	// SNAT is what services of mode snat translate to.
	SNAT SNAT
	// Pools are the VIP pools services may take an address from.
	Pools []Pool
	// ServiceSpecs are the services under the key "services", in file
	// order. [Config.Services] resolves them into [Service] values.
	ServiceSpecs []ServiceSpec
	// Kubernetes configures the Kubernetes source, or is nil when the file
	// has no kubernetes section.
	Kubernetes *Kubernetes
	Announce   Announce
	Metrics    Metrics
	Paths      Paths

	file string
	sum  [sha256.Size]byte
	// pos holds the position of every node read, by path, for errors found
	// after decoding.
	pos map[string]pos
}

// File returns the name the configuration was parsed under.
func (c *Config) File() string { return c.file }

// SHA256 returns the SHA-256 of the file's bytes, in hex. The daemon exports
// it as the config info metric so that a fleet can tell which file runs where.
func (c *Config) SHA256() string { return hex.EncodeToString(c.sum[:]) }

// Interface is a NIC to attach the XDP program to.
type Interface struct {
	Name    string
	XDPMode XDPMode
}

// XDPMode says how the XDP program is attached.
type XDPMode string

// The XDP attach modes.
const (
	// XDPModeAuto attaches in native (driver) mode and falls back to generic
	// mode where the driver has no XDP support.
	XDPModeAuto    XDPMode = "auto"
	XDPModeNative  XDPMode = "native"
	XDPModeGeneric XDPMode = "generic"
)

// Maglev holds the settings shared by every service's Maglev table.
type Maglev struct {
	// Seed keys the backend hashes. Every appliance of a fleet must use the
	// same seed so that they build the same tables.
	Seed [16]byte
	// SeedSet says the file sets Seed. When it does not, the appliance
	// generates a seed once and keeps it in its state directory, so that its
	// restarts keep every flow on its backend; a fleet must set one.
	SeedSet bool
	// TableSize is the table size of services that do not set their own.
	TableSize int
}

// Conntrack bounds the flow state.
type Conntrack struct {
	// MaxFlows is the number of flows the state holds per family.
	MaxFlows uint32
	// IdleTimeout is how long a pinned flow may stay idle before it expires.
	IdleTimeout time.Duration
	// MaxNATFlows is the number of NAT flows (snat services) the state
	// holds per family.
	MaxNATFlows uint32
}

// SNAT is the appliance's side of full NAT: the source addresses and ports
// the client's packets of a snat service leave with, and how long idle NAT
// flows are kept.
type SNAT struct {
	// Sources are the SNAT addresses, one or more per family a snat service
	// uses. A source that is not one of the host's addresses is announced
	// like a VIP.
	Sources []netip.Addr
	// PortLo and PortHi bound the source ports the appliance owns
	// (inclusive; default 1024-32767, outside Linux's ip_local_port_range).
	PortLo, PortHi uint16
	Timeouts       SNATTimeouts
}

// SNATTimeouts are how long an idle NAT flow is kept, by its state.
type SNATTimeouts struct {
	// TCPEstablished: both sides seen after the handshake (default 6h).
	TCPEstablished time.Duration
	// TCPTransitory: half-open (SYN, no answer) or closing (FIN, RST)
	// (default 60s).
	TCPTransitory time.Duration
	// UDP (default 60s).
	UDP time.Duration
}

// SourceOf returns the first SNAT source of a's family, if any.
func (s SNAT) SourceOf(a netip.Addr) (netip.Addr, bool) {
	for _, src := range s.Sources {
		if src.Is4() == a.Unmap().Is4() {
			return src, true
		}
	}
	return netip.Addr{}, false
}

// EncapSources are the outer source addresses of IPIP encapsulation, one per
// outer family. A prefix longer than a single address means the host bits
// vary with the flow hash, so that backends spread flows over their receive
// queues. An unset family is the zero [netip.Prefix].
type EncapSources struct {
	SourceIPv4 netip.Prefix
	SourceIPv6 netip.Prefix
}

// Pool is a named set of addresses handed out to services that ask for one.
type Pool struct {
	Name   string
	Blocks []Block
	// ServiceSelector selects the Kubernetes Services that may take an
	// address from the pool by their labels; nil selects every one. Pools
	// that a service of the file names are the file's: Kubernetes takes no
	// address from them.
	ServiceSelector *Selector
}

// Block is a range of a pool: either a CIDR or an inclusive start and stop.
type Block struct {
	// CIDR is the block's prefix, or the zero prefix for a start/stop block.
	CIDR netip.Prefix
	// Start and Stop are the first and last address of a start/stop block,
	// or of the CIDR.
	Start, Stop netip.Addr
}

// String returns the block as written: a CIDR or "start-stop".
func (b Block) String() string {
	if b.CIDR.IsValid() {
		return b.CIDR.String()
	}
	return b.Start.String() + "-" + b.Stop.String()
}

// Allocatable returns the first and last address the block hands out. That
// is the whole range of a start/stop block. A CIDR block, as in Cilium's
// LB IPAM, keeps its first and last address back (the network and broadcast
// addresses of an IPv4 subnet) unless it is a /31, /32, /127 or /128.
func (b Block) Allocatable() (first, last netip.Addr) {
	if !b.CIDR.IsValid() || b.CIDR.Addr().BitLen()-b.CIDR.Bits() <= 1 {
		return b.Start, b.Stop
	}
	return b.Start.Next(), b.Stop.Prev()
}

// Protocol is a transport protocol, numbered as in the IP header.
type Protocol uint8

// The protocols a service can have.
const (
	ProtocolTCP Protocol = 6
	ProtocolUDP Protocol = 17
)

// String returns "tcp" or "udp".
func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "tcp"
	case ProtocolUDP:
		return "udp"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// Mode is how a service forwards packets to its backends.
type Mode string

// The forwarding modes.
const (
	// ModeDSR forwards packets unchanged (or encapsulated) and lets the
	// backends answer the clients directly.
	ModeDSR Mode = "dsr"
	// ModeSNAT translates both addresses and sees both directions. The
	// schema has it; validation rejects it until the datapath supports it.
	ModeSNAT Mode = "snat"
)

// Encap is how a DSR service reaches its backends.
type Encap string

// The DSR encapsulations.
const (
	// EncapNone (L2 DSR) rewrites the destination MAC only; backends are on
	// the link or behind a next hop that routes by MAC.
	EncapNone Encap = "none"
	// EncapIPIP (L3 DSR) wraps packets in an outer IPv4 or IPv6 header.
	EncapIPIP Encap = "ipip"
)

// ServiceSpec is a service as written under "services".
type ServiceSpec struct {
	Name string
	// Address is the VIP, or the zero Addr when the service names a Pool.
	Address netip.Addr
	// Pool names the pool the service takes its VIP from, or is empty.
	Pool     string
	Protocol Protocol
	// Ports are the VIP's ports in file order; [0] means every port.
	Ports []uint16
	Mode  Mode
	Encap Encap
	// TableSize is the service's Maglev table size.
	TableSize int
	Backends  []BackendSpec
	// MinHealthyBackends is the number of healthy backends below which the
	// service counts as down.
	MinHealthyBackends int
	// Announce says whether the VIP is announced: on
	// announce.l2.interfaces and by announce.bgp.
	Announce bool
	// HealthCheck is how the service's backends are checked.
	HealthCheck HealthCheck
}

// BackendSpec is a backend as written.
type BackendSpec struct {
	Address netip.Addr
	// Port is 0 when the file leaves it out: the port the client connected
	// to.
	Port   uint16
	Weight uint32
}

// HealthCheckType is the kind of a health check.
type HealthCheckType string

// The health check types.
const (
	// HealthCheckNone checks nothing: every backend counts as healthy.
	HealthCheckNone HealthCheckType = "none"
	// HealthCheckTCP opens a TCP connection and closes it.
	HealthCheckTCP HealthCheckType = "tcp"
	// HealthCheckHTTP sends a GET request and checks the response status.
	HealthCheckHTTP HealthCheckType = "http"
	// HealthCheckHTTPS is HealthCheckHTTP over TLS. The backend's
	// certificate is not verified.
	HealthCheckHTTPS HealthCheckType = "https"
	// HealthCheckUDP sends a datagram and waits for a reply that holds the
	// expected bytes.
	HealthCheckUDP HealthCheckType = "udp"
)

// HealthCheck is how a service's backends are checked. Fields that do not
// apply to its Type are zero.
type HealthCheck struct {
	Type HealthCheckType
	// Port is the port checked, or 0 for the default: the backend's port,
	// else the service's lowest port.
	Port uint16
	// Path is the request path of an HTTP or HTTPS check.
	Path string
	// Host is the Host header (and TLS server name) of an HTTP or HTTPS
	// check; empty for the backend's address.
	Host string
	// ExpectStatus are the response statuses an HTTP or HTTPS check accepts.
	ExpectStatus StatusRanges
	// Send is the payload of a UDP check; Expect, the bytes its reply must
	// hold (empty: any reply).
	Send, Expect string
	// Interval is the time between the starts of two checks of a backend;
	// Timeout bounds one check and is shorter than Interval.
	Interval, Timeout time.Duration
	// Rise is the number of consecutive successes that bring a backend up,
	// Fall the number of consecutive failures that take it down.
	Rise, Fall int
}

// Equal reports whether h and o check the same way.
func (h HealthCheck) Equal(o HealthCheck) bool {
	return h.Type == o.Type && h.Port == o.Port && h.Path == o.Path && h.Host == o.Host &&
		slices.Equal(h.ExpectStatus, o.ExpectStatus) && h.Send == o.Send && h.Expect == o.Expect &&
		h.Interval == o.Interval && h.Timeout == o.Timeout && h.Rise == o.Rise && h.Fall == o.Fall
}

// clone returns a copy of h that shares nothing with it.
func (h HealthCheck) clone() HealthCheck {
	h.ExpectStatus = slices.Clone(h.ExpectStatus)
	return h
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// StatusRanges is a set of HTTP status codes, as written in expectStatus.
type StatusRanges []StatusRange

// Contains reports whether code is in one of the ranges.
func (r StatusRanges) Contains(code int) bool {
	for _, s := range r {
		if s.Lo <= code && code <= s.Hi {
			return true
		}
	}
	return false
}

// String returns the ranges as expectStatus takes them: "200-399",
// "200,204".
func (r StatusRanges) String() string {
	parts := make([]string, len(r))
	for i, s := range r {
		parts[i] = strconv.Itoa(s.Lo)
		if s.Hi != s.Lo {
			parts[i] += "-" + strconv.Itoa(s.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// Announce holds how VIPs are made known to the network.
type Announce struct {
	L2 L2Announce
	// BGP is the BGP speaker; nil when the file has no announce.bgp.
	BGP *BGPAnnounce
}

// L2Mode says when the L2 announcers answer.
type L2Mode string

// The L2 modes.
const (
	// L2ModeAlways answers for the announceable VIPs at all times.
	L2ModeAlways L2Mode = "always"
	// L2ModeExternal answers only while an outside election (keepalived)
	// says this appliance is the active one: `xdplb announce --state`.
	L2ModeExternal L2Mode = "external"
)

// DrainMode is what `xdplb drain` does to the BGP routes.
type DrainMode string

// The drain modes.
const (
	// DrainWithdraw withdraws every route.
	DrainWithdraw DrainMode = "withdraw"
	// DrainGracefulShutdown keeps the routes and tags them with the
	// GRACEFUL_SHUTDOWN community (RFC 8326, 65535:0), so routers that
	// honour it prefer the other appliances first.
	DrainGracefulShutdown DrainMode = "gracefulShutdown"
)

// BGPAnnounce is the embedded BGP speaker: it announces a host route for
// every announceable VIP to each peer.
type BGPAnnounce struct {
	// LocalASN is the appliance's AS number.
	LocalASN uint32
	// RouterID is the BGP identifier, an IPv4 address.
	RouterID netip.Addr
	// ListenPort is the TCP port the speaker accepts sessions on (default
	// 179); -1 means it does not listen and only dials out.
	ListenPort int
	// Peers are the routers to peer with.
	Peers []BGPPeer
	// Communities are added to every route, as "ASN:VALUE" in
	// Communities and as a number each in CommunityValues.
	Communities     []string
	CommunityValues []uint32
	// GracefulRestart is on unless the file turns it off; RestartTime is
	// how long peers keep the routes while the daemon restarts (default
	// 120s).
	GracefulRestart GracefulRestart
	// Drain is what `xdplb drain` does (default withdraw).
	Drain DrainMode
}

// BGPPeer is one BGP neighbour.
type BGPPeer struct {
	Address  netip.Addr
	ASN      uint32
	HoldTime time.Duration // default 90s; keepalives every third of it
	Password string        // TCP MD5 signature; empty for none
}

// GracefulRestart is BGP graceful restart (RFC 4724).
type GracefulRestart struct {
	Enabled     bool
	RestartTime time.Duration
}

// L2Announce is ARP and NDP announcement of VIPs.
type L2Announce struct {
	// Interfaces answer ARP and NDP for the VIPs and send gratuitous
	// announcements. Each is one of [Config.Interfaces].
	Interfaces []string
	// GratuitousCount is how many gratuitous announcements follow a VIP
	// becoming active (default 3), GratuitousInterval the time between them
	// (default 1s).
	GratuitousCount    int
	GratuitousInterval time.Duration
	// RefreshInterval repeats an announcement that often while a VIP is
	// active; 0 (the default) turns refreshes off.
	RefreshInterval time.Duration
	// Mode is always (the default) or external.
	Mode L2Mode
}

// Metrics holds where Prometheus metrics are served.
type Metrics struct {
	// Listen is the host:port of the HTTP server for /metrics.
	Listen string
}

// Paths are where an instance keeps things on the host. Two instances on one
// host differ only here.
type Paths struct {
	// Socket is the control socket of the CLI.
	Socket string
	// State is the directory of pool allocations and other state.
	State string
	// BPF is the bpffs directory programs and maps are pinned under.
	BPF string
}

// pos is a position in the file, counting from 1.
type pos struct{ line, column int }
