package config

import (
	"encoding/base64"
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Decoding, section by section. Each function fills in its defaults first,
// then what the file says.

var rootKeys = []string{"interfaces", "maglev", "conntrack", "encap", "snat", "pools", "services", "kubernetes", "announce", "metrics", "paths"}

func (d *decoder) config(c *Config, n *yaml.Node) {
	c.Maglev.TableSize = DefaultTableSize
	c.Conntrack = Conntrack{MaxFlows: DefaultMaxFlows, IdleTimeout: DefaultIdleTimeout, MaxNATFlows: DefaultMaxNATFlows}
	c.SNAT = SNAT{PortLo: DefaultSNATPortLo, PortHi: DefaultSNATPortHi, Timeouts: SNATTimeouts{
		TCPEstablished: DefaultSNATTCPEstablished, TCPTransitory: DefaultSNATTCPTransitory, UDP: DefaultSNATUDP}}
	c.Announce.L2 = L2Announce{GratuitousCount: DefaultGratuitousCount, GratuitousInterval: DefaultGratuitousInterval, Mode: L2ModeAlways}
	c.Metrics.Listen = DefaultMetricsListen
	c.Paths = Paths{Socket: DefaultSocketPath, State: DefaultStateDir, BPF: DefaultBPFDir}

	n, ok := d.node("", n)
	if !ok {
		return
	}
	sawSeed := false
	present := d.fields("", n, rootKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "interfaces":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				c.Interfaces = append(c.Interfaces, d.iface(path, item))
			})
			if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
				d.errorf(path, v, "at least one interface is required")
			}
		case "maglev":
			sawSeed = d.maglev(&c.Maglev, path, v)
		case "conntrack":
			d.conntrack(&c.Conntrack, path, v)
		case "encap":
			d.encap(&c.Encap, path, v)
		case "snat":
			d.snat(&c.SNAT, path, v)
		case "pools":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				c.Pools = append(c.Pools, d.pool(path, item))
			})
		case "services":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				c.ServiceSpecs = append(c.ServiceSpecs, d.service(path, item))
			})
		case "kubernetes":
			c.Kubernetes = d.kubernetes(path, v)
		case "announce":
			d.announce(&c.Announce, path, v)
		case "metrics":
			d.metrics(&c.Metrics, path, v)
		case "paths":
			d.paths(&c.Paths, path, v)
		}
	})
	if present == nil {
		return
	}
	if !present["interfaces"] {
		d.missing("interfaces", n, "missing; list at least one interface")
	}
	// Without a seed the appliance makes one of its own (see Maglev.SeedSet).
	c.Maglev.SeedSet = sawSeed
	for i := range c.ServiceSpecs {
		if c.ServiceSpecs[i].TableSize == 0 {
			c.ServiceSpecs[i].TableSize = c.Maglev.TableSize
		}
	}
}

var ifaceKeys = []string{"name", "xdpMode"}

func (d *decoder) iface(path string, n *yaml.Node) Interface {
	iface := Interface{XDPMode: XDPModeAuto}
	present := d.fields(path, n, ifaceKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "name":
			if s, ok := d.str(path, v); ok {
				if msg := badInterfaceName(s); msg != "" {
					d.errorf(path, v, "%s %s", value(v), msg)
				} else {
					iface.Name = s
				}
			}
		case "xdpMode":
			if s, ok := d.oneOf(path, v, "auto", "native", "generic"); ok {
				iface.XDPMode = XDPMode(s)
			}
		}
	})
	if present != nil && !present["name"] {
		d.missing(join(path, "name"), n, "missing")
	}
	return iface
}

// badInterfaceName says why s cannot be a Linux interface name, or returns
// "". The rules are the kernel's dev_valid_name.
func badInterfaceName(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > MaxInterfaceName:
		return fmt.Sprintf("is longer than %d bytes", MaxInterfaceName)
	case s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n\v\f\r"):
		return "is not a valid interface name"
	}
	return ""
}

var maglevKeys = []string{"seed", "tableSize"}

// maglev decodes the maglev section and reports whether it had a seed.
func (d *decoder) maglev(m *Maglev, path string, n *yaml.Node) bool {
	present := d.fields(path, n, maglevKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "seed":
			s, ok := d.str(path, v)
			if !ok {
				return
			}
			seed, err := base64.StdEncoding.DecodeString(s)
			switch {
			case err != nil:
				d.errorf(path, v, "%s is not base64", value(v))
			case len(seed) != len(m.Seed):
				d.errorf(path, v, "%s is %d bytes, want %d", value(v), len(seed), len(m.Seed))
			default:
				copy(m.Seed[:], seed)
			}
		case "tableSize":
			if t, ok := d.tableSize(path, v); ok {
				m.TableSize = t
			}
		}
	})
	return present == nil || present["seed"]
}

// tableSize returns a Maglev table size: a prime between MinTableSize and
// MaxTableSize.
func (d *decoder) tableSize(path string, n *yaml.Node) (int, bool) {
	t, ok := d.integer(path, n, math.MinInt64, math.MaxInt64, fmt.Sprintf("a prime between %d and %d", MinTableSize, MaxTableSize))
	if !ok {
		return 0, false
	}
	if t < MinTableSize || t > MaxTableSize || !isPrime(t) {
		d.errorf(path, n, "%s is not a prime between %d and %d", n.Value, MinTableSize, MaxTableSize)
		return 0, false
	}
	return int(t), true
}

// isPrime reports whether n is a prime, by trial division: table sizes are
// small.
func isPrime(n int64) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for f := int64(3); f*f <= n; f += 2 {
		if n%f == 0 {
			return false
		}
	}
	return true
}

var conntrackKeys = []string{"maxFlows", "idleTimeout", "maxNATFlows"}

func (d *decoder) conntrack(ct *Conntrack, path string, n *yaml.Node) {
	d.fields(path, n, conntrackKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "maxFlows":
			if m, ok := d.integer(path, v, 1, 1<<32-1, "1 to 4294967295"); ok {
				ct.MaxFlows = uint32(m)
			}
		case "idleTimeout":
			if t, ok := d.duration(path, v, time.Second); ok {
				ct.IdleTimeout = t
			}
		case "maxNATFlows":
			if m, ok := d.integer(path, v, 1, MaxMaxNATFlows, "1 to 67108864"); ok {
				ct.MaxNATFlows = uint32(m)
			}
		}
	})
}

// duration returns a duration of at least lo.
func (d *decoder) duration(path string, n *yaml.Node, lo time.Duration) (time.Duration, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return 0, false
	}
	t, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.errorf(path, n, `%s is not a duration (such as "15m" or "90s")`, value(n))
	case t < lo:
		d.errorf(path, n, "%s is shorter than %s", value(n), fmtDuration(lo))
	default:
		return t, true
	}
	return 0, false
}

// fmtDuration formats t as a duration is written in the file: 1m, not 1m0s.
func fmtDuration(t time.Duration) string {
	s := t.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

var encapKeys = []string{"sourceIPv4", "sourceIPv6"}

func (d *decoder) encap(e *EncapSources, path string, n *yaml.Node) {
	d.fields(path, n, encapKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "sourceIPv4":
			e.SourceIPv4, _ = d.encapSource(path, v, false)
		case "sourceIPv6":
			e.SourceIPv6, _ = d.encapSource(path, v, true)
		}
	})
}

// encapSource returns an encap source: an address, as a single-address
// prefix, or a prefix whose host bits vary by flow.
func (d *decoder) encapSource(path string, n *yaml.Node, v6 bool) (netip.Prefix, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return netip.Prefix{}, false
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		if p, ok = d.prefix(path, n); !ok {
			return netip.Prefix{}, false
		}
	} else {
		a, ok := d.addr(path, n, true)
		if !ok {
			return netip.Prefix{}, false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	family, maxHost := "IPv4", MaxEncapHostBitsIPv4
	if v6 {
		family, maxHost = "IPv6", MaxEncapHostBitsIPv6
	}
	switch host := p.Addr().BitLen() - p.Bits(); {
	case p.Addr().Is6() != v6:
		d.errorf(path, n, "%s is not an %s address or prefix", value(n), family)
	case host > maxHost:
		d.errorf(path, n, "%s has %d host bits; at most %d may vary", value(n), host, maxHost)
	case !isUnicast(p.Addr()):
		d.errorf(path, n, "%s is not a unicast address", value(n))
	default:
		return p, true
	}
	return netip.Prefix{}, false
}

var (
	snatKeys         = []string{"sources", "ports", "timeouts"}
	snatTimeoutsKeys = []string{"tcpEstablished", "tcpTransitory", "udp"}
)

// snatMaxSources is the SNAT sources of each family the datapath holds
// (xdp.NATMaxSources).
const snatMaxSources = 8

func (d *decoder) snat(s *SNAT, path string, n *yaml.Node) {
	d.fields(path, n, snatKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "sources":
			per := map[bool]int{}
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				a, ok := d.addr(path, item, true)
				if !ok {
					return
				}
				if slices.Contains(s.Sources, a) {
					d.errorf(path, item, "%s is listed twice", value(item))
					return
				}
				if per[a.Is4()]++; per[a.Is4()] > snatMaxSources {
					d.errorf(path, item, "%s: at most %d sources of each family", value(item), snatMaxSources)
					return
				}
				s.Sources = append(s.Sources, a)
			})
		case "ports":
			str, ok := d.str(path, v)
			if !ok {
				return
			}
			lo, hi, found := strings.Cut(str, "-")
			if !found {
				hi = lo
			}
			l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
			h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
			if err1 != nil || err2 != nil || l == 0 || h < l {
				d.errorf(path, v, `%s is not a port range (such as "1024-32767", low to high, 1 to 65535)`, value(v))
				return
			}
			s.PortLo, s.PortHi = uint16(l), uint16(h)
		case "timeouts":
			d.fields(path, v, snatTimeoutsKeys, func(key, path string, v *yaml.Node) {
				t, ok := d.duration(path, v, time.Second)
				if !ok {
					return
				}
				switch key {
				case "tcpEstablished":
					s.Timeouts.TCPEstablished = t
				case "tcpTransitory":
					s.Timeouts.TCPTransitory = t
				case "udp":
					s.Timeouts.UDP = t
				}
			})
		}
	})
}

var poolKeys = []string{"name", "blocks", "serviceSelector"}

func (d *decoder) pool(path string, n *yaml.Node) Pool {
	var p Pool
	present := d.fields(path, n, poolKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "name":
			if s, ok := d.str(path, v); ok {
				if msg := badName(s); msg != "" {
					d.errorf(path, v, "%s %s", value(v), msg)
				} else {
					p.Name = s
				}
			}
		case "blocks":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				if b, ok := d.block(path, item); ok {
					p.Blocks = append(p.Blocks, b)
				}
			})
			if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
				d.errorf(path, v, "a pool needs at least one block")
			}
		case "serviceSelector":
			p.ServiceSelector = d.selector(path, v)
		}
	})
	if present == nil {
		return p
	}
	if !present["name"] {
		d.missing(join(path, "name"), n, "missing")
	}
	if !present["blocks"] {
		d.missing(join(path, "blocks"), n, "missing; a pool needs at least one block")
	}
	return p
}

var blockKeys = []string{"cidr", "start", "stop"}

func (d *decoder) block(path string, n *yaml.Node) (Block, bool) {
	var b Block
	good := true
	var startNode, stopNode *yaml.Node
	present := d.fields(path, n, blockKeys, func(key, path string, v *yaml.Node) {
		var ok bool
		switch key {
		case "cidr":
			b.CIDR, ok = d.prefix(path, v)
		case "start":
			b.Start, ok = d.addr(path, v, false)
			startNode = v
		case "stop":
			b.Stop, ok = d.addr(path, v, false)
			stopNode = v
		}
		good = good && ok
	})
	if present == nil {
		return b, false
	}
	switch {
	case present["cidr"] && (present["start"] || present["stop"]):
		d.errorf(path, n, "a block has either cidr or start and stop, not both")
		return b, false
	case !present["cidr"] && !present["start"] && !present["stop"]:
		d.errorf(path, n, "a block needs cidr, or start and stop")
		return b, false
	case !present["cidr"] && !present["start"]:
		d.missing(join(path, "start"), n, "missing")
		return b, false
	case !present["cidr"] && !present["stop"]:
		d.missing(join(path, "stop"), n, "missing")
		return b, false
	case !good:
		return b, false
	}
	if b.CIDR.IsValid() {
		b.Start = b.CIDR.Addr()
		b.Stop = lastAddr(b.CIDR)
		return b, true
	}
	switch {
	case b.Start.Is4() != b.Stop.Is4():
		d.errorf(join(path, "stop"), stopNode, "%s is not of the same family as start %s", value(stopNode), value(startNode))
		return b, false
	case b.Stop.Less(b.Start):
		d.errorf(join(path, "stop"), stopNode, "%s comes before start %s", value(stopNode), value(startNode))
		return b, false
	}
	return b, true
}

// lastAddr returns the last address of the canonical prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	for bit := p.Bits(); bit < len(a)*8; bit++ {
		a[bit/8] |= 0x80 >> (bit % 8)
	}
	last, _ := netip.AddrFromSlice(a)
	return last
}

// badName says why s cannot name a service or a pool, or returns "". Names
// show up in metrics labels, CLI tables and the state file, so they are kept
// to letters, digits and a little punctuation.
func badName(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > MaxServiceName:
		return fmt.Sprintf("is longer than %d bytes", MaxServiceName)
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("-_./", r)) {
			return "may hold only letters, digits and - _ . /"
		}
	}
	return ""
}

var serviceKeys = []string{"name", "address", "pool", "protocol", "ports", "mode", "encap", "tableSize", "backends", "minHealthyBackends", "announce", "healthCheck"}

func (d *decoder) service(path string, n *yaml.Node) ServiceSpec {
	s := ServiceSpec{MinHealthyBackends: DefaultMinHealthyBackends, Announce: true, HealthCheck: defaultHealthCheck()}
	var encapNode, addressNode, poolNode, checkNode *yaml.Node
	checkGood := true
	present := d.fields(path, n, serviceKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "name":
			if name, ok := d.str(path, v); ok {
				if msg := badName(name); msg != "" {
					d.errorf(path, v, "%s %s", value(v), msg)
				} else {
					s.Name = name
				}
			}
		case "address":
			addressNode = v
			s.Address, _ = d.addr(path, v, true)
		case "pool":
			poolNode = v
			if pool, ok := d.str(path, v); ok {
				s.Pool = pool
			}
		case "protocol":
			switch p, _ := d.oneOf(path, v, "tcp", "udp"); p {
			case "tcp":
				s.Protocol = ProtocolTCP
			case "udp":
				s.Protocol = ProtocolUDP
			}
		case "ports":
			s.Ports = d.ports(path, v)
		case "mode":
			if m, ok := d.oneOf(path, v, "dsr", "snat"); ok {
				s.Mode = Mode(m)
			}
		case "encap":
			encapNode = v
			if e, ok := d.oneOf(path, v, "none", "ipip"); ok {
				s.Encap = Encap(e)
			}
		case "tableSize":
			s.TableSize, _ = d.tableSize(path, v)
		case "backends":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				s.Backends = append(s.Backends, d.backend(path, item))
			})
		case "minHealthyBackends":
			if m, ok := d.integer(path, v, 0, MaxMinHealthyBackends, fmt.Sprintf("0 to %d", MaxMinHealthyBackends)); ok {
				s.MinHealthyBackends = int(m)
			}
		case "announce":
			s.Announce, _ = d.boolean(path, v)
		case "healthCheck":
			checkNode = v
			s.HealthCheck, checkGood = d.healthCheck(path, v)
		}
	})
	if present == nil {
		return s
	}
	switch {
	case addressNode != nil && poolNode != nil:
		// Report the one given second.
		key, v := "pool", poolNode
		if before(poolNode, addressNode) {
			key, v = "address", addressNode
		}
		d.errorf(join(path, key), v, "a service has either an address or a pool, not both")
	case addressNode == nil && poolNode == nil:
		d.errorf(path, n, "a service needs an address or a pool")
	}
	for _, key := range []string{"name", "protocol", "ports", "mode"} {
		if !present[key] {
			d.missing(join(path, key), n, "missing")
		}
	}
	if s.Mode == ModeSNAT && encapNode != nil {
		d.errorf(join(path, "encap"), encapNode, "encap applies to mode dsr only, and this service has mode snat")
	}
	if s.Encap == "" && s.Mode != ModeSNAT {
		s.Encap = EncapNone
	}
	// A check needs a port: its own, the backend's, or the service's. A
	// service with every port has none to lend.
	if checkGood && s.HealthCheck.Type != HealthCheckNone && s.HealthCheck.Port == 0 && slices.Equal(s.Ports, []uint16{0}) {
		for k, b := range s.Backends {
			if b.Port == 0 {
				d.missing(join(path, "healthCheck.port"), checkNode, fmt.Sprintf("missing; backends[%d] has no port and the service has every port (ports: [0])", k))
				break
			}
		}
	}
	return s
}

func defaultHealthCheck() HealthCheck {
	return HealthCheck{
		Type:     HealthCheckNone,
		Interval: DefaultHealthInterval,
		Timeout:  DefaultHealthTimeout,
		Rise:     DefaultHealthRise,
		Fall:     DefaultHealthFall,
	}
}

var healthCheckKeys = []string{"type", "port", "path", "host", "expectStatus", "send", "expect", "interval", "timeout", "rise", "fall"}

// healthCheck decodes a service's healthCheck. It reports whether the check
// is good enough to be checked against the rest of the service.
func (d *decoder) healthCheck(path string, n *yaml.Node) (HealthCheck, bool) {
	h := defaultHealthCheck()
	nodes := make(map[string]*yaml.Node)
	good := make(map[string]bool)
	present := d.fields(path, n, healthCheckKeys, func(key, path string, v *yaml.Node) {
		nodes[key] = v
		ok := false
		switch key {
		case "type":
			var t string
			if t, ok = d.oneOf(path, v, "none", "tcp", "http", "https", "udp"); ok {
				h.Type = HealthCheckType(t)
			}
		case "port":
			var p int64
			if p, ok = d.integer(path, v, 1, 65535, "1 to 65535"); ok {
				h.Port = uint16(p)
			}
		case "path":
			if h.Path, ok = d.str(path, v); ok && !isHTTPPath(h.Path) {
				d.errorf(path, v, `%s is not an HTTP path (such as "/healthz")`, value(v))
				h.Path, ok = "", false
			}
		case "host":
			if h.Host, ok = d.str(path, v); ok && !isHost(h.Host) {
				d.errorf(path, v, `%s is not a host name (such as "www.example.com")`, value(v))
				h.Host, ok = "", false
			}
		case "expectStatus":
			var s string
			if s, ok = d.str(path, v); ok {
				if h.ExpectStatus, ok = parseStatusRanges(s); !ok {
					d.errorf(path, v, `%s is not a list of HTTP status codes from 100 to 599 and ranges of them (such as "200-399" or "200,204")`, value(v))
				}
			}
		case "send", "expect":
			var s string
			if s, ok = d.str(path, v); ok && len(s) > MaxHealthPayload {
				d.errorf(path, v, "%s is longer than %d bytes", value(v), MaxHealthPayload)
				s, ok = "", false
			}
			if key == "send" {
				h.Send = s
			} else {
				h.Expect = s
			}
		case "interval":
			var t time.Duration
			if t, ok = d.duration(path, v, MinHealthInterval); ok {
				h.Interval = t
			}
		case "timeout":
			var t time.Duration
			if t, ok = d.duration(path, v, MinHealthTimeout); ok {
				h.Timeout = t
			}
		case "rise", "fall":
			var c int64
			if c, ok = d.integer(path, v, 1, MaxHealthRiseFall, fmt.Sprintf("1 to %d", MaxHealthRiseFall)); ok {
				if key == "rise" {
					h.Rise = int(c)
				} else {
					h.Fall = int(c)
				}
			}
		}
		good[key] = ok
	})
	if present == nil {
		return h, false
	}
	allGood := true
	for _, ok := range good {
		allGood = allGood && ok
	}

	// The timeout must end before the next check starts.
	if good["interval"] == present["interval"] && good["timeout"] == present["timeout"] && h.Timeout >= h.Interval {
		if present["timeout"] {
			d.errorf(join(path, "timeout"), nodes["timeout"], "%s must be shorter than interval (%s)", value(nodes["timeout"]), fmtDuration(h.Interval))
		} else {
			d.errorf(join(path, "interval"), nodes["interval"], "%s must be longer than timeout (%s)", value(nodes["interval"]), fmtDuration(h.Timeout))
		}
		allGood = false
	}

	// Keys of other types. A bad type was reported already.
	if present["type"] && !good["type"] {
		return h, false
	}
	httpKeys, udpKeys := "types http and https", "type udp"
	var wrong []string
	switch h.Type {
	case HealthCheckHTTP, HealthCheckHTTPS:
		wrong = []string{"send", "expect"}
		if !present["path"] {
			h.Path = DefaultHealthPath
		}
		if !present["expectStatus"] {
			h.ExpectStatus = slices.Clone(DefaultExpectStatus)
		}
	case HealthCheckUDP:
		wrong = []string{"path", "host", "expectStatus"}
		if !present["send"] {
			d.missing(join(path, "send"), n, "missing; a udp check sends it and waits for a reply")
			allGood = false
		}
	default:
		wrong = []string{"path", "host", "expectStatus", "send", "expect"}
	}
	for _, key := range healthCheckKeys {
		if !present[key] || !slices.Contains(wrong, key) {
			continue
		}
		applies := httpKeys
		if key == "send" || key == "expect" {
			applies = udpKeys
		}
		d.errorf(join(path, key), nodes[key], "%s applies to %s only", key, applies)
		allGood = false
	}
	return h, allGood
}

// isHTTPPath reports whether s can be the path (and query) of a request.
func isHTTPPath(s string) bool {
	if !strings.HasPrefix(s, "/") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f || s[i] == '#' {
			return false
		}
	}
	return true
}

// isHost reports whether s can be a Host header: a name or an address, with
// an optional port.
func isHost(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f || strings.IndexByte(`/?#@\"`, s[i]) >= 0 {
			return false
		}
	}
	return true
}

// parseStatusRanges parses expectStatus: codes and ranges of codes
// separated by commas, such as "200-299,302".
func parseStatusRanges(s string) (StatusRanges, bool) {
	var out StatusRanges
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.Atoi(strings.TrimSpace(lo))
		h, err2 := strconv.Atoi(strings.TrimSpace(hi))
		if err1 != nil || err2 != nil || l < 100 || h > 599 || l > h {
			return nil, false
		}
		out = append(out, StatusRange{l, h})
	}
	return out, true
}

// before reports whether a comes before b in the file.
func before(a, b *yaml.Node) bool {
	return posLess(posOf(a), posOf(b))
}

// ports decodes a service's port list: [0] alone, or distinct ports from 1
// to 65535.
func (d *decoder) ports(path string, n *yaml.Node) []uint16 {
	var ports []uint16
	seen := make(map[uint16]bool)
	d.list(path, n, func(i int, path string, item *yaml.Node) {
		p, ok := d.integer(path, item, 0, 65535, "1 to 65535, or 0 for every port")
		switch {
		case !ok:
		case seen[uint16(p)]:
			d.errorf(path, item, "%s is listed twice", item.Value)
		case p == 0 && len(n.Content) > 1:
			d.errorf(path, item, "0 (every port) cannot be combined with other ports")
		default:
			seen[uint16(p)] = true
			ports = append(ports, uint16(p))
		}
	})
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		d.errorf(path, n, "at least one port is required; [0] means every port")
	}
	return ports
}

var backendKeys = []string{"address", "port", "weight"}

func (d *decoder) backend(path string, n *yaml.Node) BackendSpec {
	b := BackendSpec{Weight: DefaultWeight}
	present := d.fields(path, n, backendKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "address":
			b.Address, _ = d.addr(path, v, true)
		case "port":
			if p, ok := d.integer(path, v, 1, 65535, "1 to 65535"); ok {
				b.Port = uint16(p)
			}
		case "weight":
			if w, ok := d.integer(path, v, 0, MaxWeight, fmt.Sprintf("0 to %d", MaxWeight)); ok {
				b.Weight = uint32(w)
			}
		}
	})
	if present != nil && !present["address"] {
		d.missing(join(path, "address"), n, "missing")
	}
	return b
}

var announceKeys = []string{"l2", "bgp"}
var l2Keys = []string{"interfaces", "gratuitousCount", "gratuitousInterval", "refreshInterval", "mode"}

func (d *decoder) announce(a *Announce, path string, n *yaml.Node) {
	d.fields(path, n, announceKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "l2":
			d.l2(&a.L2, path, v)
		case "bgp":
			a.BGP = d.bgp(path, v)
		}
	})
}

func (d *decoder) l2(l2 *L2Announce, path string, n *yaml.Node) {
	d.fields(path, n, l2Keys, func(key, path string, v *yaml.Node) {
		switch key {
		case "interfaces":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				if s, ok := d.str(path, item); ok {
					l2.Interfaces = append(l2.Interfaces, s)
				}
			})
		case "gratuitousCount":
			if c, ok := d.integer(path, v, 1, 100, "1 to 100"); ok {
				l2.GratuitousCount = int(c)
			}
		case "gratuitousInterval":
			if t, ok := d.duration(path, v, 10*time.Millisecond); ok {
				l2.GratuitousInterval = t
			}
		case "refreshInterval":
			// 0s turns refreshes off; otherwise at least a second.
			if t, ok := d.duration(path, v, 0); ok {
				if t != 0 && t < time.Second {
					d.errorf(path, v, "%s is shorter than 1s (0s turns refreshes off)", value(v))
				} else {
					l2.RefreshInterval = t
				}
			}
		case "mode":
			if s, ok := d.oneOf(path, v, string(L2ModeAlways), string(L2ModeExternal)); ok {
				l2.Mode = L2Mode(s)
			}
		}
	})
}

var bgpKeys = []string{"localASN", "routerID", "listenPort", "peers", "communities", "gracefulRestart", "drain"}
var bgpPeerKeys = []string{"address", "asn", "holdTime", "password"}
var gracefulRestartKeys = []string{"enabled", "restartTime"}

// maxASN is the largest four-octet AS number.
const maxASN = 1<<32 - 1

func (d *decoder) bgp(path string, n *yaml.Node) *BGPAnnounce {
	b := &BGPAnnounce{
		ListenPort:      DefaultBGPListenPort,
		GracefulRestart: GracefulRestart{Enabled: true, RestartTime: DefaultBGPRestartTime},
		Drain:           DrainWithdraw,
	}
	present := d.fields(path, n, bgpKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "localASN":
			if a, ok := d.integer(path, v, 1, maxASN, "1 to 4294967295"); ok {
				b.LocalASN = uint32(a)
			}
		case "routerID":
			if a, ok := d.addr(path, v, false); ok {
				if !a.Is4() {
					d.errorf(path, v, "%s is not an IPv4 address (a router ID is written as one)", value(v))
				} else {
					b.RouterID = a
				}
			}
		case "listenPort":
			if p, ok := d.integer(path, v, -1, 65535, "1 to 65535, or -1 to only dial out"); ok {
				if p == 0 {
					d.errorf(path, v, "0 is out of range (1 to 65535, or -1 to only dial out)")
				} else {
					b.ListenPort = int(p)
				}
			}
		case "peers":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				b.Peers = append(b.Peers, d.bgpPeer(path, item))
			})
		case "communities":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				s, ok := d.str(path, item)
				if !ok {
					return
				}
				c, ok := parseCommunity(s)
				if !ok {
					d.errorf(path, item, `%s is not a community (such as "65010:100", each half 0 to 65535)`, value(item))
					return
				}
				b.Communities = append(b.Communities, s)
				b.CommunityValues = append(b.CommunityValues, c)
			})
		case "gracefulRestart":
			d.fields(path, v, gracefulRestartKeys, func(key, path string, v *yaml.Node) {
				switch key {
				case "enabled":
					if e, ok := d.boolean(path, v); ok {
						b.GracefulRestart.Enabled = e
					}
				case "restartTime":
					if t, ok := d.duration(path, v, time.Second); ok {
						if t > 4095*time.Second {
							d.errorf(path, v, "%s is longer than 4095s, the most BGP can carry", value(v))
						} else {
							b.GracefulRestart.RestartTime = t
						}
					}
				}
			})
		case "drain":
			if s, ok := d.oneOf(path, v, string(DrainWithdraw), string(DrainGracefulShutdown)); ok {
				b.Drain = DrainMode(s)
			}
		}
	})
	if present == nil {
		return b
	}
	for _, key := range []string{"localASN", "routerID"} {
		if !present[key] {
			d.missing(join(path, key), n, "missing")
		}
	}
	return b
}

func (d *decoder) bgpPeer(path string, n *yaml.Node) BGPPeer {
	p := BGPPeer{HoldTime: DefaultBGPHoldTime}
	present := d.fields(path, n, bgpPeerKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "address":
			p.Address, _ = d.addr(path, v, true)
		case "asn":
			if a, ok := d.integer(path, v, 1, maxASN, "1 to 4294967295"); ok {
				p.ASN = uint32(a)
			}
		case "holdTime":
			// RFC 4271: zero (no keepalives) or at least three seconds.
			if t, ok := d.duration(path, v, 3*time.Second); ok {
				if t > 65535*time.Second {
					d.errorf(path, v, "%s is longer than 65535s, the most BGP can carry", value(v))
				} else if t%time.Second != 0 {
					d.errorf(path, v, "%s is not a whole number of seconds", value(v))
				} else {
					p.HoldTime = t
				}
			}
		case "password":
			if s, ok := d.str(path, v); ok {
				if len(s) > 80 {
					d.errorf(path, v, "is longer than 80 bytes, the most TCP MD5 takes")
				} else {
					p.Password = s
				}
			}
		}
	})
	if present != nil {
		for _, key := range []string{"address", "asn"} {
			if !present[key] {
				d.missing(join(path, key), n, "missing")
			}
		}
	}
	return p
}

// parseCommunity reads a standard community written "ASN:VALUE".
func parseCommunity(s string) (uint32, bool) {
	hi, lo, ok := strings.Cut(s, ":")
	if !ok {
		return 0, false
	}
	h, err1 := strconv.ParseUint(hi, 10, 16)
	l, err2 := strconv.ParseUint(lo, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return uint32(h)<<16 | uint32(l), true
}

var metricsKeys = []string{"listen"}

func (d *decoder) metrics(m *Metrics, path string, n *yaml.Node) {
	d.fields(path, n, metricsKeys, func(_, path string, v *yaml.Node) {
		s, ok := d.str(path, v)
		if !ok {
			return
		}
		_, port, err := net.SplitHostPort(s)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err != nil {
			d.errorf(path, v, `%s is not a host:port (such as "127.0.0.1:9650" or ":9650")`, value(v))
			return
		}
		m.Listen = s
	})
}

var pathsKeys = []string{"socket", "state", "bpf"}

func (d *decoder) paths(p *Paths, path string, n *yaml.Node) {
	d.fields(path, n, pathsKeys, func(key, path string, v *yaml.Node) {
		s, ok := d.str(path, v)
		if !ok {
			return
		}
		if !filepath.IsAbs(s) {
			d.errorf(path, v, "%s is not an absolute path", value(v))
			return
		}
		switch key {
		case "socket":
			if len(s) > MaxSocketPath {
				d.errorf(path, v, "%s is longer than %d bytes, the limit for a Unix socket", value(v), MaxSocketPath)
				return
			}
			p.Socket = s
		case "state":
			p.State = s
		case "bpf":
			p.BPF = s
		}
	})
}
