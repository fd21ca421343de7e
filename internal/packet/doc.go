// Package packet builds and checks the exact bytes of packets for datapath test
// fixtures.
//
// A packet is described as nested layers, outermost first, and [Build] turns the
// description into bytes:
//
//	frame := packet.MustBuild(packet.Ethernet{
//		Dst: backendMAC, Src: lbMAC,
//		Payload: packet.IPv4{
//			Src: client, Dst: vip, TTL: 64, Flags: packet.IPv4DontFragment,
//			Payload: packet.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: packet.TCPSyn, Window: 65535},
//		},
//	})
//
// Every field is written as given; a zero value means zero, except for the
// fields documented as derived (lengths, protocol numbers, EtherTypes, checksums),
// which are computed when left zero so that a fixture only spells out what it
// cares about. Setting a derived field, or BadChecksum, builds a malformed packet
// on purpose. Tunnels are nested layers too: an IPv4 layer whose payload is an
// IPv6 layer is a 6in4 packet with protocol 41.
//
// The checkers ([VerifyIPv4HeaderChecksum], [VerifyL4Checksum], [VerifyPacket],
// [VerifyFrame]) parse bytes on their own and share no code with the builders, so
// a test that builds with one and checks with the other tests both. [Diff] explains
// how two frames differ, byte by byte, naming the header field of each difference.
package packet
