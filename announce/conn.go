package announce

import (
	"fmt"
	"net"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// packetConn is what an announcer needs of a packet socket. *packet.Conn is
// one; tests use a fake.
type packetConn interface {
	ReadFrom(b []byte) (int, net.Addr, error)
	WriteTo(b []byte, addr net.Addr) (int, error)
	// SetReadDeadline with a time in the past makes a blocked ReadFrom
	// return: it is how Run stops its readers.
	SetReadDeadline(t time.Time) error
	// JoinGroup and LeaveGroup add and drop a link-layer multicast
	// membership (PACKET_MR_MULTICAST), which makes the NIC accept frames
	// sent to that group.
	JoinGroup(mac net.HardwareAddr) error
	LeaveGroup(mac net.HardwareAddr) error
	Close() error
}

var _ packetConn = (*packet.Conn)(nil)

// Offsets in an untagged Ethernet frame holding IPv6.
const (
	offNextHeader = ethHeaderLen + 6
	offICMPType   = ethHeaderLen + ipv6HeaderLen
)

// ndpFilter is the classic BPF program of the IPv6 socket: it keeps ICMPv6
// neighbour solicitations and advertisements without extension headers and
// drops every other IPv6 packet in the kernel, so that the datapath's traffic
// that reaches the kernel is never copied to user space.
var ndpFilter = mustAssemble(ndpFilterProgram)

var ndpFilterProgram = []bpf.Instruction{
	bpf.LoadAbsolute{Off: offNextHeader, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: protoICMPv6, SkipTrue: 4}, // → drop
	bpf.LoadAbsolute{Off: offICMPType, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: icmpTypeNS, SkipTrue: 1},    // → keep
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmpTypeNA, SkipTrue: 1}, // → drop
	bpf.RetConstant{Val: 1 << 16},                                    // keep the whole frame
	bpf.RetConstant{Val: 0},                                          // drop
}

func mustAssemble(prog []bpf.Instruction) []bpf.RawInstruction {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		panic(fmt.Sprintf("assembling socket filter: %v", err))
	}
	return raw
}

// listenARP opens a packet socket on ifi that receives every ARP frame.
func listenARP(ifi *net.Interface) (*packet.Conn, error) {
	c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		return nil, fmt.Errorf("opening ARP socket on %q: %w", ifi.Name, err)
	}
	return c, nil
}

// listenNDP opens a packet socket on ifi that receives neighbour
// solicitations and advertisements (see ndpFilter).
func listenNDP(ifi *net.Interface) (*packet.Conn, error) {
	c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_IPV6, &packet.Config{Filter: ndpFilter})
	if err != nil {
		return nil, fmt.Errorf("opening IPv6 socket on %q: %w", ifi.Name, err)
	}
	return c, nil
}
