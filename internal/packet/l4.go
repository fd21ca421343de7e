package packet

import (
	"encoding/binary"
	"fmt"
)

// TCPFlags are the TCP control bits.
type TCPFlags uint16

// TCP control bits.
const (
	TCPFin TCPFlags = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
	TCPAE // bit 8, formerly NS (RFC 3540), now AE (accurate ECN)
)

// TCP is a TCP header (RFC 9293) and its payload.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            TCPFlags
	Window           uint16
	Urgent           uint16
	// Options are padded with zeros (End of Option List) to a multiple of 4
	// bytes.
	Options []byte
	// DataOffset is the header length in 32-bit words, derived when zero.
	DataOffset  uint8
	BadChecksum bool
	Payload     []byte
}

func (TCP) proto() (uint8, uint16, bool) { return ProtoTCP, 0, true }

func (t TCP) encode(ctx encodeCtx) ([]byte, error) {
	if t.Flags > 0x1ff {
		return nil, fmt.Errorf("tcp: flags %#x do not fit 9 bits", t.Flags)
	}
	opts := padTo(t.Options, 4, 0)
	hlen := 20 + len(opts)
	if hlen > 60 {
		return nil, fmt.Errorf("tcp: %d bytes of options, at most 40 fit", len(opts))
	}
	doff := t.DataOffset
	if doff == 0 {
		doff = uint8(hlen / 4)
	}
	if doff > 15 {
		return nil, fmt.Errorf("tcp: data offset %d does not fit 4 bits", doff)
	}
	b := make([]byte, hlen, hlen+len(t.Payload))
	binary.BigEndian.PutUint16(b[0:], t.SrcPort)
	binary.BigEndian.PutUint16(b[2:], t.DstPort)
	binary.BigEndian.PutUint32(b[4:], t.Seq)
	binary.BigEndian.PutUint32(b[8:], t.Ack)
	b[12] = doff<<4 | byte(t.Flags>>8)
	b[13] = byte(t.Flags)
	binary.BigEndian.PutUint16(b[14:], t.Window)
	binary.BigEndian.PutUint16(b[18:], t.Urgent)
	copy(b[20:], opts)
	b = append(b, t.Payload...)
	c, err := pseudoChecksum(ctx, ProtoTCP, b)
	if err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	if t.BadChecksum {
		c = corrupt(c)
	}
	binary.BigEndian.PutUint16(b[16:], c)
	return b, nil
}

// UDP is a UDP header (RFC 768) and its payload.
type UDP struct {
	SrcPort, DstPort uint16
	// Length is derived when zero.
	Length uint16
	// NoChecksum writes a zero checksum, which means "none" over IPv4 and is
	// invalid over IPv6.
	NoChecksum  bool
	BadChecksum bool
	Payload     []byte
}

func (UDP) proto() (uint8, uint16, bool) { return ProtoUDP, 0, true }

func (u UDP) encode(ctx encodeCtx) ([]byte, error) {
	if 8+len(u.Payload) > 0xffff {
		return nil, fmt.Errorf("udp: datagram of %d bytes is too long", 8+len(u.Payload))
	}
	length := u.Length
	if length == 0 {
		length = uint16(8 + len(u.Payload))
	}
	b := make([]byte, 8, 8+len(u.Payload))
	binary.BigEndian.PutUint16(b[0:], u.SrcPort)
	binary.BigEndian.PutUint16(b[2:], u.DstPort)
	binary.BigEndian.PutUint16(b[4:], length)
	b = append(b, u.Payload...)
	if u.NoChecksum {
		return b, nil
	}
	c, err := pseudoChecksum(ctx, ProtoUDP, b)
	if err != nil {
		return nil, fmt.Errorf("udp: %w", err)
	}
	if c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	if u.BadChecksum {
		if c = corrupt(c); c == 0 {
			c = 2 // not "no checksum", and still wrong
		}
	}
	binary.BigEndian.PutUint16(b[6:], c)
	return b, nil
}

// ICMP message types and codes used by the datapath tests.
const (
	ICMPv4EchoReply       uint8 = 0
	ICMPv4DestUnreachable uint8 = 3
	ICMPv4EchoRequest     uint8 = 8
	ICMPv4TimeExceeded    uint8 = 11
	ICMPv4CodeFragNeeded  uint8 = 4 // with ICMPv4DestUnreachable

	ICMPv6DestUnreachable uint8 = 1
	ICMPv6PacketTooBig    uint8 = 2
	ICMPv6TimeExceeded    uint8 = 3
	ICMPv6EchoRequest     uint8 = 128
	ICMPv6EchoReply       uint8 = 129
	ICMPv6NeighborSolicit uint8 = 135
	ICMPv6NeighborAdvert  uint8 = 136
)

// EchoRest returns the rest-of-header of an echo request or reply.
func EchoRest(id, seq uint16) [4]byte {
	var r [4]byte
	binary.BigEndian.PutUint16(r[0:], id)
	binary.BigEndian.PutUint16(r[2:], seq)
	return r
}

// FragNeededRest returns the rest-of-header of an ICMPv4 "fragmentation needed"
// message (RFC 1191) announcing the next-hop MTU.
func FragNeededRest(mtu uint16) [4]byte {
	var r [4]byte
	binary.BigEndian.PutUint16(r[2:], mtu)
	return r
}

// PacketTooBigRest returns the rest-of-header of an ICMPv6 Packet Too Big
// message announcing the MTU.
func PacketTooBigRest(mtu uint32) [4]byte {
	var r [4]byte
	binary.BigEndian.PutUint32(r[:], mtu)
	return r
}

// ICMPv4 is an ICMP message (RFC 792). Its checksum covers the message only.
type ICMPv4 struct {
	Type, Code uint8
	Rest       [4]byte // rest of the header: identifier and sequence, MTU, …
	// Body follows the header, e.g. the quoted packet of an error message.
	Body        []byte
	BadChecksum bool
}

func (ICMPv4) proto() (uint8, uint16, bool) { return ProtoICMP, 0, true }

func (m ICMPv4) encode(encodeCtx) ([]byte, error) {
	b := icmpHeader(m.Type, m.Code, m.Rest, m.Body)
	c := checksum(b)
	if m.BadChecksum {
		c = corrupt(c)
	}
	binary.BigEndian.PutUint16(b[2:], c)
	return b, nil
}

// ICMPv6 is an ICMPv6 message (RFC 4443). Its checksum includes the IPv6
// pseudo-header.
type ICMPv6 struct {
	Type, Code  uint8
	Rest        [4]byte
	Body        []byte
	BadChecksum bool
}

func (ICMPv6) proto() (uint8, uint16, bool) { return ProtoICMPv6, 0, true }

func (m ICMPv6) encode(ctx encodeCtx) ([]byte, error) {
	if ctx.src.IsValid() && !ctx.src.Is6() {
		return nil, fmt.Errorf("icmpv6: enclosing layer is IPv4; its checksum needs an IPv6 pseudo-header")
	}
	b := icmpHeader(m.Type, m.Code, m.Rest, m.Body)
	c, err := pseudoChecksum(ctx, ProtoICMPv6, b)
	if err != nil {
		return nil, fmt.Errorf("icmpv6: %w", err)
	}
	if m.BadChecksum {
		c = corrupt(c)
	}
	binary.BigEndian.PutUint16(b[2:], c)
	return b, nil
}

func icmpHeader(typ, code uint8, rest [4]byte, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	copy(b[4:], rest[:])
	return append(b, body...)
}

// pseudoChecksum returns the checksum of segment (whose checksum field is
// zero) with the pseudo-header of the enclosing IP layer.
func pseudoChecksum(ctx encodeCtx, proto uint8, segment []byte) (uint16, error) {
	switch {
	case ctx.src.Is4():
		ph := make([]byte, 12)
		copy(ph[0:], ctx.src.AsSlice())
		copy(ph[4:], ctx.dst.AsSlice())
		ph[9] = proto
		binary.BigEndian.PutUint16(ph[10:], uint16(len(segment)))
		return checksum(ph, segment), nil
	case ctx.src.Is6():
		ph := make([]byte, 40)
		copy(ph[0:], ctx.src.AsSlice())
		copy(ph[16:], ctx.dst.AsSlice())
		binary.BigEndian.PutUint32(ph[32:], uint32(len(segment)))
		ph[39] = proto
		return checksum(ph, segment), nil
	}
	return 0, fmt.Errorf("checksum needs an enclosing IPv4 or IPv6 layer for the pseudo-header")
}
