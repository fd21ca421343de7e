package testnet

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/packet"
)

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket opens an AF_PACKET socket bound to interface ifindex of ns,
// closed in t.Cleanup.
func packetSocket(t *testing.T, ns *NS, ifindex int) int {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("opening packet socket in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestKernelAcceptsBuiltPackets sends frames made by package packet from the
// client's eth0 to a UDP socket on backend 1: the backend's kernel checks the
// checksums, so a good datagram arrives and one with BadChecksum is counted
// as a checksum error and dropped.
func TestKernelAcceptsBuiltPackets(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 1})
	b1, client := topo.Backends[0], topo.Client
	fd := packetSocket(t, client.NS, client.IfIndex)
	for _, tt := range []struct {
		name           string
		src, dst       netip.Addr
		group, counter string
		ip             func(payload packet.Layer) packet.Layer
	}{
		{"ipv4", client.IPv4, b1.IPv4, "Udp", "InCsumErrors", func(p packet.Layer) packet.Layer {
			return packet.IPv4{Src: client.IPv4, Dst: b1.IPv4, TTL: 64, Payload: p}
		}},
		{"ipv6", client.IPv6, b1.IPv6, "", "Udp6InCsumErrors", func(p packet.Layer) packet.Layer {
			return packet.IPv6{Src: client.IPv6, Dst: b1.IPv6, HopLimit: 64, Payload: p}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pc, err := b1.ListenPacket("udp", netip.AddrPortFrom(tt.dst, 5353).String())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			// The backend must know the client's MAC to answer, not to
			// receive; nothing else is needed.
			frame := func(payload string, bad bool) []byte {
				return packet.MustBuild(packet.Ethernet{Dst: b1.MAC, Src: client.MAC,
					Payload: tt.ip(packet.UDP{SrcPort: 40000, DstPort: 5353, Payload: []byte(payload), BadChecksum: bad})})
			}
			before := readSNMP(t, b1.NS, tt.group, tt.counter)
			to := &unix.SockaddrLinklayer{Ifindex: client.IfIndex, Halen: 6}
			copy(to.Addr[:], b1.MAC)
			for _, f := range [][]byte{frame("bad", true), frame("good", false)} {
				if err := packet.VerifyFrame(f); err != nil && !errors.Is(err, packet.ErrChecksum) {
					t.Fatal(err)
				}
				if err := unix.Sendto(fd, f, 0, to); err != nil {
					t.Fatalf("sending: %v", err)
				}
			}
			// The frames travel in order: had the bad one been accepted,
			// it would be read first.
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("backend received nothing: %v", err)
			}
			if string(buf[:n]) != "good" {
				t.Errorf("backend received %q from %v, want \"good\"", buf[:n], from)
			}
			if got := readSNMP(t, b1.NS, tt.group, tt.counter) - before; got != 1 {
				t.Errorf("%s %s went up by %d, want 1", tt.group, tt.counter, got)
			}
		})
	}
}

// TestKernelFramesVerify captures on backend 1 what the client's kernel sends
// over TCP and checks every frame with packet.VerifyFrame. With transmit
// checksum offload on, the frames would carry partial checksums.
func TestKernelFramesVerify(t *testing.T) {
	topo := NewTestTopology(t, TopologyConfig{Backends: 1})
	b1 := topo.Backends[0]
	fd := packetSocket(t, b1.NS, b1.IfIndex)
	for _, addr := range []netip.Addr{b1.IPv4, b1.IPv6} {
		l, err := b1.Listen("tcp", netip.AddrPortFrom(addr, 8080).String())
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, l)
		if _, err := pingPong(t, topo.Client, l.Addr().String()); err != nil {
			t.Fatal(err)
		}
	}
	counts := map[string]int{}
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			break // drained: everything was sent before the last read
		}
		if err != nil {
			t.Fatal(err)
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue // only what the client sent
		}
		f := buf[:n]
		if len(f) < 14 || net.HardwareAddr(f[6:12]).String() != topo.Client.MAC.String() {
			continue
		}
		err = packet.VerifyFrame(f)
		switch {
		case errors.Is(err, packet.ErrUnsupported): // ARP
			counts["other"]++
		case err != nil:
			t.Errorf("frame from the client: %v\n%x", err, f)
		default:
			counts["verified"]++
		}
	}
	// Two connections: at least SYN, ACK, data, FIN each.
	if counts["verified"] < 8 {
		t.Errorf("verified %d frames from the client (%v), want at least 8", counts["verified"], counts)
	}
}
