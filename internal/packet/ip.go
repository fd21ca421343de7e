package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// IPv4Flags are the three flag bits of the IPv4 header.
type IPv4Flags uint8

// IPv4 flag bits.
const (
	IPv4MoreFragments IPv4Flags = 1 << 0 // MF
	IPv4DontFragment  IPv4Flags = 1 << 1 // DF
	IPv4Reserved      IPv4Flags = 1 << 2 // the reserved bit, must be zero on the wire
)

// IPv4 is an IPv4 header (RFC 791).
type IPv4 struct {
	Src, Dst netip.Addr // IPv4 addresses
	TOS      uint8      // DSCP and ECN
	ID       uint16
	Flags    IPv4Flags
	// FragmentOffset is in units of 8 bytes (13 bits).
	FragmentOffset uint16
	TTL            uint8
	// Protocol is derived from Payload when zero (TCP, UDP, ICMPv4, IPv4,
	// IPv6, RawIP).
	Protocol uint8
	// Options are appended after the fixed header and padded with zeros (End
	// of Option List) to a multiple of 4 bytes.
	Options []byte
	// Version is derived (4) when zero.
	Version uint8
	// IHL is the header length in 32-bit words, derived when zero. The
	// header checksum always covers the bytes written (fixed header and
	// options), whatever IHL says.
	IHL uint8
	// TotalLength is derived when zero.
	TotalLength uint16
	// BadChecksum writes a wrong header checksum.
	BadChecksum bool
	Payload     Layer
}

func (IPv4) proto() (uint8, uint16, bool) { return ProtoIPIP, EtherTypeIPv4, true }

func (ip IPv4) encode(encodeCtx) ([]byte, error) {
	if !ip.Src.Is4() || !ip.Dst.Is4() {
		return nil, fmt.Errorf("ipv4: addresses %v and %v must be IPv4", ip.Src, ip.Dst)
	}
	if ip.FragmentOffset > 0x1fff {
		return nil, fmt.Errorf("ipv4: fragment offset %d does not fit 13 bits", ip.FragmentOffset)
	}
	if ip.Flags > 7 {
		return nil, fmt.Errorf("ipv4: flags %#x do not fit 3 bits", ip.Flags)
	}
	payload, err := encodePayload(ip.Payload, encodeCtx{src: ip.Src, dst: ip.Dst})
	if err != nil {
		return nil, err
	}
	opts := padTo(ip.Options, 4, 0)
	hlen := 20 + len(opts)
	if hlen > 60 {
		return nil, fmt.Errorf("ipv4: %d bytes of options, at most 40 fit", len(opts))
	}
	version, ihl := ip.Version, ip.IHL
	if version == 0 {
		version = 4
	}
	if ihl == 0 {
		ihl = uint8(hlen / 4)
	}
	if version > 15 || ihl > 15 {
		return nil, fmt.Errorf("ipv4: version %d or IHL %d does not fit 4 bits", version, ihl)
	}
	total := ip.TotalLength
	if total == 0 {
		if hlen+len(payload) > 0xffff {
			return nil, fmt.Errorf("ipv4: packet of %d bytes is too long", hlen+len(payload))
		}
		total = uint16(hlen + len(payload))
	}
	proto := ip.Protocol
	if proto == 0 && ip.Payload != nil {
		proto, _, _ = ip.Payload.proto()
	}
	b := make([]byte, hlen, hlen+len(payload))
	b[0] = version<<4 | ihl
	b[1] = ip.TOS
	binary.BigEndian.PutUint16(b[2:], total)
	binary.BigEndian.PutUint16(b[4:], ip.ID)
	binary.BigEndian.PutUint16(b[6:], uint16(ip.Flags)<<13|ip.FragmentOffset)
	b[8] = ip.TTL
	b[9] = proto
	copy(b[12:16], ip.Src.AsSlice())
	copy(b[16:20], ip.Dst.AsSlice())
	copy(b[20:], opts)
	c := checksum(b)
	if ip.BadChecksum {
		c = corrupt(c)
	}
	binary.BigEndian.PutUint16(b[10:], c)
	return append(b, payload...), nil
}

// IPv6ExtHeader is one IPv6 extension header, given as its complete bytes. The
// builder overwrites the first byte (Next Header) with the number of whatever
// follows, so the chain stays consistent. [HopByHopHeader], [DstOptsHeader],
// [RoutingHeader] and [FragmentHeader] build well-formed ones.
type IPv6ExtHeader struct {
	// Type is the protocol number that names this header in the previous
	// header's Next Header field, e.g. [ProtoFragment].
	Type  uint8
	Bytes []byte
}

// HopByHopHeader returns a Hop-by-Hop Options header carrying options (TLVs),
// padded with PadN to a multiple of 8 bytes.
func HopByHopHeader(options []byte) IPv6ExtHeader {
	return IPv6ExtHeader{Type: ProtoHopByHop, Bytes: optionsHeader(options)}
}

// DstOptsHeader returns a Destination Options header carrying options (TLVs),
// padded with PadN to a multiple of 8 bytes.
func DstOptsHeader(options []byte) IPv6ExtHeader {
	return IPv6ExtHeader{Type: ProtoDstOpts, Bytes: optionsHeader(options)}
}

func optionsHeader(options []byte) []byte {
	b := append([]byte{0, 0}, options...)
	switch pad := (8 - len(b)%8) % 8; pad {
	case 0:
	case 1:
		b = append(b, 0) // Pad1
	default:
		b = append(b, 1, byte(pad-2)) // PadN
		b = append(b, make([]byte, pad-2)...)
	}
	b[1] = byte(len(b)/8 - 1)
	return b
}

// RoutingHeader returns a Routing header of the given type with data following
// its first four bytes (for type 0 and 2, four reserved bytes and then the
// addresses; for type 4, SRH, the rest of the SRH), zero-padded to a multiple
// of 8 bytes.
func RoutingHeader(routingType, segmentsLeft uint8, data []byte) IPv6ExtHeader {
	b := padTo(append([]byte{0, 0, routingType, segmentsLeft}, data...), 8, 0)
	b[1] = byte(len(b)/8 - 1)
	return IPv6ExtHeader{Type: ProtoRouting, Bytes: b}
}

// FragmentHeader returns a Fragment header; offset is in units of 8 bytes.
func FragmentHeader(offset uint16, more bool, id uint32) IPv6ExtHeader {
	b := make([]byte, 8)
	m := offset << 3
	if more {
		m |= 1
	}
	binary.BigEndian.PutUint16(b[2:], m)
	binary.BigEndian.PutUint32(b[4:], id)
	return IPv6ExtHeader{Type: ProtoFragment, Bytes: b}
}

// IPv6 is an IPv6 header (RFC 8200) with optional extension headers.
type IPv6 struct {
	Src, Dst     netip.Addr // IPv6 addresses
	TrafficClass uint8
	FlowLabel    uint32 // 20 bits
	HopLimit     uint8
	// NextHeader is derived when zero: the first extension header's Type, or
	// the Payload's protocol.
	NextHeader uint8
	// PayloadLength is derived when zero.
	PayloadLength uint16
	ExtHeaders    []IPv6ExtHeader
	Payload       Layer
}

func (IPv6) proto() (uint8, uint16, bool) { return ProtoIPv6, EtherTypeIPv6, true }

func (ip IPv6) encode(encodeCtx) ([]byte, error) {
	if !ip.Src.Is6() || ip.Src.Is4In6() || !ip.Dst.Is6() || ip.Dst.Is4In6() {
		return nil, fmt.Errorf("ipv6: addresses %v and %v must be IPv6", ip.Src, ip.Dst)
	}
	if ip.FlowLabel > 0xfffff {
		return nil, fmt.Errorf("ipv6: flow label %#x does not fit 20 bits", ip.FlowLabel)
	}
	dst, err := finalDestination(ip.Dst, ip.ExtHeaders)
	if err != nil {
		return nil, err
	}
	payload, err := encodePayload(ip.Payload, encodeCtx{src: ip.Src, dst: dst})
	if err != nil {
		return nil, err
	}
	payloadProto := uint8(0)
	if ip.Payload != nil {
		payloadProto, _, _ = ip.Payload.proto()
	}
	var ext []byte
	for i, h := range ip.ExtHeaders {
		if len(h.Bytes) == 0 {
			return nil, fmt.Errorf("ipv6: extension header %d is empty", i)
		}
		next := payloadProto
		if i+1 < len(ip.ExtHeaders) {
			next = ip.ExtHeaders[i+1].Type
		}
		start := len(ext)
		ext = append(ext, h.Bytes...)
		ext[start] = next
	}
	nh := ip.NextHeader
	if nh == 0 {
		if len(ip.ExtHeaders) > 0 {
			nh = ip.ExtHeaders[0].Type
		} else {
			nh = payloadProto
		}
	}
	plen := ip.PayloadLength
	if plen == 0 {
		if len(ext)+len(payload) > 0xffff {
			return nil, fmt.Errorf("ipv6: payload of %d bytes is too long", len(ext)+len(payload))
		}
		plen = uint16(len(ext) + len(payload))
	}
	b := make([]byte, 40, 40+len(ext)+len(payload))
	binary.BigEndian.PutUint32(b[0:], 6<<28|uint32(ip.TrafficClass)<<20|ip.FlowLabel)
	binary.BigEndian.PutUint16(b[4:], plen)
	b[6] = nh
	b[7] = ip.HopLimit
	copy(b[8:24], ip.Src.AsSlice())
	copy(b[24:40], ip.Dst.AsSlice())
	b = append(b, ext...)
	return append(b, payload...), nil
}

// finalDestination returns the address an upper-layer checksum uses (RFC 8200
// section 8.1): the last one of a routing header that still has segments left.
func finalDestination(dst netip.Addr, ext []IPv6ExtHeader) (netip.Addr, error) {
	for _, h := range ext {
		if h.Type != ProtoRouting || len(h.Bytes) < 4 || h.Bytes[3] == 0 {
			continue
		}
		var a []byte
		switch h.Bytes[2] {
		case 0, 2: // addresses after 4 reserved bytes, the final one last
			n := (len(h.Bytes) - 8) / 16
			if n < 1 {
				return netip.Addr{}, fmt.Errorf("ipv6: routing header type %d holds no address", h.Bytes[2])
			}
			a = h.Bytes[8+16*(n-1) : 8+16*n]
		case 4: // SRH: the final segment is Segment List[0]
			if len(h.Bytes) < 24 {
				return netip.Addr{}, fmt.Errorf("ipv6: segment routing header holds no segment")
			}
			a = h.Bytes[8:24]
		default:
			return netip.Addr{}, fmt.Errorf("ipv6: routing header type %d: final destination unknown", h.Bytes[2])
		}
		dst = netip.AddrFrom16([16]byte(a))
	}
	return dst, nil
}

func padTo(b []byte, n int, fill byte) []byte {
	out := append([]byte(nil), b...)
	for len(out)%n != 0 {
		out = append(out, fill)
	}
	return out
}
