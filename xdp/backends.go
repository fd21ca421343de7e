package xdp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
	// Port is where SNAT sends the service's flows (0: the service's port).
	// DSR has no use for it: the backend answers on the VIP's port.
	Port uint16
	// MTU of the egress path; encapsulated packets that would exceed it are
	// answered with ICMP "fragmentation needed". 0: no check.
	MTU int
	// Up: pins to this backend are honoured. A backend that is down keeps no
	// flows (they re-balance to the table's choice).
	Up bool
	// Owner is the control plane's name for the entry, kept with it (and
	// across restarts) but not used by the program: it lets a restarted
	// reconciler find its entries again.
	Owner uint64
}

func (b Backend) bpf() (lbBackend, error) {
	var v lbBackend
	if !b.Addr.IsValid() {
		return v, errors.New("no address")
	}
	if len(b.NextHopMAC) != 6 || len(b.SrcMAC) != 6 {
		return v, errors.New("next-hop and source MACs must be 6 bytes")
	}
	if b.MTU != 0 && (b.MTU < 576 || b.MTU > 65535) {
		return v, fmt.Errorf("MTU %d out of range 576-65535", b.MTU)
	}
	v.Addr = addr16(b.Addr.Unmap())
	v.Family = family(b.Addr.Unmap())
	v.Flags = uint8(lbXdplbBackendFlagsBACKEND_F_VALID)
	if b.Up {
		v.Flags |= uint8(lbXdplbBackendFlagsBACKEND_F_UP)
	}
	v.Mtu = uint16(b.MTU)
	v.Port = port(b.Port)
	v.Ifindex = uint32(b.IfIndex)
	v.Owner = b.Owner
	copy(v.Dmac[:], b.NextHopMAC)
	copy(v.Smac[:], b.SrcMAC)
	return v, nil
}

func backendFrom(v lbBackend) Backend {
	return Backend{
		Addr:       addrFrom16(v.Addr, v.Family),
		IfIndex:    int(v.Ifindex),
		NextHopMAC: net.HardwareAddr(bytes.Clone(v.Dmac[:])),
		SrcMAC:     net.HardwareAddr(bytes.Clone(v.Smac[:])),
		MTU:        int(v.Mtu),
		Port:       port(v.Port),
		Up:         v.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_UP) != 0,
		Owner:      v.Owner,
	}
}

// backendState is what the datapath holds for a backend id: the entry in
// use (invalid once deleted), its half, and when the other half stopped
// being in use.
type backendState struct {
	entry   lbBackend
	gen     uint32
	flipped use
}

// A packet reads a backend entry long after it found it valid: the next hop,
// the MACs and the interface are read when it is forwarded. Whatever names
// an id (a table, the previous table of a transition, a pin) may lead a
// packet to its entry at any time, so the half packets read is never written:
// a new, changed or deleted entry is written into the other half, which then
// becomes the one in use, and that other half is written again only once no
// packet can still be reading it (after a Sync, or a second later). A packet
// therefore sees the entry before a change or after it, a backend or none,
// never one half written or half zeroed.

// UpsertBackend writes backend id (1..MaxBackends-1). A packet sees the old
// entry (or none) or the new one, never a mix. A new id's counters start
// from zero (DeleteBackend zeroed them).
func (d *Datapath) UpsertBackend(id uint32, b Backend) error {
	if id == 0 || int(id) >= d.opts.MaxBackends {
		return fmt.Errorf("backend id %d out of range 1-%d", id, d.opts.MaxBackends-1)
	}
	v, err := b.bpf()
	if err != nil {
		return fmt.Errorf("backend %d (%s): %w", id, b.Addr, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, live := d.backends[id]
	if !live {
		// A deleted id, or one never written (all zero): its entry in use
		// is invalid, and may still be read through a stale pin or a
		// previous table.
		if st = d.retired[id]; st == nil {
			st = &backendState{}
		}
	}
	if err := d.flipBackend(id, st, v); err != nil {
		return fmt.Errorf("writing backend %d (%s): %w", id, b.Addr, err)
	}
	if !live {
		delete(d.retired, id)
		d.backends[id] = st
	}
	return nil
}

// flipBackend makes v the entry of id in use: it writes v into the half not
// in use (once no packet can still read that half), then flips the
// generation.
func (d *Datapath) flipBackend(id uint32, st *backendState, v lbBackend) error {
	if st.entry == v {
		return nil
	}
	// The half about to be written was in use until the last change: if
	// that was moments ago, a packet may still be reading it.
	if d.recent(st.flipped) {
		if err := d.sync(); err != nil {
			return err
		}
	}
	slot := lbBackendSlot{Gen: st.gen}
	slot.B[st.gen&1] = st.entry // the half in use, rewritten as it is
	slot.B[(st.gen+1)&1] = v
	if err := d.objs.Backends.Put(id, &slot); err != nil {
		return err
	}
	slot.Gen = st.gen + 1
	if err := d.objs.Backends.Put(id, &slot); err != nil {
		return err
	}
	st.entry, st.gen, st.flipped = v, slot.Gen, d.now()
	return nil
}

// DeleteBackend removes backend id and zeroes its counters, so that a backend
// given the id later starts from zero. The entry becomes invalid as a change
// does (the other half, then a flip): a packet that still reaches the id
// through a previous table or a pin finds no backend and follows the current
// table, and one that read the entry just before keeps reading it whole. The
// caller must make sure that no packet can still take the id from a current
// table: swap the tables, then Sync, then delete.
func (d *Datapath) DeleteBackend(id uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.backends[id]
	if !ok {
		return fmt.Errorf("deleting backend %d: %w", id, ErrNotFound)
	}
	if err := d.flipBackend(id, st, lbBackend{}); err != nil {
		return fmt.Errorf("deleting backend %d: %w", id, err)
	}
	delete(d.backends, id)
	d.retired[id] = st
	if err := d.objs.BackendStats.Put(id, d.zeroStats); err != nil {
		return fmt.Errorf("deleting backend %d: resetting counters: %w", id, err)
	}
	return nil
}

// Backends lists the backend entries by id.
func (d *Datapath) Backends() (map[uint32]Backend, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[uint32]Backend, len(d.backends))
	for id, st := range d.backends {
		out[id] = backendFrom(st.entry)
	}
	return out, nil
}

// recoverBackends reads the backend entries of an earlier instance, which
// may have changed them moments ago: their halves not in use are written
// only after a Sync.
func (d *Datapath) recoverBackends() error {
	var id uint32
	var slot lbBackendSlot
	it := d.objs.Backends.Iterate()
	for it.Next(&id, &slot) {
		e := slot.B[slot.Gen&1]
		switch {
		case e.Flags&uint8(lbXdplbBackendFlagsBACKEND_F_VALID) != 0:
			d.backends[id] = &backendState{entry: e, gen: slot.Gen, flipped: d.now()}
		case slot != lbBackendSlot{}:
			// Deleted by the earlier instance.
			d.retired[id] = &backendState{entry: e, gen: slot.Gen, flipped: d.now()}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading pinned backends: %w", err)
	}
	return nil
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
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.settings
	s.EncapSrc4, s.EncapSrc4Spread, s.EncapSrc6, s.EncapSrc6Spread = 0, 0, [16]byte{}, 0
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
	d.settings = s
	return nil
}

func leUint32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
