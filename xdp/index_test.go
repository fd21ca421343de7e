package xdp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestVIPIndex checks the direct-mapped index in front of the vips hash: a
// VIP with a table is served by it; a second key on the same entry is served
// by the hash; a change of a VIP's meta reaches the packets through the
// index; deleting the entry's owner lets the other key take it; and the
// index survives a reopen.
func TestVIPIndex(t *testing.T) {
	testnet.RequirePrivileged(t)
	d, err := Open(Options{PinPath: NoPin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetEncapSource(netip.MustParsePrefix("198.18.0.2/32"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.18.100.7")
	a := VIPKey{Addr: vip, Port: 80, Proto: TCP}
	// Another address whose key falls on a's entry (the ports of one
	// address never collide: the port moves the hash's top bits).
	b := VIPKey{Port: 80, Proto: TCP}
	for i := 0; i < 1<<17 && !b.Addr.IsValid(); i++ {
		k := VIPKey{Addr: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), Port: 80, Proto: TCP}
		if vipIndexOf(k) == vipIndexOf(a) {
			b = k
		}
	}
	if !b.Addr.IsValid() {
		t.Fatal("no colliding address in 198.19.0.0/16")
	}
	mac := func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, i} }
	for id := uint32(1); id <= 2; id++ {
		if err := d.UpsertBackend(id, Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + id)}), IfIndex: 1, NextHopMAC: mac(byte(id)), SrcMAC: mac(0xee), Up: true}); err != nil {
			t.Fatal(err)
		}
	}
	table := func(id uint32) []uint32 {
		t := make([]uint32, 251)
		for i := range t {
			t[i] = id
		}
		return t
	}
	for k, id := range map[VIPKey]uint32{a: 1, b: 2} {
		if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2}); err != nil {
			t.Fatal(err)
		}
		if d.indexed(k) {
			t.Errorf("%s indexed before it has a table", k)
		}
		if err := d.SetTable(k, table(id)); err != nil {
			t.Fatal(err)
		}
	}
	if d.indexed(a) == d.indexed(b) {
		t.Fatalf("indexed: %s %v, %s %v; want exactly one of two keys on one entry", a, d.indexed(a), b, d.indexed(b))
	}
	owner, other := a, b
	if d.indexed(b) {
		owner, other = b, a
	}
	send := func(k VIPKey) (uint32, []byte) {
		t.Helper()
		frame := packet.MustBuild(packet.Ethernet{Src: mac(0xa), Dst: mac(0xee), Payload: packet.IPv4{
			Src: netip.MustParseAddr("198.18.0.10"), Dst: k.Addr, TTL: 64,
			Payload: packet.TCP{SrcPort: 40000, DstPort: k.Port, Flags: packet.TCPAck}}})
		ret, out, err := d.Program().Test(frame)
		if err != nil {
			t.Fatal(err)
		}
		return ret, out
	}
	want := map[VIPKey]byte{a: 1, b: 2}
	for _, k := range []VIPKey{a, b} {
		if ret, out := send(k); ret != 3 || out[5] != want[k] {
			t.Errorf("%s: verdict %d to %x, want XDP_TX to backend %d", k, ret, out[:6], want[k])
		}
	}

	// A meta change reaches packets of the indexed VIP: IPIP now.
	if err := d.UpsertVIP(owner, VIP{Mode: ModeDSRIPIP}); err != nil {
		t.Fatal(err)
	}
	ret, out := send(owner)
	if ret != 3 || len(out) < 34 || out[23] != 4 {
		t.Errorf("%s after the change to IPIP: verdict %d, IP protocol %d; want an IPIP packet", owner, ret, out[23])
	}
	// Twice in a row (the second write waits for running packets).
	if err := d.UpsertVIP(owner, VIP{Mode: ModeDSRL2}); err != nil {
		t.Fatal(err)
	}
	if ret, out := send(owner); ret != 3 || out[5] != want[owner] || out[12] != 0x08 || out[23] != 6 {
		t.Errorf("%s back to L2: verdict %d, frame %x", owner, ret, out[:24])
	}

	// Deleting the owner frees the entry for the other key.
	if err := d.DeleteVIP(owner); err != nil {
		t.Fatal(err)
	}
	if err := d.SetTable(other, table(uint32(want[other]))); err != nil {
		t.Fatal(err)
	}
	if !d.indexed(other) {
		t.Errorf("%s not indexed after %s left its entry", other, owner)
	}
	if ret, out := send(other); ret != 3 || out[5] != want[other] {
		t.Errorf("%s: verdict %d to %x", other, ret, out[:6])
	}
	// Its address has no other service: not a VIP any more.
	if ret, _ := send(owner); ret != 2 {
		t.Errorf("deleted %s: verdict %d, want XDP_PASS", owner, ret)
	}
}

// Indexed reports whether a VIP is served by the index .
func (d *Datapath) indexed(k VIPKey) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vips[k]
	return ok && st.indexed
}
