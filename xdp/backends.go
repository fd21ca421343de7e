package xdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Backend is where the datapath sends a service's flows.
type Backend struct {
	// Addr is the backend's address: the IPIP outer destination.
	Addr netip.Addr
	// IfIndex is the egress interface; the same as the ingress one means
	// XDP_TX, another one a redirect through the tx ports.
	IfIndex int
	// NextHopMAC is the MAC of the backend or of its gateway.
	NextHopMAC net.HardwareAddr
	// SrcMAC is the egress interface's MAC.
	SrcMAC net.HardwareAddr
	// MTU of the egress path; encapsulated packets that would exceed it are
	// answered with ICMP "fragmentation needed". 0: no check.
	MTU int
	// Up: pins to this backend are honoured. A backend that is down keeps no
	// flows (they re-balance to the table's choice).
	Up bool
}

func (b Backend) bpf() (lbBackend, error) {
	var v lbBackend
	if !b.Addr.IsValid() {
		return v, errors.New("no address")
	}
	if len(b.NextHopMAC) != 6 || len(b.SrcMAC) != 6 {
		return v, errors.New("next-hop and source MACs must be 6 bytes")
	}
	if b.MTU < 0 || b.MTU > 65535 {
		return v, fmt.Errorf("MTU %d out of range", b.MTU)
	}
	v.Addr = addr16(b.Addr.Unmap())
	v.Family = family(b.Addr.Unmap())
	if b.Up {
		v.Flags = uint8(lbXdplbBackendFlagsBACKEND_F_UP)
	}
	v.Mtu = uint16(b.MTU)
	v.Ifindex = uint32(b.IfIndex)
	copy(v.Dmac[:], b.NextHopMAC)
	copy(v.Smac[:], b.SrcMAC)
	return v, nil
}

func backendFrom(v lbBackend) Backend {
	return Backend{
		Addr:       addrFrom16(v.Addr, v.Family),
		IfIndex:    int(v.Ifindex),
		NextHopMAC: net.HardwareAddr(v.Dmac[:]),
		SrcMAC:     net.HardwareAddr(v.Smac[:]),
		MTU:        int(v.Mtu),
		Up:         v.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_UP) != 0,
	}
}

// UpsertBackend writes backend id (1..MaxBackends-1). The value is replaced as
// a whole: a packet sees the old entry or the new one. A new id's counters
// start from zero (DeleteBackend zeroed them).
func (d *Datapath) UpsertBackend(id uint32, b Backend) error {
	if id == 0 || int(id) >= d.opts.MaxBackends {
		return fmt.Errorf("backend id %d out of range 1-%d", id, d.opts.MaxBackends-1)
	}
	v, err := b.bpf()
	if err != nil {
		return fmt.Errorf("backend %d (%s): %w", id, b.Addr, err)
	}
	if err := d.objs.Backends.Put(id, &v); err != nil {
		return fmt.Errorf("writing backend %d (%s): %w", id, b.Addr, err)
	}
	return nil
}

// DeleteBackend removes backend id (tables must no longer reference it) and
// zeroes its counters, so that a backend given the id later starts from zero.
func (d *Datapath) DeleteBackend(id uint32) error {
	if err := d.objs.Backends.Delete(id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting backend %d: %w", id, ErrNotFound)
		}
		return fmt.Errorf("deleting backend %d: %w", id, err)
	}
	if err := d.objs.BackendStats.Put(id, d.zeroStats); err != nil {
		return fmt.Errorf("deleting backend %d: resetting counters: %w", id, err)
	}
	return nil
}

// Backends lists the backend entries by id.
func (d *Datapath) Backends() (map[uint32]Backend, error) {
	out := map[uint32]Backend{}
	var id uint32
	var v lbBackend
	it := d.objs.Backends.Iterate()
	for it.Next(&id, &v) {
		out[id] = backendFrom(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing backends: %w", err)
	}
	return out, nil
}

// AddTxPort lets backends be reached through interface ifindex when packets
// arrive on another one (XDP redirect). The interface needs an XDP program
// for redirected frames to leave through it on some drivers (veth).
func (d *Datapath) AddTxPort(ifindex int) error {
	if err := d.objs.TxPorts.Put(uint32(ifindex), uint32(ifindex)); err != nil {
		return fmt.Errorf("adding tx port %d: %w", ifindex, err)
	}
	return nil
}

// EncapSource sets the outer source addresses of IPIP encapsulation. A
// prefix shorter than the address length varies the host bits by flow hash
// (up to 16 bits for IPv4, 32 for IPv6) so a backend's RSS spreads flows.
func (d *Datapath) SetEncapSource(v4, v6 netip.Prefix) error {
	var s lbSettings
	if v4.IsValid() {
		if !v4.Addr().Is4() {
			return fmt.Errorf("encap source %s is not IPv4", v4)
		}
		spread := 32 - v4.Bits()
		if spread > 16 {
			return fmt.Errorf("encap source %s: at most 16 host bits may vary", v4)
		}
		b := v4.Addr().As4()
		s.EncapSrc4 = leUint32(b[:])
		s.EncapSrc4Spread = uint32(spread)
	}
	if v6.IsValid() {
		if !v6.Addr().Is6() || v6.Addr().Is4In6() {
			return fmt.Errorf("encap source %s is not IPv6", v6)
		}
		spread := 128 - v6.Bits()
		if spread > 32 {
			return fmt.Errorf("encap source %s: at most 32 host bits may vary", v6)
		}
		s.EncapSrc6 = v6.Addr().As16()
		s.EncapSrc6Spread = uint32(spread)
	}
	if err := d.objs.SettingsMap.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("writing settings: %w", err)
	}
	return nil
}

func leUint32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
