package config

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// validate checks what no single node shows: names and addresses used twice,
// references between sections, and families that must match. It skips values
// the decoder already refused (left zero), so that one mistake is reported
// once.
func (c *Config) validate(d *decoder) {
	at := func(path, format string, args ...any) {
		d.errorAt(path, c.position(path), format, args...)
	}

	// Interfaces, and the ones L2 announcements use.
	ifaces := make(map[string]int)
	for i, iface := range c.Interfaces {
		if iface.Name == "" {
			continue
		}
		if first, ok := ifaces[iface.Name]; ok {
			at(index("interfaces", i)+".name", "%q is already listed as interfaces[%d]", iface.Name, first)
			continue
		}
		ifaces[iface.Name] = i
	}
	announced := make(map[string]int)
	for i, name := range c.Announce.L2.Interfaces {
		path := index("announce.l2.interfaces", i)
		if first, ok := announced[name]; ok {
			at(path, "%q is already listed as announce.l2.interfaces[%d]", name, first)
			continue
		}
		announced[name] = i
		if _, ok := ifaces[name]; !ok {
			at(path, "%q is not listed in interfaces", name)
		}
	}

	// Appliances that share VIPs (behind ECMP, or active and standby) must
	// share the seed: a generated one differs on each.
	const shareSeed = "needs maglev.seed: appliances that share VIPs must share the seed, or a flow that moves between them reaches another backend; make one with: head -c 16 /dev/urandom | base64"
	if !c.Maglev.SeedSet {
		if c.Announce.BGP != nil {
			at("announce.bgp", shareSeed)
		}
		if c.Announce.L2.Mode == L2ModeExternal {
			at("announce.l2.mode", shareSeed)
		}
	}

	// BGP peers: one session per address.
	if b := c.Announce.BGP; b != nil {
		peers := make(map[netip.Addr]int)
		for i, p := range b.Peers {
			if !p.Address.IsValid() {
				continue
			}
			path := index("announce.bgp.peers", i) + ".address"
			if first, ok := peers[p.Address]; ok {
				at(path, "%q is already listed as announce.bgp.peers[%d]", p.Address, first)
				continue
			}
			peers[p.Address] = i
		}
	}

	// Pools: unique names, blocks that do not overlap within or across pools.
	pools := make(map[string]int)
	type block struct {
		path  string
		pos   pos
		block Block
	}
	var blocks []block
	for i, p := range c.Pools {
		if p.Name != "" {
			if first, ok := pools[p.Name]; ok {
				at(index("pools", i)+".name", "%q is already used by pools[%d]", p.Name, first)
			} else {
				pools[p.Name] = i
			}
		}
		for j, b := range p.Blocks {
			path := index(index("pools", i)+".blocks", j)
			blocks = append(blocks, block{path, c.position(path), b})
		}
	}
	// Sweep the blocks in address order (IPv4 sorts before IPv6), keeping
	// the one reaching furthest; a block starting at or before its end
	// overlaps it. The later of the two in the file is reported.
	slices.SortStableFunc(blocks, func(a, b block) int { return a.block.Start.Compare(b.block.Start) })
	var reach *block
	for k := range blocks {
		b := &blocks[k]
		if reach != nil && reach.block.Stop.BitLen() == b.block.Start.BitLen() && b.block.Start.Compare(reach.block.Stop) <= 0 {
			later, earlier := b, reach
			if !posLess(reach.pos, b.pos) {
				later, earlier = reach, b
			}
			d.errorAt(later.path, later.pos, "%s overlaps %s (%s)", later.block, earlier.path, earlier.block)
		}
		if reach == nil || reach.block.Stop.Compare(b.block.Stop) < 0 {
			reach = b
		}
	}

	// Services.
	names := make(map[string]int)
	type addrProto struct {
		addr  netip.Addr
		proto Protocol
	}
	type vip struct {
		addrProto
		port uint16
	}
	type portOf struct {
		service int
		port    uint16
	}
	specific := make(map[vip]int)           // the service with a VIP:port/protocol
	wildcard := make(map[addrProto]int)     // the service with every port
	firstPort := make(map[addrProto]portOf) // the first specific port
	for i := range c.ServiceSpecs {
		s := &c.ServiceSpecs[i]
		path := index("services", i)
		if s.Name != "" {
			if first, ok := names[s.Name]; ok {
				at(path+".name", "%q is already used by services[%d]", s.Name, first)
			} else {
				names[s.Name] = i
			}
		}
		if s.Pool != "" && !s.Address.IsValid() {
			if _, ok := pools[s.Pool]; !ok {
				at(path+".pool", "%q is not defined under pools", s.Pool)
			}
		}

		// SNAT translates within a family: the service's needs a source.
		if s.Mode == ModeSNAT && s.Address.IsValid() {
			if _, ok := c.SNAT.SourceOf(s.Address); !ok {
				at(path+".mode", "mode snat needs an %s address under snat.sources for %s", familyName(s.Address), s.Address)
			}
		}

		// A VIP:port/protocol belongs to one service; a port-0 service takes
		// every port of its address and protocol. (A service's own ports
		// are distinct, and 0 comes alone: the decoder saw to that.)
		if s.Address.IsValid() && s.Protocol != 0 {
			ap := addrProto{s.Address, s.Protocol}
			for k, port := range s.Ports {
				ppath := index(path+".ports", k)
				mine := vipString(s.Address, port, s.Protocol)
				if port == 0 {
					if o, ok := wildcard[ap]; ok {
						at(ppath, "%s is already defined by services[%d] (%q)", mine, o, c.ServiceSpecs[o].Name)
					} else if o, ok := firstPort[ap]; ok {
						at(ppath, "%s overlaps %s of services[%d] (%q)", mine, vipString(s.Address, o.port, s.Protocol), o.service, c.ServiceSpecs[o.service].Name)
					} else {
						wildcard[ap] = i
					}
					continue
				}
				key := vip{ap, port}
				if o, ok := specific[key]; ok {
					at(ppath, "%s is already defined by services[%d] (%q)", mine, o, c.ServiceSpecs[o].Name)
				} else if o, ok := wildcard[ap]; ok {
					at(ppath, "%s overlaps %s of services[%d] (%q)", mine, vipString(s.Address, 0, s.Protocol), o, c.ServiceSpecs[o].Name)
				} else {
					specific[key] = i
					if _, ok := firstPort[ap]; !ok {
						firstPort[ap] = portOf{i, port}
					}
				}
			}
		}

		// Backends: each address:port once; IPIP needs a source address of
		// each backend family.
		type backendKey struct {
			addr netip.Addr
			port uint16
		}
		backends := make(map[backendKey]int)
		needSource := [2]bool{} // IPv4, IPv6: already reported
		active := 0
		for k, b := range s.Backends {
			if b.Weight > 0 {
				active++
			}
			if !b.Address.IsValid() {
				continue
			}
			bpath := index(path+".backends", k) + ".address"
			key := backendKey{b.Address, b.Port}
			if first, ok := backends[key]; ok {
				if b.Port == 0 {
					at(bpath, "%q is already listed as backends[%d]", b.Address.String(), first)
				} else {
					at(bpath, "%q with port %d is already listed as backends[%d]", b.Address.String(), b.Port, first)
				}
				continue
			}
			backends[key] = k
			if s.Mode == ModeSNAT && s.Address.IsValid() && b.Address.Is4() != s.Address.Is4() {
				at(bpath, "%q is %s and the service %s; mode snat does not translate between families",
					b.Address.String(), familyName(b.Address), familyName(s.Address))
			}
			if s.Mode == ModeDSR && s.Encap == EncapIPIP {
				fam, field, src := 0, "encap.sourceIPv4", c.Encap.SourceIPv4
				if b.Address.Is6() {
					fam, field, src = 1, "encap.sourceIPv6", c.Encap.SourceIPv6
				}
				// A source given but refused was reported already.
				_, given := c.pos[field]
				if !src.IsValid() && !given && !needSource[fam] {
					needSource[fam] = true
					at(bpath, "%q needs %s for encap ipip", b.Address.String(), field)
				}
			}
		}
		if s.TableSize > 0 && active > s.TableSize {
			at(path+".backends", "%d backends with weight above 0 do not fit a table of %d slots; raise tableSize", active, s.TableSize)
		}
	}
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// vipString formats a VIP as address:port/protocol, with * for every port.
func vipString(addr netip.Addr, port uint16, proto Protocol) string {
	p := strconv.Itoa(int(port))
	if port == 0 {
		p = "*"
	}
	host := addr.String()
	if addr.Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%s/%s", host, p, proto)
}

// position returns where the node at path is, or where the closest enclosing
// node is.
func (c *Config) position(path string) pos {
	for {
		if p, ok := c.pos[path]; ok {
			return p
		}
		cut := max(lastIndexAny(path, ".["), 0)
		if cut == 0 {
			return pos{1, 1}
		}
		path = path[:cut]
	}
}

func lastIndexAny(s, chars string) int {
	for i := len(s) - 1; i >= 0; i-- {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return i
			}
		}
	}
	return -1
}

func posLess(a, b pos) bool {
	return cmp.Or(cmp.Compare(a.line, b.line), cmp.Compare(a.column, b.column)) < 0
}
