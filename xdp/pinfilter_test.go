package xdp

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestPinFilter checks the filter in front of the flow tables: a pin the
// program makes sets its flow's bit in both halves; the flow follows its pin
// through a Maintain that rebuilds the filter; once the pin expires, the
// rebuilt half packets read no longer has the bit.
func TestPinFilter(t *testing.T) {
	testnet.RequirePrivileged(t)
	d, err := Open(Options{PinPath: NoPin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 64, TransitionGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	k := VIPKey{Addr: netip.MustParseAddr("198.18.100.9"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 42}); err != nil {
		t.Fatal(err)
	}
	mac := func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, i} }
	table := func(id uint32) []uint32 {
		t := make([]uint32, 251)
		for i := range t {
			t[i] = id
		}
		return t
	}
	for id := uint32(1); id <= 2; id++ {
		if err := d.UpsertBackend(id, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + id)}), IfIndex: 1, NextHopMAC: mac(byte(id)), SrcMAC: mac(0xee), Up: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetTable(k, table(1)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(k, table(2)); err != nil { // a transition: the ACK below is pinned to 1
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("198.18.0.10:40000")
	frame := packet.MustBuild(packet.Ethernet{Src: mac(0xa), Dst: mac(0xee), Payload: packet.IPv4{
		Src: src.Addr(), Dst: k.Addr, TTL: 64, Payload: packet.TCP{SrcPort: src.Port(), DstPort: 80, Flags: packet.TCPAck}}})
	send := func() byte {
		t.Helper()
		ret, out, err := d.Program().Test(frame)
		if err != nil || ret != 3 {
			t.Fatalf("verdict %d, %v", ret, err)
		}
		return out[5]
	}
	if got := send(); got != 1 {
		t.Fatalf("the established flow went to backend %d, want 1 (its previous table's)", got)
	}
	bit := FlowHash(src, netip.AddrPortFrom(k.Addr, 80), TCP, 42) >> (32 - pinFilterShift)
	isSet := func(half uint32) bool { return atomic.LoadUint64(d.pinWord(half, bit))&(1<<(bit&63)) != 0 }
	if !isSet(0) || !isSet(1) {
		t.Fatalf("the pin's filter bit: half 0 %v, half 1 %v; want both set", isSet(0), isSet(1))
	}

	// Maintain rebuilds the filter: the flow keeps its pin.
	if _, err := d.Maintain(time.Hour); err != nil {
		t.Fatal(err)
	}
	if active := d.settings.PinFilter; !isSet(active) {
		t.Errorf("after Maintain, the half packets read (%d) lost the pin's bit", active)
	}
	if got := send(); got != 1 {
		t.Errorf("after Maintain the pinned flow went to backend %d, want 1", got)
	}
	if v4, v6 := d.FlowCounts(); v4 != 1 || v6 != 0 {
		t.Errorf("FlowCounts after Maintain = %d, %d; want 1 IPv4 pin", v4, v6)
	}

	// The pin expires: the rebuilt half has no bit for it.
	d.nowMono = func() time.Duration { return monotonicNow() + 2*time.Hour }
	res, err := d.Maintain(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 1 {
		t.Fatalf("Maintain expired %d pins, want 1", res.Expired)
	}
	if v4, v6 := d.FlowCounts(); v4 != 0 || v6 != 0 {
		t.Errorf("FlowCounts after the expiry = %d, %d; want none", v4, v6)
	}
	if active := d.settings.PinFilter; isSet(active) {
		t.Errorf("after the pin expired, the half packets read (%d) still has its bit", active)
	}
}
