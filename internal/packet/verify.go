package packet

// The checkers parse on their own and compute checksums their own way
// (summing every word including the checksum field and expecting all ones,
// RFC 1071 section 1), sharing no code with the builders.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Errors returned by the checkers, wrapped with what was checked.
var (
	// ErrChecksum means a checksum is wrong.
	ErrChecksum = errors.New("bad checksum")
	// ErrTruncated means the bytes end inside a header or before the
	// length a header announces.
	ErrTruncated = errors.New("truncated")
	// ErrMalformed means a header field contradicts the packet (a version,
	// a header length, a protocol in the wrong family).
	ErrMalformed = errors.New("malformed")
	// ErrFragment means the packet is an IP fragment, whose L4 checksum
	// covers the reassembled datagram and cannot be verified alone.
	ErrFragment = errors.New("ip fragment: l4 checksum not verifiable")
	// ErrUnsupported means the packet carries something without a checksum
	// the checkers know (an unknown protocol or EtherType, a jumbogram).
	ErrUnsupported = errors.New("unsupported")
)

// maxNesting bounds how many IP-in-IP layers VerifyPacket follows.
const maxNesting = 8

// onesSum adds data as big-endian 16-bit words to acc with end-around carry;
// an odd trailing byte is padded with zero.
func onesSum(acc uint32, data []byte) uint32 {
	for i := 0; i < len(data); i += 2 {
		w := uint32(data[i]) << 8
		if i+1 < len(data) {
			w |= uint32(data[i+1])
		}
		acc += w
		acc = acc&0xffff + acc>>16
	}
	return acc
}

// checkSum reports whether the ones'-complement sum of pseudo (may be nil) and
// data, checksum field included, is all ones. If not, it returns the value the
// field at offset off in data should hold.
func checkSum(pseudo, data []byte, off int) (ok bool, got, want uint16) {
	got = binary.BigEndian.Uint16(data[off:])
	if onesSum(onesSum(0, pseudo), data) == 0xffff {
		return true, got, got
	}
	zeroed := append([]byte(nil), data...)
	zeroed[off], zeroed[off+1] = 0, 0
	return false, got, ^uint16(onesSum(onesSum(0, pseudo), zeroed))
}

// VerifyIPv4HeaderChecksum checks the header checksum of the IPv4 packet ip.
func VerifyIPv4HeaderChecksum(ip []byte) error {
	if len(ip) < 20 {
		return fmt.Errorf("ipv4 header: %d bytes: %w", len(ip), ErrTruncated)
	}
	if v := ip[0] >> 4; v != 4 {
		return fmt.Errorf("ipv4 header: version %d: %w", v, ErrMalformed)
	}
	hl := int(ip[0]&0xf) * 4
	if hl < 20 {
		return fmt.Errorf("ipv4 header: IHL %d: %w", hl/4, ErrMalformed)
	}
	if len(ip) < hl {
		return fmt.Errorf("ipv4 header: IHL %d but %d bytes: %w", hl/4, len(ip), ErrTruncated)
	}
	if ok, got, want := checkSum(nil, ip[:hl], 10); !ok {
		return fmt.Errorf("ipv4 header checksum is 0x%04x, want 0x%04x: %w", got, want, ErrChecksum)
	}
	return nil
}

// ipInfo is what the checkers need from an IP header.
type ipInfo struct {
	family   string // "ipv4" or "ipv6"
	src, dst netip.Addr
	proto    uint8
	l4       []byte
	fragment bool
}

func parseIP(b []byte) (ipInfo, error) {
	if len(b) < 1 {
		return ipInfo{}, fmt.Errorf("ip: empty: %w", ErrTruncated)
	}
	switch b[0] >> 4 {
	case 4:
		return parseIPv4(b)
	case 6:
		return parseIPv6(b)
	}
	return ipInfo{}, fmt.Errorf("ip: version %d: %w", b[0]>>4, ErrMalformed)
}

func parseIPv4(b []byte) (ipInfo, error) {
	if len(b) < 20 {
		return ipInfo{}, fmt.Errorf("ipv4: %d bytes: %w", len(b), ErrTruncated)
	}
	hl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	switch {
	case hl < 20:
		return ipInfo{}, fmt.Errorf("ipv4: IHL %d: %w", hl/4, ErrMalformed)
	case total < hl:
		return ipInfo{}, fmt.Errorf("ipv4: total length %d shorter than header %d: %w", total, hl, ErrMalformed)
	case total > len(b):
		return ipInfo{}, fmt.Errorf("ipv4: total length %d but %d bytes: %w", total, len(b), ErrTruncated)
	}
	ff := binary.BigEndian.Uint16(b[6:])
	return ipInfo{
		family:   "ipv4",
		src:      netip.AddrFrom4([4]byte(b[12:16])),
		dst:      netip.AddrFrom4([4]byte(b[16:20])),
		proto:    b[9],
		l4:       b[hl:total],
		fragment: ff&0x2000 != 0 || ff&0x1fff != 0,
	}, nil
}

func parseIPv6(b []byte) (ipInfo, error) {
	if len(b) < 40 {
		return ipInfo{}, fmt.Errorf("ipv6: %d bytes: %w", len(b), ErrTruncated)
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	if plen == 0 {
		return ipInfo{}, fmt.Errorf("ipv6: payload length 0 (jumbogram): %w", ErrUnsupported)
	}
	if 40+plen > len(b) {
		return ipInfo{}, fmt.Errorf("ipv6: payload length %d but %d bytes follow the header: %w", plen, len(b)-40, ErrTruncated)
	}
	info := ipInfo{
		family: "ipv6",
		src:    netip.AddrFrom16([16]byte(b[8:24])),
		dst:    netip.AddrFrom16([16]byte(b[24:40])),
	}
	nh, rest := b[6], b[40:40+plen]
	for {
		var n int
		switch nh {
		case ProtoHopByHop, ProtoDstOpts, ProtoRouting:
			if len(rest) < 8 {
				return ipInfo{}, fmt.Errorf("ipv6: extension header %d: %w", nh, ErrTruncated)
			}
			n = (int(rest[1]) + 1) * 8
			if len(rest) < n {
				return ipInfo{}, fmt.Errorf("ipv6: extension header %d of %d bytes: %w", nh, n, ErrTruncated)
			}
			if nh == ProtoRouting && rest[3] > 0 {
				dst, err := routingFinalDst(rest[:n])
				if err != nil {
					return ipInfo{}, err
				}
				info.dst = dst
			}
		case ProtoFragment:
			if len(rest) < 8 {
				return ipInfo{}, fmt.Errorf("ipv6: fragment header: %w", ErrTruncated)
			}
			n = 8
			if binary.BigEndian.Uint16(rest[2:])&0xfff9 != 0 {
				info.fragment = true
			}
		case ProtoAH:
			if len(rest) < 8 {
				return ipInfo{}, fmt.Errorf("ipv6: authentication header: %w", ErrTruncated)
			}
			n = (int(rest[1]) + 2) * 4
			if len(rest) < n {
				return ipInfo{}, fmt.Errorf("ipv6: authentication header of %d bytes: %w", n, ErrTruncated)
			}
		default:
			info.proto, info.l4 = nh, rest
			return info, nil
		}
		nh, rest = rest[0], rest[n:]
	}
}

// routingFinalDst returns the last destination of a routing header with
// segments left (RFC 8200 section 8.1).
func routingFinalDst(h []byte) (netip.Addr, error) {
	switch h[2] {
	case 0, 2:
		if len(h) < 24 {
			break
		}
		last := 8 + 16*((len(h)-8)/16-1)
		return netip.AddrFrom16([16]byte(h[last : last+16])), nil
	case 4:
		if len(h) < 24 {
			break
		}
		return netip.AddrFrom16([16]byte(h[8:24])), nil
	default:
		return netip.Addr{}, fmt.Errorf("ipv6: routing header type %d with segments left: final destination unknown: %w", h[2], ErrUnsupported)
	}
	return netip.Addr{}, fmt.Errorf("ipv6: routing header type %d holds no address: %w", h[2], ErrMalformed)
}

// VerifyL4Checksum checks the TCP, UDP, ICMP or ICMPv6 checksum of the IPv4 or
// IPv6 packet ipPacket. It does not check the IPv4 header checksum (see
// [VerifyPacket]). A UDP checksum of zero is accepted over IPv4 (RFC 768: no
// checksum) and rejected over IPv6 (RFC 8200). Anything it cannot verify is an
// error: a fragment ([ErrFragment]), another protocol, including IP-in-IP
// ([ErrUnsupported]), or a truncated packet ([ErrTruncated]).
func VerifyL4Checksum(ipPacket []byte) error {
	info, err := parseIP(ipPacket)
	if err != nil {
		return err
	}
	return verifyL4(info)
}

func verifyL4(info ipInfo) error {
	if info.fragment {
		return fmt.Errorf("%s: %w", info.family, ErrFragment)
	}
	l4 := info.l4
	var name string
	var pseudo []byte
	var off int
	switch info.proto {
	case ProtoTCP:
		name, off = "tcp", 16
		if len(l4) < 20 {
			return fmt.Errorf("%s: tcp header of %d bytes: %w", info.family, len(l4), ErrTruncated)
		}
		pseudo = pseudoHeader(info, len(l4))
	case ProtoUDP:
		name, off = "udp", 6
		if len(l4) < 8 {
			return fmt.Errorf("%s: udp header of %d bytes: %w", info.family, len(l4), ErrTruncated)
		}
		ulen := int(binary.BigEndian.Uint16(l4[4:]))
		if ulen != len(l4) {
			return fmt.Errorf("%s: udp length %d but %d bytes: %w", info.family, ulen, len(l4), ErrMalformed)
		}
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			if info.family == "ipv4" {
				return nil // RFC 768: the sender computed no checksum
			}
			return fmt.Errorf("ipv6: udp checksum is zero: %w", ErrChecksum)
		}
		pseudo = pseudoHeader(info, len(l4))
	case ProtoICMP:
		name, off = "icmp", 2
		if info.family != "ipv4" {
			return fmt.Errorf("%s: icmp (protocol 1) over IPv6: %w", info.family, ErrMalformed)
		}
		if len(l4) < 8 {
			return fmt.Errorf("%s: icmp header of %d bytes: %w", info.family, len(l4), ErrTruncated)
		}
	case ProtoICMPv6:
		name, off = "icmpv6", 2
		if info.family != "ipv6" {
			return fmt.Errorf("%s: icmpv6 over IPv4: %w", info.family, ErrMalformed)
		}
		if len(l4) < 8 {
			return fmt.Errorf("%s: icmpv6 header of %d bytes: %w", info.family, len(l4), ErrTruncated)
		}
		pseudo = pseudoHeader(info, len(l4))
	default:
		return fmt.Errorf("%s: protocol %d has no checksum known here: %w", info.family, info.proto, ErrUnsupported)
	}
	if ok, got, want := checkSum(pseudo, l4, off); !ok {
		return fmt.Errorf("%s: %s checksum is 0x%04x, want 0x%04x: %w", info.family, name, got, want, ErrChecksum)
	}
	return nil
}

func pseudoHeader(info ipInfo, length int) []byte {
	if info.family == "ipv4" {
		p := append(info.src.AsSlice(), info.dst.AsSlice()...)
		return append(p, 0, info.proto, byte(length>>8), byte(length))
	}
	p := append(info.src.AsSlice(), info.dst.AsSlice()...)
	return append(p, byte(length>>24), byte(length>>16), byte(length>>8), byte(length), 0, 0, 0, info.proto)
}

// VerifyPacket checks every checksum of the IP packet ipPacket: the IPv4 header
// checksum, and the L4 checksum as [VerifyL4Checksum] does, following IPIP,
// IP6IP6, 4in6 and 6in4 encapsulation into the inner packet.
func VerifyPacket(ipPacket []byte) error {
	return verifyPacket(ipPacket, 0)
}

func verifyPacket(b []byte, depth int) error {
	if depth > maxNesting {
		return fmt.Errorf("more than %d nested IP headers: %w", maxNesting, ErrUnsupported)
	}
	if len(b) > 0 && b[0]>>4 == 4 {
		if err := VerifyIPv4HeaderChecksum(b); err != nil {
			return err
		}
	}
	info, err := parseIP(b)
	if err != nil {
		return err
	}
	switch info.proto {
	case ProtoIPIP, ProtoIPv6:
		if info.fragment {
			return fmt.Errorf("%s: %w", info.family, ErrFragment)
		}
		if len(info.l4) == 0 || (info.proto == ProtoIPIP) != (info.l4[0]>>4 == 4) {
			return fmt.Errorf("%s: protocol %d but inner version %d: %w", info.family, info.proto, firstNibble(info.l4), ErrMalformed)
		}
		if err := verifyPacket(info.l4, depth+1); err != nil {
			return fmt.Errorf("inner %w", err)
		}
		return nil
	}
	return verifyL4(info)
}

func firstNibble(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0] >> 4)
}

// VerifyFrame checks every checksum in the Ethernet frame: after at most two
// VLAN tags, the IPv4 or IPv6 packet as [VerifyPacket] does. Trailing bytes
// after the IP packet (Ethernet padding) are ignored.
func VerifyFrame(frame []byte) error {
	if len(frame) < 14 {
		return fmt.Errorf("ethernet: %d bytes: %w", len(frame), ErrTruncated)
	}
	off := 12
	et := binary.BigEndian.Uint16(frame[off:])
	for tags := 0; et == EtherTypeVLAN || et == EtherTypeQinQ; tags++ {
		if tags == 2 {
			return fmt.Errorf("ethernet: more than two VLAN tags: %w", ErrUnsupported)
		}
		off += 4
		if len(frame) < off+2 {
			return fmt.Errorf("ethernet: VLAN tag: %w", ErrTruncated)
		}
		et = binary.BigEndian.Uint16(frame[off:])
	}
	ip := frame[off+2:]
	var want int
	switch et {
	case EtherTypeIPv4:
		want = 4
	case EtherTypeIPv6:
		want = 6
	default:
		return fmt.Errorf("ethernet: EtherType 0x%04x: %w", et, ErrUnsupported)
	}
	if v := firstNibble(ip); v != want {
		return fmt.Errorf("ethernet: EtherType 0x%04x but IP version %d: %w", et, v, ErrMalformed)
	}
	return VerifyPacket(ip)
}
