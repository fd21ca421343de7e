package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// TestGeneratorFeeder sends frames the way a kernel without live frames
// gets them (the packet-socket feeder, forced): every frame arrives at the
// peer, as the template but for a source port among the flows, and the
// feeder's veth is gone after Close.
func TestGeneratorFeeder(t *testing.T) {
	testnet.RequirePrivileged(t)
	ns, err := newBenchNS("xgen")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	id := shortID()
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0x78, 0x6c, 0x03, 0x00, b} }
	out := &iface{NS: ns, Name: "g" + id + "o", MAC: mac(1)}
	peer := &iface{NS: ns, Name: "g" + id + "p", MAC: mac(2)}
	if err := addVeth(out, peer); err != nil {
		t.Fatal(err)
	}
	counts, err := newCounter()
	if err != nil {
		t.Fatal(err)
	}
	defer counts.Close()
	pass, err := sinkProgram(counts, 0, xdpPass) // the peer needs a program to take XDP frames
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	l, err := attachXDP(peer, pass)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := waitUp(t.Context(), out, peer); err != nil {
		t.Fatal(err)
	}
	capt, err := openCapture(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()

	const flows, base, frames = 64, 40000, 48
	tmpl := udpFrame(out.MAC, peer.MAC, netip.MustParseAddr("198.18.3.1"), netip.MustParseAddr("198.18.3.2"), base, 53)
	g, err := newGenerator(tmpl, flows, base)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.socket = true
	if err := g.send(out, frames, otherCPU); err != nil {
		t.Fatal(err)
	}
	if g.Kind() != genPacketSocket {
		t.Errorf("Kind %q after a feeder sent, want %q", g.Kind(), genPacketSocket)
	}
	got, err := capt.read(frames, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n, err := readCounter(counts)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != frames || n != frames {
		t.Fatalf("sent %d frames: captured %d, the peer's program counted %d", frames, len(got), n)
	}
	ports := map[uint16]bool{}
	for _, f := range got {
		if len(f) != len(tmpl) {
			t.Fatalf("frame of %d bytes, want %d: %x", len(f), len(tmpl), f)
		}
		port := binary.BigEndian.Uint16(f[frameSportOffset:])
		if port < base || port >= base+flows {
			t.Errorf("source port %d, want one of %d-%d", port, base, base+flows-1)
		}
		ports[port] = true
		want := bytes.Clone(tmpl)
		copy(want[frameSportOffset:], f[frameSportOffset:frameSportOffset+2])
		if !bytes.Equal(f, want) {
			t.Errorf("frame\n%x\nwant the template but for the source port\n%x", f, want)
		}
	}
	if len(ports) < 8 {
		t.Errorf("%d frames came from %d source ports: want them spread over the %d flows", frames, len(ports), flows)
	}

	feederName := out.Name + "x"
	if _, err := ns.Netlink().LinkByName(feederName); err != nil {
		t.Errorf("feeder %s not found while in use: %v", feederName, err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Netlink().LinkByName(feederName); err == nil {
		t.Errorf("feeder %s is still there after Close", feederName)
	}
}
