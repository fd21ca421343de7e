package dpfuzz

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/xdplb/xdplb/xdp"
)

// Egress is where a backend's frames leave, seen from the interface frames
// arrive on.
type Egress uint8

// Egresses.
const (
	// EgressIngress: the interface frames arrive on (XDP_TX when they do).
	EgressIngress Egress = iota
	// EgressTxPort: another interface, in the tx ports (XDP_REDIRECT).
	EgressTxPort
	// EgressNoPort: an interface missing from the tx ports (dropped).
	EgressNoPort
)

func (e Egress) String() string {
	return [...]string{"ingress", "txport", "noport"}[e]
}

// BackendDef is a backend of a configuration.
type BackendDef struct {
	ID     uint32
	Addr   netip.Addr
	MAC    net.HardwareAddr
	Egress Egress
	MTU    int
	Up     bool
	// Port is where SNAT sends a service's flows (0: the service's port).
	Port uint16
}

// VIPDef is a service of a configuration. Tables are given to SetTable in
// order: the last is the current table and, when there are two or more, the
// one before it is the previous table of a running transition.
type VIPDef struct {
	Key    xdp.VIPKey
	Mode   xdp.Mode
	Seed   uint32
	Tables [][]uint32
}

// Config is a datapath configuration for fuzzing.
type Config struct {
	Backends       []BackendDef
	VIPs           []VIPDef
	Pins           []xdp.Flow
	Encap4, Encap6 netip.Prefix
	TTL            uint8 // Options.TTL (0: the default)
	DisableEcho    bool
	// MaxFlows is Options.MaxFlows (0: far more than a run pins). A small
	// one fills the flow tables.
	MaxFlows int
	// NAT is the SNAT config: 0 to 2 sources of each family (mostly 1 or
	// 2) and a port range, small ones among them so that flows to one
	// backend run out of ports.
	NAT xdp.NATConfig
	// Flips turn backends down and up again between frames.
	Flips []Flip
}

// Flip turns backend ID down if it is up, up if it is down, before frame
// At (counted from 0) and every Every frames after it, 4 times, then every
// 1,000 frames (each write of a backend entry changed a moment before waits
// for the programs running: a flip costs a millisecond or more).
type Flip struct {
	ID        uint32
	At, Every int
}

// Addresses of the fuzzing world (198.18.0.0/15 and 2001:db8::/32 only).
var (
	lbMAC     = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	egressMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	routerMAC = net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}

	vip4Pool = []netip.Addr{netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.0.3")}
	vip6Pool = []netip.Addr{netip.MustParseAddr("2001:db8:100::1"), netip.MustParseAddr("2001:db8:100::2"), netip.MustParseAddr("2001:db8:100::3")}
	client4  = []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.1.3")}
	client6  = []netip.Addr{netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1::2"), netip.MustParseAddr("2001:db8:1::3")}
	router4  = netip.MustParseAddr("198.18.5.1")
	router6  = netip.MustParseAddr("2001:db8:5::1")
	other4   = netip.MustParseAddr("198.18.9.9")
	other6   = netip.MustParseAddr("2001:db8:9::9")
	nat4Pool = []netip.Addr{netip.MustParseAddr("198.18.6.1"), netip.MustParseAddr("198.18.6.2")}
	nat6Pool = []netip.Addr{netip.MustParseAddr("2001:db8:6::1"), netip.MustParseAddr("2001:db8:6::2")}

	encap4Choices = []netip.Prefix{{}, netip.MustParsePrefix("198.18.3.1/32"), netip.MustParsePrefix("198.18.4.0/24"),
		netip.MustParsePrefix("198.18.4.77/20"), netip.MustParsePrefix("198.18.0.0/16")}
	encap6Choices = []netip.Prefix{{}, netip.MustParsePrefix("2001:db8:3::1/128"), netip.MustParsePrefix("2001:db8:4::/112"),
		netip.MustParsePrefix("2001:db8:4::/96"), netip.MustParsePrefix("2001:db8:4::1:2/100")}

	clientPorts = []uint16{40000, 40001, 40002, 40003, 40004, 40005}
	missingID   = uint32(99) // a backend id no entry has
)

// NewConfig builds a configuration from s: backends of both families, up
// and down, behind the ingress interface or others, some with an MTU; VIPs
// of every mode and family with port-0 services among them, with no table,
// one, or a transition (two or three tables); pins, some to backends down
// or gone; outer sources; knobs.
func NewConfig(s *Source) *Config {
	c := &Config{}
	nb := 1 + s.N(8)
	for i := range nb {
		id := uint32(i + 1)
		b := BackendDef{ID: id, MAC: net.HardwareAddr{2, 0, 0, 0, 1, byte(id)}, Up: !s.Chance(15)}
		if s.Chance(60) {
			b.Addr = netip.AddrFrom4([4]byte{198, 18, 2, byte(id)})
		} else {
			b.Addr = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 15: byte(id)})
		}
		switch n := s.N(10); {
		case n < 7:
			b.Egress = EgressIngress
		case n < 9:
			b.Egress = EgressTxPort
		default:
			b.Egress = EgressNoPort
		}
		if s.Chance(50) {
			b.MTU = Pick(s, 1280, 1400, 1500, 576+s.N(1000))
		}
		b.Port = Pick[uint16](s, 0, 0, 8080, 53, 40000)
		c.Backends = append(c.Backends, b)
	}
	ids := func() uint32 {
		if s.Chance(3) {
			return missingID
		}
		return uint32(1 + s.N(nb))
	}
	nv := 1 + s.N(6)
	for range nv {
		var k xdp.VIPKey
		if s.Chance(55) {
			k.Addr = Pick(s, vip4Pool...)
		} else {
			k.Addr = Pick(s, vip6Pool...)
		}
		k.Port = Pick[uint16](s, 80, 53, 0, 443)
		k.Proto = Pick(s, xdp.TCP, xdp.UDP)
		if slices.ContainsFunc(c.VIPs, func(v VIPDef) bool { return v.Key == k }) {
			continue
		}
		v := VIPDef{Key: k, Seed: s.U32()}
		switch n := s.N(20); {
		case n < 8:
			v.Mode = xdp.ModeDSRL2
		case n < 16:
			v.Mode = xdp.ModeDSRIPIP
		default:
			v.Mode = xdp.ModeSNAT
		}
		nt := Pick(s, 1, 1, 1, 2, 2, 2, 3, 0)
		var prev []uint32
		for range nt {
			size := Pick(s, 7, 13, 31)
			if prev != nil && s.Chance(70) {
				size = len(prev)
			}
			t := make([]uint32, size)
			// A few backends per table; a table made from the previous one
			// keeps most of its slots, as Maglev does.
			few := []uint32{ids(), ids(), ids()}[:1+s.N(3)]
			if v.Mode == xdp.ModeSNAT && s.Chance(80) {
				// SNAT does not translate between families: mostly
				// backends of the service's.
				for i, id := range few {
					if id != missingID && c.Backends[id-1].Addr.Is4() != k.Addr.Is4() {
						few[i] = sameFamily(s, c.Backends, k.Addr.Is4(), id)
					}
				}
			}
			for i := range t {
				if prev != nil && len(prev) == size && s.Chance(70) {
					t[i] = prev[i]
				} else {
					t[i] = Pick(s, few...)
				}
			}
			v.Tables = append(v.Tables, t)
			prev = t
		}
		c.VIPs = append(c.VIPs, v)
	}
	for range Pick(s, 0, 0, 1, 2, 4) {
		v := Pick(s, c.VIPs...)
		port := v.Key.Port
		if port == 0 {
			port = Pick[uint16](s, 80, 22)
		}
		f := xdp.Flow{Dst: netip.AddrPortFrom(v.Key.Addr, port), Proto: v.Key.Proto, BackendID: ids()}
		if v.Key.Addr.Is4() {
			f.Src = netip.AddrPortFrom(Pick(s, client4...), Pick(s, clientPorts...))
		} else {
			f.Src = netip.AddrPortFrom(Pick(s, client6...), Pick(s, clientPorts...))
		}
		c.Pins = append(c.Pins, f)
	}
	// SNAT sources and ports: a range of one port, or a few, makes flows to
	// one backend address and port collide (snat_port_retry) and run out
	// (snat_no_port).
	for _, pool := range [][]netip.Addr{nat4Pool, nat6Pool} {
		c.NAT.Sources = append(c.NAT.Sources, pool[:Pick(s, 1, 1, 2, 2, 0)]...)
	}
	// A source that is also a VIP's address: replies to its ports are
	// translated before any service of that address is looked up, ICMP
	// errors about its flows go to their clients, anything else is the
	// VIP's.
	if len(c.VIPs) > 0 && s.Chance(15) {
		c.NAT.Sources = append(c.NAT.Sources, Pick(s, c.VIPs...).Key.Addr)
	}
	size := Pick(s, 1, 1, 2, 3, 4, 16, 300, 65536)
	c.NAT.PortLo = Pick[uint16](s, 1024, 20000, 60000, 65535, 1+uint16(s.N(65535)))
	c.NAT.PortHi = uint16(min(65535, int(c.NAT.PortLo)+size-1))
	c.Encap4 = Pick(s, encap4Choices...)
	c.Encap6 = Pick(s, encap6Choices...)
	c.TTL = Pick[uint8](s, 0, 0, 17, 255)
	c.DisableEcho = s.Chance(20)
	if s.Chance(15) {
		// Flow tables that fill up. A failed pin makes the program stop
		// pinning for a while (a per-CPU backoff the model has no clock
		// for). Once a table is full, that does not matter, but for a pin
		// replacing a stale one, which succeeds in a full table: with
		// every backend up and every id an entry, no pin is ever stale.
		// At most 4: tables of at most 4 buckets, where every key may
		// live in every bucket, so that a full table is full for every
		// key (xdp.FrameModel.MaxFlows).
		c.MaxFlows = min(1+s.N(6), 4)
		for i := range c.Backends {
			c.Backends[i].Up = true
		}
		// The backoff is per CPU, not per family: a failure in one
		// family's table would stop pins in the other one's too, for a
		// while. Only VIPs of one family are in transition (pins are made
		// only there), so once that table is full, every pin fails.
		fam := Pick(s, true, false)
		for i, v := range c.VIPs {
			if v.Key.Addr.Is4() != fam && len(v.Tables) > 1 {
				c.VIPs[i].Tables = v.Tables[len(v.Tables)-1:]
			}
		}
		for _, v := range c.VIPs {
			for _, t := range v.Tables {
				for i, id := range t {
					if id == missingID {
						t[i] = 1
					}
				}
			}
		}
		// The pins written before the run must fit.
		var pins []xdp.Flow
		n := map[bool]map[xdp.FlowKey]bool{true: {}, false: {}}
		for _, p := range c.Pins {
			if p.BackendID == missingID {
				p.BackendID = 1
			}
			k, fam := xdp.FlowKey{Src: p.Src, Dst: p.Dst, Proto: p.Proto}, p.Src.Addr().Is4()
			if !n[fam][k] && len(n[fam]) >= c.MaxFlows {
				continue
			}
			n[fam][k] = true
			pins = append(pins, p)
		}
		c.Pins = pins
	}
	// Backends that go down and up again, so that NAT flows lose theirs
	// (and pins go stale). Not with a small flow table: a pin that goes
	// stale in a full table would be replaced, where the model has no
	// backoff to tell when.
	if c.MaxFlows == 0 && s.Chance(40) {
		// Mostly a backend of a snat service's table.
		var snat []uint32
		for _, v := range c.VIPs {
			if v.Mode == xdp.ModeSNAT && len(v.Tables) > 0 {
				for _, id := range v.Tables[len(v.Tables)-1] {
					if id != missingID {
						snat = append(snat, id)
					}
				}
			}
		}
		for range 1 + s.N(2) {
			id := uint32(1 + s.N(nb))
			if len(snat) > 0 && s.Chance(70) {
				id = Pick(s, snat...)
			}
			c.Flips = append(c.Flips, Flip{ID: id, At: s.N(64), Every: Pick(s, 7, 16, 40, 1<<30)})
		}
	}
	return c
}

// Step applies to the model what happens before frame n (counted from 0):
// the backends that flip. It returns their ids.
func (c *Config) Step(m *xdp.FrameModel, n int) []uint32 {
	var ids []uint32
	for _, f := range c.Flips {
		k := n - f.At
		if k >= 0 && (k < 4*f.Every && k%f.Every == 0 || k >= 4*f.Every && k%1000 == 0) {
			b := m.State.Backends[f.ID]
			b.Up = !b.Up
			m.State.Backends[f.ID] = b
			ids = append(ids, f.ID)
		}
	}
	return ids
}

// sameFamily is a backend of the family (v4 or not), or id when there is
// none.
func sameFamily(s *Source, bs []BackendDef, v4 bool, id uint32) uint32 {
	var ids []uint32
	for _, b := range bs {
		if b.Addr.Is4() == v4 {
			ids = append(ids, b.ID)
		}
	}
	if len(ids) == 0 {
		return id
	}
	return Pick(s, ids...)
}

// String is the configuration as a reproducer reads it.
func (c *Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config: encap4 %v encap6 %v ttl %d disable-echo %v max-flows %d\n", c.Encap4, c.Encap6, c.TTL, c.DisableEcho, c.MaxFlows)
	fmt.Fprintf(&b, "  snat sources %v ports %d-%d\n", c.NAT.Sources, c.NAT.PortLo, c.NAT.PortHi)
	for _, be := range c.Backends {
		fmt.Fprintf(&b, "  backend %d: %s port %d mac %s egress %s mtu %d up %v\n", be.ID, be.Addr, be.Port, be.MAC, be.Egress, be.MTU, be.Up)
	}
	for _, f := range c.Flips {
		fmt.Fprintf(&b, "  flip backend %d before frame %d and every %d after\n", f.ID, f.At, f.Every)
	}
	for _, v := range c.VIPs {
		fmt.Fprintf(&b, "  vip %s: %s seed %#x tables %v\n", v.Key, v.Mode, v.Seed, v.Tables)
	}
	for _, p := range c.Pins {
		fmt.Fprintf(&b, "  pin %s -> %s %s: backend %d\n", p.Src, p.Dst, p.Proto, p.BackendID)
	}
	return b.String()
}

// lookup finds the service of a flow as PinFlow does: exact, then port 0.
func (c *Config) lookup(dst netip.AddrPort, proto xdp.Proto) (int, bool) {
	for _, port := range []uint16{dst.Port(), 0} {
		for i, v := range c.VIPs {
			if v.Key == (xdp.VIPKey{Addr: dst.Addr(), Port: port, Proto: proto}) {
				return i, true
			}
		}
	}
	return 0, false
}

// Model is the frame model of the configuration, as written into a
// datapath whose tx ports hold txPort.
func (c *Config) Model(env Env) *xdp.FrameModel {
	s := &xdp.ModelState{VIPs: map[xdp.VIPKey]xdp.ModelVIP{}, Backends: map[uint32]xdp.Backend{}}
	for _, b := range c.Backends {
		s.Backends[b.ID] = c.backend(b, env)
	}
	hasPins := map[int]bool{}
	for _, p := range c.Pins {
		if i, ok := c.lookup(p.Dst, p.Proto); ok {
			hasPins[i] = true
		}
	}
	for i, v := range c.VIPs {
		mv := xdp.ModelVIP{Key: v.Key, Mode: v.Mode, Seed: v.Seed, HasPins: hasPins[i]}
		// SetTable does not write again the table a service has: that
		// starts no transition.
		tables := slices.CompactFunc(slices.Clone(v.Tables), slices.Equal)
		if n := len(tables); n > 0 {
			mv.Table = tables[n-1]
			if n > 1 {
				mv.Prev, mv.InTransition, mv.HasPins = tables[n-2], true, true
			}
		}
		s.VIPs[v.Key] = mv
	}
	m := xdp.NewFrameModel(s)
	for _, p := range c.Pins {
		m.AddPin(xdp.FlowKey{Src: p.Src, Dst: p.Dst, Proto: p.Proto}, p.BackendID)
	}
	m.Encap4, m.Encap6 = c.Encap4, c.Encap6
	m.TxPorts[env.TxPort] = true
	if c.TTL != 0 {
		m.TTL = c.TTL
	}
	m.Echo = !c.DisableEcho
	m.MaxFlows = c.MaxFlows
	m.NAT = c.NAT
	return m
}

func (c *Config) backend(b BackendDef, env Env) xdp.Backend {
	be := xdp.Backend{Addr: b.Addr, NextHopMAC: b.MAC, SrcMAC: egressMAC, MTU: b.MTU, Up: b.Up, Port: b.Port}
	switch b.Egress {
	case EgressIngress:
		be.IfIndex = env.Ingress
	case EgressTxPort:
		be.IfIndex = env.TxPort
	default:
		be.IfIndex = env.NoPort
	}
	return be
}

// Apply writes the configuration into d; the caller is in env's namespace.
func (c *Config) Apply(d *xdp.Datapath, env Env) error {
	if err := d.AddTxPort(env.TxPort); err != nil {
		return err
	}
	for _, b := range c.Backends {
		if err := d.UpsertBackend(b.ID, c.backend(b, env)); err != nil {
			return err
		}
	}
	for _, v := range c.VIPs {
		if err := d.UpsertVIP(v.Key, xdp.VIP{Mode: v.Mode, HashSeed: v.Seed}); err != nil {
			return err
		}
		for _, t := range v.Tables {
			if err := d.SetTable(v.Key, t); err != nil {
				return err
			}
		}
	}
	for _, p := range c.Pins {
		if err := d.PinFlow(p); err != nil {
			return err
		}
	}
	if len(c.NAT.Sources) > 0 {
		if err := d.SetNAT(c.NAT); err != nil {
			return err
		}
	}
	return d.SetEncapSource(c.Encap4, c.Encap6)
}
