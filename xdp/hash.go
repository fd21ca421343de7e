package xdp

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// vipFilterWords mirrors VIP_FILTER_WORDS in bpf/consts.h.
const (
	vipFilterShift = 16
	vipFilterWords = (1 << vipFilterShift) / 64
)

// The functions below mirror bpf/hash.h. The program builds for little-endian
// targets only, so a word is the packet's network-order bytes read
// little-endian.

func jhash3(a, b, c, initval uint32) uint32 {
	initval += 0xdeadbeef + (3 << 2)
	a += initval
	b += initval
	c += initval
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// foldAddr is an address as the program sees it: an IPv4 address as one
// word, an IPv6 address as the XOR of its four.
func foldAddr(a netip.Addr) uint32 {
	if a.Is4() {
		b := a.As4()
		return binary.LittleEndian.Uint32(b[:])
	}
	b := a.As16()
	return binary.LittleEndian.Uint32(b[0:]) ^ binary.LittleEndian.Uint32(b[4:]) ^
		binary.LittleEndian.Uint32(b[8:]) ^ binary.LittleEndian.Uint32(b[12:])
}

// FlowHash is the hash the program computes for a packet from src to dst
// (ports in host order): its Maglev slot is Slot(FlowHash(...), M).
func FlowHash(src, dst netip.AddrPort, proto Proto, seed uint32) uint32 {
	sport := uint32(bits.ReverseBytes16(src.Port()))
	dport := uint32(bits.ReverseBytes16(dst.Port()))
	return jhash3(foldAddr(src.Addr()), foldAddr(dst.Addr())^uint32(proto), sport<<16|dport, seed)
}

// Slot is the table slot of a flow hash in a table of m slots: the hash
// scaled to [0, m) by a multiplication (the program has no division on its
// fast path). Like FlowHash, it is part of what a fleet must agree on.
func Slot(hash uint32, m int) uint32 {
	return uint32(uint64(hash) * uint64(m) >> 32)
}

// FilterBit is the bit of the VIP prefilter bitmap an address sets.
func FilterBit(a netip.Addr) uint32 {
	return (foldAddr(a) * 0x9E3779B1) >> (32 - vipFilterShift)
}
