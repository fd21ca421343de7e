package packet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// EtherTypes.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeVLAN uint16 = 0x8100 // 802.1Q
	EtherTypeQinQ uint16 = 0x88a8 // 802.1ad
	EtherTypeIPv6 uint16 = 0x86dd
)

// IP protocol numbers (IPv4 Protocol, IPv6 Next Header).
const (
	ProtoHopByHop uint8 = 0
	ProtoICMP     uint8 = 1
	ProtoIPIP     uint8 = 4 // IPv4 in IP
	ProtoTCP      uint8 = 6
	ProtoUDP      uint8 = 17
	ProtoIPv6     uint8 = 41 // IPv6 in IP
	ProtoRouting  uint8 = 43
	ProtoFragment uint8 = 44
	ProtoGRE      uint8 = 47
	ProtoAH       uint8 = 51
	ProtoICMPv6   uint8 = 58
	ProtoNoNext   uint8 = 59
	ProtoDstOpts  uint8 = 60
)

// A Layer is one header and what it carries: [Ethernet], [IPv4], [IPv6], [TCP],
// [UDP], [ICMPv4], [ICMPv6], or opaque bytes ([Raw], [RawIP]). Values and
// pointers both work.
type Layer interface {
	encode(ctx encodeCtx) ([]byte, error)
	// proto reports the IP protocol number and EtherType that identify the
	// layer to the one enclosing it, or ok=false when it has none.
	proto() (ipProto uint8, etherType uint16, ok bool)
}

// encodeCtx is what an enclosing layer tells the one inside it.
type encodeCtx struct {
	// src and dst are the pseudo-header addresses of the enclosing IP
	// layer; invalid when there is none.
	src, dst netip.Addr
}

// Build serializes l and everything nested in it.
func Build(l Layer) ([]byte, error) {
	if l == nil {
		return nil, fmt.Errorf("building packet: nil layer")
	}
	return l.encode(encodeCtx{})
}

// MustBuild is like [Build] but panics on error. It is meant for fixture tables.
func MustBuild(l Layer) []byte {
	b, err := Build(l)
	if err != nil {
		panic(err)
	}
	return b
}

func encodePayload(l Layer, ctx encodeCtx) ([]byte, error) {
	if l == nil {
		return nil, nil
	}
	return l.encode(ctx)
}

// Raw is an opaque payload. It identifies no protocol: the enclosing layer's
// protocol field or EtherType has to be set explicitly.
type Raw []byte

func (r Raw) encode(encodeCtx) ([]byte, error) { return append([]byte(nil), r...), nil }
func (Raw) proto() (uint8, uint16, bool)       { return 0, 0, false }

// RawIP is a complete IPv4 or IPv6 packet given as bytes. The enclosing layer
// infers its protocol (4 or 41) or EtherType from the version nibble.
type RawIP []byte

func (r RawIP) encode(encodeCtx) ([]byte, error) { return append([]byte(nil), r...), nil }
func (r RawIP) proto() (uint8, uint16, bool) {
	if len(r) == 0 {
		return 0, 0, false
	}
	switch r[0] >> 4 {
	case 4:
		return ProtoIPIP, EtherTypeIPv4, true
	case 6:
		return ProtoIPv6, EtherTypeIPv6, true
	}
	return 0, 0, false
}

// Encap returns the outer IP header (an [IPv4] or [IPv6], whose Payload is
// ignored) followed by the inner IP packet: IPIP, 6in4, 4in6 or IP6IP6. The outer
// protocol is 4 for an inner IPv4 packet and 41 for an inner IPv6 one unless the
// outer layer sets it.
func Encap(outer Layer, inner []byte) ([]byte, error) {
	switch o := outer.(type) {
	case IPv4:
		o.Payload = RawIP(inner)
		return Build(o)
	case *IPv4:
		c := *o
		c.Payload = RawIP(inner)
		return Build(c)
	case IPv6:
		o.Payload = RawIP(inner)
		return Build(o)
	case *IPv6:
		c := *o
		c.Payload = RawIP(inner)
		return Build(c)
	}
	return nil, fmt.Errorf("encapsulating: outer layer is %T, want IPv4 or IPv6", outer)
}

// VLAN is an 802.1Q tag.
type VLAN struct {
	TPID         uint16 // derived: 0x8100 when zero
	Priority     uint8  // PCP, 3 bits
	DropEligible bool   // DEI
	ID           uint16 // VID, 12 bits
}

// Ethernet is an Ethernet II header with at most one VLAN tag.
type Ethernet struct {
	Dst, Src net.HardwareAddr // 6 bytes each; nil means all zeros
	VLAN     *VLAN
	// EtherType is derived from Payload when zero (IPv4, IPv6, RawIP).
	EtherType uint16
	Payload   Layer
}

func (Ethernet) proto() (uint8, uint16, bool) { return 0, 0, false }

func (e Ethernet) encode(encodeCtx) ([]byte, error) {
	payload, err := encodePayload(e.Payload, encodeCtx{})
	if err != nil {
		return nil, err
	}
	et := e.EtherType
	if et == 0 {
		var ok bool
		if e.Payload != nil {
			_, et, ok = e.Payload.proto()
		}
		if !ok || et == 0 {
			return nil, fmt.Errorf("ethernet: EtherType not set and payload %T does not imply one", e.Payload)
		}
	}
	b := make([]byte, 0, 18+len(payload))
	for _, mac := range []net.HardwareAddr{e.Dst, e.Src} {
		switch len(mac) {
		case 0:
			b = append(b, make([]byte, 6)...)
		case 6:
			b = append(b, mac...)
		default:
			return nil, fmt.Errorf("ethernet: MAC address %q is %d bytes, want 6", mac, len(mac))
		}
	}
	if v := e.VLAN; v != nil {
		if v.Priority > 7 || v.ID > 0xfff {
			return nil, fmt.Errorf("ethernet: VLAN priority %d or ID %d out of range", v.Priority, v.ID)
		}
		tpid := v.TPID
		if tpid == 0 {
			tpid = EtherTypeVLAN
		}
		tci := uint16(v.Priority)<<13 | v.ID
		if v.DropEligible {
			tci |= 1 << 12
		}
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, tci)
	}
	b = binary.BigEndian.AppendUint16(b, et)
	return append(b, payload...), nil
}

// checksum returns the Internet checksum (RFC 1071) of the concatenated parts.
// Every part but the last must have an even length.
func checksum(parts ...[]byte) uint16 {
	var sum uint64
	for _, p := range parts {
		n := len(p) &^ 1
		for i := 0; i < n; i += 2 {
			sum += uint64(p[i])<<8 | uint64(p[i+1])
		}
		if len(p)%2 == 1 {
			sum += uint64(p[len(p)-1]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// corrupt turns a correct checksum into a wrong one: flipping the lowest bit
// changes its ones'-complement value, unlike ^c, which maps 0x0000 to its
// equivalent 0xffff.
func corrupt(c uint16) uint16 { return c ^ 1 }
