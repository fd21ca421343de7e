package xdp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

// fragmentIP splits the IP packet ip (no options, no extension headers) into
// fragments of at most chunk payload bytes (a multiple of 8), as a sender's
// stack does: IPv4 with MF and offsets, IPv6 with a fragment header of
// identification id.
func fragmentIP(tb testing.TB, ip []byte, chunk int, id uint32) [][]byte {
	tb.Helper()
	var out [][]byte
	if ip[0]>>4 == 4 {
		hdr, payload := ip[:20], ip[20:]
		for off := 0; off < len(payload); off += chunk {
			end := min(off+chunk, len(payload))
			f := append(append([]byte{}, hdr...), payload[off:end]...)
			binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
			binary.BigEndian.PutUint16(f[4:], uint16(id))
			fo := uint16(off / 8)
			if end < len(payload) {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(f[6:], fo)
			binary.BigEndian.PutUint16(f[10:], 0)
			binary.BigEndian.PutUint16(f[10:], ^fxOnesSum(f[:20]))
			out = append(out, f)
		}
		return out
	}
	hdr, payload := ip[:40], ip[40:]
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		f := append(append([]byte{}, hdr...), make([]byte, 8)...)
		f[6] = 44
		f[40] = hdr[6]
		fo := uint16(off/8) << 3
		if end < len(payload) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[42:], fo)
		binary.BigEndian.PutUint32(f[44:], id)
		f = append(f, payload[off:end]...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		out = append(out, f)
	}
	return out
}

// TestFragments sends fragmented datagrams to VIPs of both families, L2 and
// IPIP: the first fragment is balanced by its ports, every later one goes to
// the same backend; a later fragment whose first was not seen (or was seen
// too long ago) is dropped when it is for a VIP, passed otherwise.
func TestFragments(t *testing.T) {
	testnet.RequirePrivileged(t)
	w := fixtureWorld
	d := fxOpen(t, Options{})
	w.applyVIPs(t, d, fxNoEnv, fxVIP4L2, fxVIP6L2, fxVIP4Three, fxVIP6Three, fxVIP4ThreeT, fxVIP6ThreeT, fxVIP6in4)
	if err := d.SetEncapSource(fxEncap4, fxEncap6); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 3000)
	for i := range body {
		body[i] = byte(i * 7)
	}
	type target struct {
		vip   netip.Addr
		port  uint16
		proto Proto
	}
	// UDP to single-backend VIPs; TCP to VIPs of three backends, L2 and
	// IPIP (their tables spread flows), and IPv6 in IPv4.
	targets := []target{{fxVIP4L2, 53, UDP}, {fxVIP6L2, 53, UDP}, {fxVIP4Three, 80, TCP}, {fxVIP6Three, 80, TCP},
		{fxVIP4ThreeT, 80, TCP}, {fxVIP6ThreeT, 80, TCP}, {fxVIP6in4, 80, TCP}}
	spread := map[netip.Addr]bool{fxVIP4Three: true, fxVIP6Three: true, fxVIP4ThreeT: true, fxVIP6ThreeT: true}
	datagrams, fragments := 0, 0
	before, _ := fxCounters(t, d)
	backendsSeen := map[netip.Addr]map[uint32]bool{}
	for _, tg := range targets {
		for port := uint16(41000); port < 41016; port++ {
			client := fxClient4
			if tg.vip.Is6() {
				client = fxClient6
			}
			src, dst := fxAP(client, port), fxAP(tg.vip, tg.port)
			var l packet.Layer
			if tg.proto == UDP {
				l = fxUDP(src, dst, body)
			} else {
				l = fxIP(src, dst, packet.TCPAck|packet.TCPPsh, body)
				if ip4, ok := l.(packet.IPv4); ok {
					ip4.Flags = 0 // may be fragmented
					l = ip4
				}
			}
			v := w.vip(tg.vip, tg.port, tg.proto)
			id, b, h := w.pick(v, src, dst)
			if backendsSeen[tg.vip] == nil {
				backendsSeen[tg.vip] = map[uint32]bool{}
			}
			backendsSeen[tg.vip][id] = true
			frags := fragmentIP(t, packet.MustBuild(l), 1232, uint32(port)<<8|uint32(tg.port))
			datagrams++
			for i, f := range frags {
				ret, out := fxRun(t, d.Program(), fxIn(packet.RawIP(f), nil))
				if ret != fxTX {
					t.Fatalf("%s -> %s fragment %d of %d: verdict %s", src, dst, i+1, len(frags), fxVerdict(ret))
				}
				var want []byte
				if v.vip.Mode == ModeDSRL2 {
					want = fxL2Out(b, packet.RawIP(f), nil)
				} else {
					want = fxIPIPOut(b, f, h, fxEncap4, fxEncap6, nil)
				}
				if diff := packet.Diff(want, out); diff != "" {
					t.Errorf("%s -> %s fragment %d of %d, to backend %d (-want +got):\n%s", src, dst, i+1, len(frags), id, diff)
				}
				fragments++
			}
		}
	}
	after, _ := fxCounters(t, d)
	moved := func(name string) uint64 { return after[name] - before[name] }
	if got := moved("event/fragment_first"); got != uint64(datagrams) {
		t.Errorf("event/fragment_first moved by %d, want %d (the datagrams)", got, datagrams)
	}
	if got := moved("event/fragment_followed"); got != uint64(fragments-datagrams) {
		t.Errorf("event/fragment_followed moved by %d, want %d (the later fragments)", got, fragments-datagrams)
	}
	// The flows of each VIP spread: fragments do not all go to one backend.
	for vip, ids := range backendsSeen {
		if spread[vip] && len(ids) < 2 {
			t.Errorf("all 16 datagrams to %s went to backends %v: the first fragments were not balanced by their ports", vip, ids)
		}
	}

	// Later fragments whose first fragment was never seen.
	later := func(dst netip.Addr, id uint32) []byte {
		client := fxClient4
		if dst.Is6() {
			client = fxClient6
		}
		frags := fragmentIP(t, packet.MustBuild(fxUDP(fxAP(client, 42000), fxAP(dst, 53), body)), 1232, id)
		return fxIn(packet.RawIP(frags[1]), nil)
	}
	for _, tt := range []struct {
		name    string
		in      []byte
		verdict uint32
		counter string
	}{
		{"IPv4 later fragment, first never seen, to a VIP", later(fxVIP4L2, 0x7777), fxDrop, "drop/fragment_unknown"},
		{"IPv6 later fragment, first never seen, to a VIP", later(fxVIP6L2, 0x7777), fxDrop, "drop/fragment_unknown"},
		{"IPv4 later fragment to an address that is no VIP", later(fxOther4, 0x7777), fxPass, "pass/not_vip"},
	} {
		checkFixture(t, d, fixture{name: tt.name, in: tt.in, wantVerdict: tt.verdict, wantCounter: tt.counter})
	}

	// A first fragment seen longer ago than reassembly waits is forgotten.
	src, dst := fxAP(fxClient4, 42001), fxAP(fxVIP4L2, 53)
	frags := fragmentIP(t, packet.MustBuild(fxUDP(src, dst, body)), 1232, 0x4242)
	if ret, _ := fxRun(t, d.Program(), fxIn(packet.RawIP(frags[0]), nil)); ret != fxTX {
		t.Fatalf("first fragment: verdict %s", fxVerdict(ret))
	}
	var k lbFragKey
	var v lbFragValue
	found := false
	it := d.objs.Frags.Iterate()
	for it.Next(&k, &v) {
		if k.Id == 0x4242 && k.Family == 4 {
			found = true
			break
		}
	}
	if !found {
		t.Fatalf("no frags entry for IPv4 ID 0x4242: %v", it.Err())
	}
	v.Seen -= uint64(31 * time.Second)
	if err := d.objs.Frags.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
	checkFixture(t, d, fixture{name: "IPv4 later fragment 31 s after its first", in: fxIn(packet.RawIP(frags[1]), nil),
		wantVerdict: fxDrop, wantCounter: "drop/fragment_unknown"})
}

// TestTTL checks that IPIP forwarding routes: the inner TTL or hop limit goes
// down by one, and a packet that arrives with 1 is answered with ICMP time
// exceeded instead of being sent on; L2 DSR bridges and leaves it alone.
func TestTTL(t *testing.T) {
	testnet.RequirePrivileged(t)
	w := fixtureWorld
	d := fxOpen(t, Options{})
	w.applyVIPs(t, d, fxNoEnv, fxVIP4L2, fxVIP6L2, fxVIP4in4, fxVIP6in6)
	if err := d.SetEncapSource(fxEncap4, fxEncap6); err != nil {
		t.Fatal(err)
	}
	withTTL := func(l packet.Layer, ttl uint8) packet.Layer {
		switch ip := l.(type) {
		case packet.IPv4:
			ip.TTL = ttl
			return ip
		case packet.IPv6:
			ip.HopLimit = ttl
			return ip
		}
		panic(fmt.Sprintf("%T", l))
	}
	timeExceeded := func(ip []byte, client, vip netip.Addr) []byte {
		var l packet.Layer
		if vip.Is4() {
			l = packet.IPv4{Src: vip, Dst: client, TOS: 0xc0, TTL: 64, Payload: packet.ICMPv4{
				Type: packet.ICMPv4TimeExceeded, Body: ip[:28]}}
		} else {
			l = packet.IPv6{Src: vip, Dst: client, HopLimit: 64, Payload: packet.ICMPv6{
				Type: packet.ICMPv6TimeExceeded, Body: ip[:48]}}
		}
		return packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: l})
	}
	for _, vip := range []netip.Addr{fxVIP4in4, fxVIP6in6} {
		client := fxClient4
		if vip.Is6() {
			client = fxClient6
		}
		src, dst := fxAP(client, 43000), fxAP(vip, 80)
		_, b, h := w.pick(w.vip(vip, 80, TCP), src, dst)
		two := withTTL(fxIP(src, dst, packet.TCPAck, []byte("ttl")), 2)
		checkFixture(t, d, fixture{name: fmt.Sprintf("IPIP %s, TTL 2: sent on with 1", vip), in: fxIn(two, nil), wantVerdict: fxTX,
			wantOut: fxIPIPOut(b, packet.MustBuild(two), h, fxEncap4, fxEncap6, nil), wantCounter: "tx/dsr_ipip"})
		one := withTTL(fxIP(src, dst, packet.TCPAck, []byte("ttl")), 1)
		checkFixture(t, d, fixture{name: fmt.Sprintf("IPIP %s, TTL 1: time exceeded", vip), in: fxIn(one, nil), wantVerdict: fxTX,
			wantOut: timeExceeded(packet.MustBuild(one), client, vip), wantCounter: "tx/icmp_time_exceeded"})
	}
	for _, vip := range []netip.Addr{fxVIP4L2, fxVIP6L2} {
		client := fxClient4
		if vip.Is6() {
			client = fxClient6
		}
		src, dst := fxAP(client, 43000), fxAP(vip, 80)
		_, b, _ := w.pick(w.vip(vip, 80, TCP), src, dst)
		one := withTTL(fxIP(src, dst, packet.TCPAck, []byte("ttl")), 1)
		checkFixture(t, d, fixture{name: fmt.Sprintf("L2 DSR %s, TTL 1: bridged unchanged", vip), in: fxIn(one, nil), wantVerdict: fxTX,
			wantOut: fxL2Out(b, one, nil), wantCounter: "tx/dsr_l2"})
	}
}
