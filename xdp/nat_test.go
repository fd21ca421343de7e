package xdp

// SNAT fixtures: sequences of packets through the program (a flow's first
// packet, the backend's reply, the client's next packets, FIN and RST), each
// with the exact output frame and the verdict counter it moves, and the NAT
// flow the program keeps.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
)

var (
	fxSNATSrc4  = netip.MustParseAddr("198.18.7.1")
	fxSNATSrc6  = netip.MustParseAddr("2001:db8:7::1")
	fxSNATVIP4  = netip.MustParseAddr("198.19.1.1")
	fxSNATVIP6  = netip.MustParseAddr("2001:db8:101::1")
	fxSNATBE4   = netip.MustParseAddr("198.18.2.41")
	fxSNATBE6   = netip.MustParseAddr("2001:db8:2::42")
	fxSNATBEMAC = fxMAC("02:00:00:00:01:41")
)

const (
	fxSNATID4    = 41
	fxSNATID6    = 42
	fxSNATPortLo = 20000
	fxSNATPortHi = 20099
)

// natWorld is a datapath with SNAT services: TCP 80 and UDP 53 on an IPv4
// and an IPv6 VIP; the IPv4 backend listens on 8080 (its own port), the
// IPv6 one on the service's.
type natWorld struct {
	d    *Datapath
	vips map[VIPKey]VIP
	be   map[uint32]Backend
}

func newNATWorld(t *testing.T, o Options) *natWorld {
	t.Helper()
	d := fxOpen(t, o)
	w := &natWorld{d: d, vips: map[VIPKey]VIP{}, be: map[uint32]Backend{
		fxSNATID4: {Addr: fxSNATBE4, Port: 8080, IfIndex: 1, NextHopMAC: fxSNATBEMAC, SrcMAC: fxEgressMAC, Up: true},
		fxSNATID6: {Addr: fxSNATBE6, IfIndex: 1, NextHopMAC: fxSNATBEMAC, SrcMAC: fxEgressMAC, Up: true},
	}}
	for id, b := range w.be {
		if err := d.UpsertBackend(id, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, vip := range []netip.Addr{fxSNATVIP4, fxSNATVIP6} {
		id := uint32(fxSNATID4)
		if vip.Is6() {
			id = fxSNATID6
		}
		for i, k := range []VIPKey{{vip, 80, TCP}, {vip, 53, UDP}} {
			v := VIP{Mode: ModeSNAT, HashSeed: 0x7000 + uint32(i)}
			if err := d.UpsertVIP(k, v); err != nil {
				t.Fatal(err)
			}
			if err := d.SetTable(k, fxFill(7, id)); err != nil {
				t.Fatal(err)
			}
			w.vips[k] = v
		}
	}
	if err := d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATSrc4, fxSNATSrc6}, PortLo: fxSNATPortLo, PortHi: fxSNATPortHi}); err != nil {
		t.Fatal(err)
	}
	return w
}

// translation is the source:port and backend:port the program must give
// the flow client -> vip on its first attempt.
func (w *natWorld) translation(client, vip netip.AddrPort, proto Proto) (src, be netip.AddrPort) {
	k := VIPKey{vip.Addr(), vip.Port(), proto}
	h := FlowHash(client, vip, proto, w.vips[k].HashSeed)
	s := fxSNATSrc4
	id := uint32(fxSNATID4)
	if client.Addr().Is6() {
		s, id = fxSNATSrc6, fxSNATID6
	}
	a, p := NATPick(h, 0, []netip.Addr{s}, fxSNATPortLo, fxSNATPortHi)
	b := w.be[id]
	bp := b.Port
	if bp == 0 {
		bp = vip.Port()
	}
	return netip.AddrPortFrom(a, p), netip.AddrPortFrom(b.Addr, bp)
}

// step is one packet of a sequence.
type natStep struct {
	name        string
	in          []byte
	wantVerdict uint32
	wantOut     []byte // nil: the input, unchanged
	wantCounter string
	wantEvents  []string
}

func (w *natWorld) run(t *testing.T, steps []natStep) {
	t.Helper()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			checkFixture(t, w.d, fixture{name: s.name, in: s.in, wantVerdict: s.wantVerdict, wantOut: s.wantOut,
				wantCounter: s.wantCounter, wantEvents: s.wantEvents})
		})
	}
}

func (w *natWorld) flows(t *testing.T) []NATFlow {
	t.Helper()
	var out []NATFlow
	if err := w.d.NATFlows(func(f NATFlow) bool { out = append(out, f); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

// fxFromBackend is a frame from the SNAT backend's side (its next hop's MAC).
func fxFromBackend(l packet.Layer) []byte {
	return packet.MustBuild(packet.Ethernet{Dst: fxLBMAC, Src: fxSNATBEMAC, Payload: l})
}

// fxToClient is l sent back to the client's side: to the MAC the client's
// first frame came from (the router), from the MAC it was sent to.
func fxToClient(l packet.Layer) []byte {
	return packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: l})
}

func natFlowDiff(t *testing.T, got []NATFlow, want []NATFlow) {
	t.Helper()
	for i := range got {
		got[i].Age, got[i].Idle = 0, 0
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.AllowUnexported(NATFlow{}),
		cmp.FilterPath(func(p cmp.Path) bool {
			n := p.Last().String()
			return n == ".fwd" || n == ".rev" || n == ".hasRev"
		}, cmp.Ignore())); d != "" {
		t.Errorf("NAT flows (-want +got):\n%s", d)
	}
}

func TestSNATTCP(t *testing.T) {
	for _, fam := range []struct {
		name        string
		client, vip netip.AddrPort
		id          uint32
	}{
		{"IPv4", fxAP(fxClient4, 40001), fxAP(fxSNATVIP4, 80), fxSNATID4},
		{"IPv6", fxAP(fxClient6, 40001), fxAP(fxSNATVIP6, 80), fxSNATID6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			w := newNATWorld(t, Options{})
			bmac := w.be[fam.id]
			src, be := w.translation(fam.client, fam.vip, TCP)
			payload := []byte("GET / HTTP/1.1\r\n\r\n")
			c, v := fam.client, fam.vip
			w.run(t, []natStep{
				{name: "SYN creates the flow", in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
					wantOut:     fxL2Out(bmac, fxIP(src, be, packet.TCPSyn, nil), nil),
					wantCounter: "tx/snat", wantEvents: []string{"event/snat_flow_created", "event/tcp_syn"}},
			})
			natFlowDiff(t, w.flows(t), []NATFlow{{Client: c, VIP: v, Source: src, Backend: be, Proto: TCP, BackendID: fam.id, State: NATStateSYNSent}})
			w.run(t, []natStep{
				{name: "SYN-ACK from the backend goes to the client", in: fxFromBackend(fxIP(be, src, packet.TCPSyn|packet.TCPAck, nil)),
					wantVerdict: fxTX, wantOut: fxToClient(fxIP(v, c, packet.TCPSyn|packet.TCPAck, nil)), wantCounter: "tx/snat_reply"},
				{name: "client data follows the flow", in: fxIn(fxIP(c, v, packet.TCPAck|packet.TCPPsh, payload), nil),
					wantVerdict: fxTX, wantOut: fxL2Out(bmac, fxIP(src, be, packet.TCPAck|packet.TCPPsh, payload), nil), wantCounter: "tx/snat"},
			})
			if got := w.flows(t); len(got) != 1 || got[0].State != NATStateEstablished {
				t.Fatalf("after the handshake: flows %+v, want one established", got)
			}
			w.run(t, []natStep{
				{name: "client FIN", in: fxIn(fxIP(c, v, packet.TCPAck|packet.TCPFin, nil), nil),
					wantVerdict: fxTX, wantOut: fxL2Out(bmac, fxIP(src, be, packet.TCPAck|packet.TCPFin, nil), nil), wantCounter: "tx/snat"},
			})
			if got := w.flows(t); len(got) != 1 || got[0].State != NATStateClosing {
				t.Fatalf("after a FIN: flows %+v, want one closing", got)
			}
			w.run(t, []natStep{
				{name: "backend RST goes to the client", in: fxFromBackend(fxIP(be, src, packet.TCPRst|packet.TCPAck, nil)),
					wantVerdict: fxTX, wantOut: fxToClient(fxIP(v, c, packet.TCPRst|packet.TCPAck, nil)), wantCounter: "tx/snat_reply"},
			})
			if got := w.flows(t); len(got) != 1 || got[0].State != NATStateReset {
				t.Fatalf("after a RST: flows %+v, want one reset", got)
			}
			// Replies to the SNAT source that are no flow's are the host's.
			other := netip.AddrPortFrom(src.Addr(), src.Port()+1)
			if src.Port() == fxSNATPortHi {
				other = netip.AddrPortFrom(src.Addr(), src.Port()-1)
			}
			w.run(t, []natStep{
				{name: "reply of no flow passes untouched", in: fxFromBackend(fxIP(be, other, packet.TCPAck, nil)),
					wantVerdict: fxPass, wantCounter: "pass/snat_no_flow"},
				{name: "host's own connection to the SNAT source passes", in: fxIn(fxIP(c, netip.AddrPortFrom(src.Addr(), 22), packet.TCPSyn, nil), nil),
					wantVerdict: fxPass, wantCounter: "pass/snat_no_flow"},
				{name: "client ACK of no flow is dropped", in: fxIn(fxIP(netip.AddrPortFrom(c.Addr(), 40999), v, packet.TCPAck, nil), nil),
					wantVerdict: fxDrop, wantCounter: "drop/snat_no_flow"},
			})
		})
	}
}

func TestSNATUDP(t *testing.T) {
	for _, fam := range []struct {
		name        string
		client, vip netip.AddrPort
	}{
		{"IPv4", fxAP(fxClient4, 40002), fxAP(fxSNATVIP4, 53)},
		{"IPv6", fxAP(fxClient6, 40002), fxAP(fxSNATVIP6, 53)},
	} {
		t.Run(fam.name, func(t *testing.T) {
			w := newNATWorld(t, Options{})
			src, be := w.translation(fam.client, fam.vip, UDP)
			id := uint32(fxSNATID4)
			if fam.client.Addr().Is6() {
				id = fxSNATID6
			}
			q, a := []byte("query"), []byte("answer")
			w.run(t, []natStep{
				{name: "first datagram creates the flow", in: fxIn(fxUDP(fam.client, fam.vip, q), nil), wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[id], fxUDP(src, be, q), nil), wantCounter: "tx/snat", wantEvents: []string{"event/snat_flow_created"}},
				{name: "answer goes to the client", in: fxFromBackend(fxUDP(be, src, a)), wantVerdict: fxTX,
					wantOut: fxToClient(fxUDP(fam.vip, fam.client, a)), wantCounter: "tx/snat_reply"},
				{name: "second datagram follows the flow", in: fxIn(fxUDP(fam.client, fam.vip, q), nil), wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[id], fxUDP(src, be, q), nil), wantCounter: "tx/snat"},
			})
			natFlowDiff(t, w.flows(t), []NATFlow{{Client: fam.client, VIP: fam.vip, Source: src, Backend: be, Proto: UDP, BackendID: id, State: NATStateUDP}})
		})
	}
	t.Run("IPv4 datagram without checksum keeps none", func(t *testing.T) {
		w := newNATWorld(t, Options{})
		c, v := fxAP(fxClient4, 40003), fxAP(fxSNATVIP4, 53)
		src, be := w.translation(c, v, UDP)
		in := packet.IPv4{Src: c.Addr(), Dst: v.Addr(), ID: 7, TTL: 61, Payload: packet.UDP{SrcPort: c.Port(), DstPort: v.Port(), NoChecksum: true, Payload: []byte("q")}}
		out := packet.IPv4{Src: src.Addr(), Dst: be.Addr(), ID: 7, TTL: 61, Payload: packet.UDP{SrcPort: src.Port(), DstPort: be.Port(), NoChecksum: true, Payload: []byte("q")}}
		w.run(t, []natStep{{name: "no checksum", in: fxIn(in, nil), wantVerdict: fxTX, wantOut: fxL2Out(w.be[fxSNATID4], out, nil),
			wantCounter: "tx/snat", wantEvents: []string{"event/snat_flow_created"}}})
	})
}

// TestSNATBackendDown: a flow whose backend goes down gets a RST from the
// VIP on its client's next packet, and its state goes.
func TestSNATBackendDown(t *testing.T) {
	for _, fam := range []struct {
		name        string
		client, vip netip.AddrPort
		id          uint32
	}{
		{"IPv4", fxAP(fxClient4, 40004), fxAP(fxSNATVIP4, 80), fxSNATID4},
		{"IPv6", fxAP(fxClient6, 40004), fxAP(fxSNATVIP6, 80), fxSNATID6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			w := newNATWorld(t, Options{})
			c, v := fam.client, fam.vip
			src, be := w.translation(c, v, TCP)
			w.run(t, []natStep{{name: "SYN", in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
				wantOut: fxL2Out(w.be[fam.id], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"}})
			b := w.be[fam.id]
			b.Up = false
			if err := w.d.UpsertBackend(fam.id, b); err != nil {
				t.Fatal(err)
			}
			rst := packet.TCP{SrcPort: v.Port(), DstPort: c.Port(), Seq: 0x0a0b0c0d, Flags: packet.TCPRst}
			var ip packet.Layer = packet.IPv4{Src: v.Addr(), Dst: c.Addr(), Flags: packet.IPv4DontFragment, TTL: 64, Payload: rst}
			if c.Addr().Is6() {
				ip = packet.IPv6{Src: v.Addr(), Dst: c.Addr(), HopLimit: 64, FlowLabel: 0x12345, Payload: rst}
			}
			w.run(t, []natStep{{name: "data after the backend went down gets a RST", in: fxIn(fxIP(c, v, packet.TCPAck|packet.TCPPsh, []byte("data")), nil),
				wantVerdict: fxTX, wantOut: fxToClient(ip), wantCounter: "tx/snat_rst", wantEvents: []string{"event/snat_backend_lost"}}})
			if got := w.flows(t); len(got) != 0 {
				t.Errorf("flows %+v left, want none", got)
			}
			// A new flow finds no backend up in the table.
			w.run(t, []natStep{{name: "SYN to a service without a backend up is dropped", in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil),
				wantVerdict: fxDrop, wantCounter: "drop/no_backend"}})
		})
	}
}

// TestSNATAllocationFailure: with one port, a second client's flow to the
// same backend finds every attempt taken and is dropped, counted against
// the source; the first flow goes on.
func TestSNATAllocationFailure(t *testing.T) {
	w := newNATWorld(t, Options{})
	if err := w.d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATSrc4}, PortLo: 30000, PortHi: 30000}); err != nil {
		t.Fatal(err)
	}
	v := fxAP(fxSNATVIP4, 80)
	c1, c2 := fxAP(fxClient4, 41000), fxAP(fxClient4, 41001)
	be := netip.AddrPortFrom(fxSNATBE4, 8080)
	src := netip.AddrPortFrom(fxSNATSrc4, 30000)
	before, _ := fxCounters(t, w.d)
	w.run(t, []natStep{
		{name: "first flow takes the port", in: fxIn(fxIP(c1, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"},
		{name: "second flow finds no port", in: fxIn(fxIP(c2, v, packet.TCPSyn, nil), nil), wantVerdict: fxDrop,
			wantCounter: "drop/snat_no_port"},
		{name: "first flow goes on", in: fxIn(fxIP(c1, v, packet.TCPAck, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPAck, nil), nil), wantCounter: "tx/snat"},
	})
	after, _ := fxCounters(t, w.d)
	if got := after["event/snat_port_retry"] - before["event/snat_port_retry"]; got != NATPortTries {
		t.Errorf("event/snat_port_retry moved by %d, want %d", got, NATPortTries)
	}
	st, err := w.d.NATStats()
	if err != nil {
		t.Fatal(err)
	}
	want := []NATSourceStats{{Source: fxSNATSrc4, Flows: 1, AllocFailures: 1}}
	if d := cmp.Diff(want, st.Sources, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("source counters (-want +got):\n%s", d)
	}
}

// TestSNATTableFull: a full NAT table refuses new flows (counted) and the
// flows it holds carry on. MaxNATFlows 2 makes tables of 8 entries (room
// for twice the entries of 2 flows), all in every key's window of buckets:
// four flows fill nat4.
func TestSNATTableFull(t *testing.T) {
	w := newNATWorld(t, Options{MaxNATFlows: 2})
	v := fxAP(fxSNATVIP4, 80)
	var steps []natStep
	for i := range 4 {
		c := fxAP(fxClient4, uint16(42000+i))
		src, be := w.translation(c, v, TCP)
		steps = append(steps, natStep{name: "flow " + string(rune('a'+i)), in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"})
	}
	c := fxAP(fxClient4, 42000)
	src, be := w.translation(c, v, TCP)
	steps = append(steps,
		natStep{name: "fifth flow: table full", in: fxIn(fxIP(fxAP(fxClient4, 42004), v, packet.TCPSyn, nil), nil), wantVerdict: fxDrop,
			wantCounter: "drop/snat_table_full"},
		natStep{name: "first flow goes on", in: fxIn(fxIP(c, v, packet.TCPAck, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPAck, nil), nil), wantCounter: "tx/snat"},
		natStep{name: "and its replies", in: fxFromBackend(fxIP(be, src, packet.TCPAck, nil)), wantVerdict: fxTX,
			wantOut: fxToClient(fxIP(v, c, packet.TCPAck, nil)), wantCounter: "tx/snat_reply"},
	)
	w.run(t, steps)
}

// natBackOff makes every CPU back off from the NAT tables as after a run
// of inserts that found them full (until: for an hour; or not at all).
func natBackOff(t *testing.T, d *Datapath, on bool) {
	t.Helper()
	var sc []lbNatScratch
	if err := d.objs.NatScratchMap.Lookup(uint32(0), &sc); err != nil {
		t.Fatal(err)
	}
	for i := range sc {
		sc[i].Full.Until, sc[i].Full.Streak = 0, 0
		if on {
			sc[i].Full.Until = uint64(monotonicNow() + time.Hour)
		}
	}
	if err := d.objs.NatScratchMap.Put(uint32(0), sc); err != nil {
		t.Fatal(err)
	}
}

// TestSNATFilterWhileFull: while a CPU backs off from a full NAT table, a
// packet that would make a flow (a SYN, a datagram) is refused without a
// table read unless the NAT filter has its forward key's bit: a SYN or a
// datagram of a flow that exists (a retransmission, the client's next
// query) follows the flow. MaintainNAT rebuilds the filter from the flows
// that remain.
func TestSNATFilterWhileFull(t *testing.T) {
	for _, fam := range []struct {
		name   string
		client netip.Addr
		vip    netip.Addr
		id     uint32
	}{
		{"IPv4", fxClient4, fxSNATVIP4, fxSNATID4},
		{"IPv6", fxClient6, fxSNATVIP6, fxSNATID6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			w := newNATWorld(t, Options{})
			now := time.Duration(0)
			w.d.nowMono = func() time.Duration { return now }
			tv, uv := netip.AddrPortFrom(fam.vip, 80), netip.AddrPortFrom(fam.vip, 53)
			c, u := netip.AddrPortFrom(fam.client, 44000), netip.AddrPortFrom(fam.client, 44001)
			nc, nu := netip.AddrPortFrom(fam.client, 44002), netip.AddrPortFrom(fam.client, 44003)
			src, be := w.translation(c, tv, TCP)
			usrc, ube := w.translation(u, uv, UDP)
			q := []byte("query")
			syn := fxIn(fxIP(c, tv, packet.TCPSyn, nil), nil)
			query := fxIn(fxUDP(u, uv, q), nil)
			made := []natStep{
				{name: "SYN makes a flow", in: syn, wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[fam.id], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"},
				{name: "datagram makes a flow", in: query, wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[fam.id], fxUDP(usrc, ube, q), nil), wantCounter: "tx/snat"},
			}
			w.run(t, made)
			natBackOff(t, w.d, true)
			made[0].name, made[1].name = "SYN again follows its flow", "next datagram follows its flow"
			w.run(t, append(made,
				natStep{name: "new SYN refused", in: fxIn(fxIP(nc, tv, packet.TCPSyn, nil), nil), wantVerdict: fxDrop,
					wantCounter: "drop/snat_table_full"},
				natStep{name: "new datagram refused", in: fxIn(fxUDP(nu, uv, q), nil), wantVerdict: fxDrop,
					wantCounter: "drop/snat_table_full"},
			))
			bit := func(client, vip netip.AddrPort, proto Proto) bool {
				_, _, hash := natKey(client, vip, proto, false)
				return w.d.natFilter.has(uint32(w.d.natConfig.FilterHalf), hash)
			}
			for _, f := range []struct {
				client, vip netip.AddrPort
				proto       Proto
				want        bool
			}{{c, tv, TCP, true}, {u, uv, UDP, true}, {nc, tv, TCP, false}, {nu, uv, UDP, false}} {
				if got := bit(f.client, f.vip, f.proto); got != f.want {
					t.Errorf("filter bit of %s -> %s: %v, want %v", f.client, f.vip, got, f.want)
				}
			}

			// The UDP flow expires: the half packets read next has the
			// TCP flow's bit only, and its datagram, still backing off,
			// is refused.
			half := w.d.natConfig.FilterHalf
			now = monotonicNow() + 90*time.Second
			res, err := w.d.MaintainNAT(NATTimeouts{TCPEstablished: time.Hour, TCPTransitory: time.Hour, UDP: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if res.Remaining != 1 || res.Expired[NATExpiredUDP] != 1 {
				t.Fatalf("MaintainNAT: %+v, want the UDP flow expired", res)
			}
			if w.d.natConfig.FilterHalf == half {
				t.Errorf("MaintainNAT left packets reading filter half %d", half)
			}
			if !bit(c, tv, TCP) || bit(u, uv, UDP) {
				t.Errorf("after MaintainNAT: filter bits %v (TCP flow) and %v (expired UDP flow), want true and false", bit(c, tv, TCP), bit(u, uv, UDP))
			}
			w.run(t, []natStep{
				{name: "SYN still follows its flow", in: syn, wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[fam.id], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"},
				{name: "datagram of the expired flow refused", in: query, wantVerdict: fxDrop, wantCounter: "drop/snat_table_full"},
			})
			// Writing the SNAT config again (a reload) keeps the half in use.
			half = w.d.natConfig.FilterHalf
			if err := w.d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATSrc4, fxSNATSrc6}, PortLo: fxSNATPortLo, PortHi: fxSNATPortHi}); err != nil {
				t.Fatal(err)
			}
			var cfg lbNatConfig
			if err := w.d.objs.NatConfigMap.Lookup(uint32(0), &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.FilterHalf != half {
				t.Errorf("SetNAT switched the filter half from %d to %d", half, cfg.FilterHalf)
			}
			natBackOff(t, w.d, false)
			w.run(t, []natStep{{name: "a new flow once there is room again", in: query, wantVerdict: fxTX,
				wantOut: fxL2Out(w.be[fam.id], fxUDP(usrc, ube, q), nil), wantCounter: "tx/snat"}})
		})
	}
}

// TestSNATMalformed: malformed packets to a SNAT service are dropped as any
// VIP's; to a SNAT source (the host's address, maybe) they pass.
func TestSNATMalformed(t *testing.T) {
	w := newNATWorld(t, Options{})
	c, v := fxAP(fxClient4, 40005), fxAP(fxSNATVIP4, 80)
	bad := packet.IPv4{Src: c.Addr(), Dst: v.Addr(), TTL: 61, Payload: packet.TCP{SrcPort: c.Port(), DstPort: v.Port(), Flags: packet.TCPSyn, DataOffset: 3}}
	badSrc := packet.IPv4{Src: fxSNATBE4, Dst: fxSNATSrc4, TTL: 61, Payload: packet.TCP{SrcPort: 8080, DstPort: 20000, Flags: packet.TCPAck, DataOffset: 3}}
	trunc := fxIn(fxIP(c, v, packet.TCPSyn, nil), nil)
	trunc = trunc[:14+20+10]
	// The IP header must agree with the frame: total length 30.
	trunc[14+3] = 30
	trunc[14+10], trunc[14+11] = 0, 0
	sum := fxOnesSum(trunc[14 : 14+20])
	trunc[14+10], trunc[14+11] = byte(^sum>>8), byte(^sum)
	w.run(t, []natStep{
		{name: "bad data offset to the VIP", in: fxIn(bad, nil), wantVerdict: fxDrop, wantCounter: "drop/bad_tcp_header"},
		{name: "truncated TCP header to the VIP", in: trunc, wantVerdict: fxDrop, wantCounter: "drop/truncated"},
		{name: "bad data offset to the SNAT source passes", in: fxFromBackend(badSrc), wantVerdict: fxPass, wantCounter: "pass/not_vip"},
	})
	if got := w.flows(t); len(got) != 0 {
		t.Errorf("flows %+v, want none", got)
	}
}

// TestSNATMaintain: idle flows expire by their state's timeout, both
// entries at once; others stay.
func TestSNATMaintain(t *testing.T) {
	w := newNATWorld(t, Options{})
	now := time.Duration(0)
	w.d.nowMono = func() time.Duration { return now }
	v := fxAP(fxSNATVIP4, 80)
	c1, c2 := fxAP(fxClient4, 43000), fxAP(fxClient4, 43001)
	u := fxAP(fxClient4, 43002)
	for _, in := range [][]byte{
		fxIn(fxIP(c1, v, packet.TCPSyn, nil), nil), // half-open
		fxIn(fxIP(c2, v, packet.TCPSyn, nil), nil),
		fxIn(fxUDP(u, fxAP(fxSNATVIP4, 53), []byte("q")), nil),
	} {
		if ret, _ := fxRun(t, w.d.Program(), in); ret != fxTX {
			t.Fatalf("verdict %s", fxVerdict(ret))
		}
	}
	src2, be := w.translation(c2, v, TCP)
	for _, in := range [][]byte{
		fxFromBackend(fxIP(be, src2, packet.TCPSyn|packet.TCPAck, nil)),
		fxIn(fxIP(c2, v, packet.TCPAck, nil), nil),
	} {
		if ret, _ := fxRun(t, w.d.Program(), in); ret != fxTX {
			t.Fatalf("verdict %s", fxVerdict(ret))
		}
	}
	states := map[netip.AddrPort]string{}
	var last time.Duration
	for _, f := range w.flows(t) {
		states[f.Client] = f.State
	}
	if d := cmp.Diff(map[netip.AddrPort]string{c1: NATStateSYNSent, c2: NATStateEstablished, u: NATStateUDP}, states,
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
		t.Fatalf("states (-want +got):\n%s", d)
	}
	// The program's clock: read it through a flow's stamps.
	if err := w.d.NATFlows(func(f NATFlow) bool { last = max(last, f.Idle); return true }); err != nil {
		t.Fatal(err)
	}
	now = monotonicNow() + 90*time.Second
	to := NATTimeouts{TCPEstablished: time.Hour, TCPTransitory: time.Minute, UDP: 2 * time.Minute}
	res, err := w.d.MaintainNAT(to)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(NATMaintainResult{Expired: map[string]int{NATExpiredTransitory: 1}, Remaining: 2}, res); d != "" {
		t.Errorf("after 90 s (-want +got):\n%s", d)
	}
	now = monotonicNow() + 2*time.Hour
	res, err = w.d.MaintainNAT(to)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(NATMaintainResult{Expired: map[string]int{NATExpiredEstablished: 1, NATExpiredUDP: 1}, Remaining: 0}, res); d != "" {
		t.Errorf("after 2 h (-want +got):\n%s", d)
	}
	var n int
	w.d.natEntries(func(natEntry, natRef) { n++ })
	if n != 0 {
		t.Errorf("%d NAT entries left, want 0", n)
	}
	st, err := w.d.NATStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Expired[NATExpiredTransitory] != 1 || st.Expired[NATExpiredEstablished] != 1 || st.Expired[NATExpiredUDP] != 1 {
		t.Errorf("expirations %v", st.Expired)
	}
}

// TestSNATICMP: ICMP errors about a NAT flow's packets, from the backend or
// from a router on its way, reach the flow's client quoting the client's own
// packet; an error about no flow passes; ping to the VIP still works.
func TestSNATICMP(t *testing.T) {
	w := newNATWorld(t, Options{})
	payload := bytes.Repeat([]byte{0xab}, 100)

	// UDP, port unreachable from the backend itself: from the VIP.
	c, v := fxAP(fxClient4, 44000), fxAP(fxSNATVIP4, 53)
	src, be := w.translation(c, v, UDP)
	toBackend := packet.MustBuild(fxUDP(src, be, payload))
	fromClient := packet.MustBuild(fxUDP(c, v, payload))
	unreach := func(from, to netip.Addr, quote []byte) packet.Layer {
		return packet.IPv4{Src: from, Dst: to, TTL: 64, Payload: packet.ICMPv4{Type: packet.ICMPv4DestUnreachable, Code: 3, Body: quote[:28]}}
	}
	// A router's "fragmentation needed" about a TCP packet (from the router,
	// the MTU kept: SNAT adds no header).
	ct, vt := fxAP(fxClient4, 44001), fxAP(fxSNATVIP4, 80)
	srct, bet := w.translation(ct, vt, TCP)
	big := func(s, d netip.AddrPort) []byte {
		return packet.MustBuild(fxIP(s, d, packet.TCPAck|packet.TCPPsh, payload))
	}
	fragNeeded := func(from, to netip.Addr, quote []byte) packet.Layer {
		return packet.IPv4{Src: from, Dst: to, TTL: 250, Payload: packet.ICMPv4{Type: packet.ICMPv4DestUnreachable,
			Code: packet.ICMPv4CodeFragNeeded, Rest: packet.FragNeededRest(1400), Body: quote[:48]}}
	}
	// IPv6: a router's "packet too big".
	c6, v6 := fxAP(fxClient6, 44002), fxAP(fxSNATVIP6, 80)
	src6, be6 := w.translation(c6, v6, TCP)
	tooBig := func(from, to netip.Addr, quote []byte) packet.Layer {
		return packet.IPv6{Src: from, Dst: to, HopLimit: 250, Payload: packet.ICMPv6{Type: packet.ICMPv6PacketTooBig,
			Rest: packet.PacketTooBigRest(1400), Body: quote[:40+32]}}
	}
	w.run(t, []natStep{
		{name: "UDP flow", in: fxIn(fxUDP(c, v, payload), nil), wantVerdict: fxTX, wantOut: fxL2Out(w.be[fxSNATID4], packet.RawIP(toBackend), nil), wantCounter: "tx/snat"},
		{name: "port unreachable from the backend", in: fxFromBackend(unreach(be.Addr(), src.Addr(), toBackend)), wantVerdict: fxTX,
			wantOut: fxToClient(unreach(v.Addr(), c.Addr(), fromClient)), wantCounter: "tx/snat_icmp_error"},
		{name: "TCP flow", in: fxIn(fxIP(ct, vt, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(srct, bet, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"},
		{name: "fragmentation needed from a router", in: fxFromBackend(fragNeeded(fxRouter4, srct.Addr(), big(srct, bet))), wantVerdict: fxTX,
			wantOut: fxToClient(fragNeeded(fxRouter4, ct.Addr(), big(ct, vt))), wantCounter: "tx/snat_icmp_error"},
		{name: "IPv6 TCP flow", in: fxIn(fxIP(c6, v6, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID6], fxIP(src6, be6, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"},
		{name: "packet too big from a router", in: fxFromBackend(tooBig(fxRouter6, src6.Addr(), big(src6, be6))), wantVerdict: fxTX,
			wantOut: fxToClient(tooBig(fxRouter6, c6.Addr(), big(c6, v6))), wantCounter: "tx/snat_icmp_error"},
		{name: "error about no flow passes", in: fxFromBackend(unreach(be.Addr(), src.Addr(), packet.MustBuild(fxUDP(netip.AddrPortFrom(src.Addr(), src.Port()^1), be, payload)))),
			wantVerdict: fxPass, wantCounter: "pass/not_vip"},
		{name: "ping to the VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxSNATVIP4, TTL: 61, Payload: packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(1, 2), Body: []byte("ping")}}, nil),
			wantVerdict: fxTX, wantOut: packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: packet.IPv4{Src: fxSNATVIP4, Dst: fxClient4, TTL: 64,
				Payload: packet.ICMPv4{Type: packet.ICMPv4EchoReply, Rest: packet.EchoRest(1, 2), Body: []byte("ping")}}}), wantCounter: "tx/icmp_echo_reply"},
	})
}

// TestNATPickSpread: the flows of one backend (hashes in one Maglev slot,
// whose high bits are all alike) try ports over the whole range, not a
// backend's share of it.
func TestNATPickSpread(t *testing.T) {
	srcs := []netip.Addr{fxSNATSrc4}
	const slot = uint32((1 << 32) / 16381)
	ports := map[uint16]bool{}
	for k := range uint32(1000) {
		h := 7*slot + k*(slot/1000)
		_, p := NATPick(h, 0, srcs, 1024, 65535)
		ports[p] = true
	}
	lo, hi := uint16(65535), uint16(0)
	for p := range ports {
		lo, hi = min(lo, p), max(hi, p)
	}
	if len(ports) < 950 || lo > 5000 || hi < 60000 {
		t.Errorf("1000 flows of one slot try %d distinct ports in %d-%d; want about 1000 spread over 1024-65535", len(ports), lo, hi)
	}
}

// TestSNATUDPBackendDown: a UDP flow whose backend goes down moves to the
// backend its table now names, from a new source port if need be: the
// datagram starts a new NAT flow.
func TestSNATUDPBackendDown(t *testing.T) {
	w := newNATWorld(t, Options{})
	other := Backend{Addr: netip.MustParseAddr("198.18.2.43"), Port: 9090, IfIndex: 1, NextHopMAC: fxMAC("02:00:00:00:01:43"), SrcMAC: fxEgressMAC, Up: true}
	if err := w.d.UpsertBackend(43, other); err != nil {
		t.Fatal(err)
	}
	c, v := fxAP(fxClient4, 45000), fxAP(fxSNATVIP4, 53)
	src, be := w.translation(c, v, UDP)
	q := []byte("query")
	w.run(t, []natStep{{name: "first datagram", in: fxIn(fxUDP(c, v, q), nil), wantVerdict: fxTX,
		wantOut: fxL2Out(w.be[fxSNATID4], fxUDP(src, be, q), nil), wantCounter: "tx/snat"}})
	b := w.be[fxSNATID4]
	b.Up = false
	if err := w.d.UpsertBackend(fxSNATID4, b); err != nil {
		t.Fatal(err)
	}
	if err := w.d.SetTable(VIPKey{v.Addr(), v.Port(), UDP}, fxFill(7, 43)); err != nil {
		t.Fatal(err)
	}
	w.run(t, []natStep{{name: "next datagram goes to the table's backend", in: fxIn(fxUDP(c, v, q), nil), wantVerdict: fxTX,
		wantOut:     fxL2Out(other, fxUDP(src, netip.AddrPortFrom(other.Addr, 9090), q), nil),
		wantCounter: "tx/snat", wantEvents: []string{"event/snat_backend_lost", "event/snat_flow_created"}}})
	natFlowDiff(t, w.flows(t), []NATFlow{{Client: c, VIP: v, Source: src, Backend: netip.AddrPortFrom(other.Addr, 9090), Proto: UDP, BackendID: 43, State: NATStateUDP}})
}

// TestSNATRestart: NAT flows, the SNAT config and the sources' prefilter
// bits live in pinned maps: a datapath opened again over them translates
// a flow's replies before anyone calls SetNAT.
func TestSNATRestart(t *testing.T) {
	testnet.RequirePrivileged(t)
	for _, earlier := range []bool{false, true} {
		// earlier: the maps were pinned by a release before the NAT
		// filter, which pinned none; Open sets the bits of their flows.
		t.Run(map[bool]string{false: "restart", true: "from a release without the NAT filter"}[earlier], func(t *testing.T) {
			pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
			o := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128, MaxNATFlows: 64}
			w := newNATWorld(t, o)
			c, v := fxAP(fxClient4, 46000), fxAP(fxSNATVIP4, 80)
			src, be := w.translation(c, v, TCP)
			syn := natStep{name: "SYN", in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
				wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"}
			w.run(t, []natStep{syn})
			if err := w.d.Close(); err != nil {
				t.Fatal(err)
			}
			if earlier {
				if err := os.Remove(filepath.Join(pin, lbMapNatFilter)); err != nil {
					t.Fatal(err)
				}
			}
			d, err := Open(o)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Unpin(); d.Close() })
			if got := d.NAT(); len(got.Sources) != 2 || got.PortLo != fxSNATPortLo || got.PortHi != fxSNATPortHi {
				t.Errorf("SNAT config after the restart: %+v", got)
			}
			w.d = d
			// The flow's bit is in the filter: its SYN, sent again while
			// the CPU backs off from a full table, follows it.
			natBackOff(t, d, true)
			syn.name = "SYN again, backing off, after the restart"
			w.run(t, []natStep{syn})
			natBackOff(t, d, false)
			w.run(t, []natStep{
				{name: "SYN-ACK after the restart", in: fxFromBackend(fxIP(be, src, packet.TCPSyn|packet.TCPAck, nil)), wantVerdict: fxTX,
					wantOut: fxToClient(fxIP(v, c, packet.TCPSyn|packet.TCPAck, nil)), wantCounter: "tx/snat_reply"},
				{name: "ACK after the restart", in: fxIn(fxIP(c, v, packet.TCPAck, nil), nil), wantVerdict: fxTX,
					wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPAck, nil), nil), wantCounter: "tx/snat"},
			})
		})
	}
}

// TestSNATExplain: the model (Decide) and the dry run agree on snat
// services: an ACK of no flow is dropped, a SYN takes the table's backend,
// a NAT flow keeps its backend when the table changes, and gets a RST when
// that backend goes down.
func TestSNATExplain(t *testing.T) {
	w := newNATWorld(t, Options{})
	if err := w.d.UpsertBackend(43, Backend{Addr: netip.MustParseAddr("198.18.2.43"), IfIndex: 1, NextHopMAC: fxMAC("02:00:00:00:01:43"), SrcMAC: fxEgressMAC, Up: true}); err != nil {
		t.Fatal(err)
	}
	c, v := fxAP(fxClient4, 47000), fxAP(fxSNATVIP4, 80)
	check := func(name string, p Packet, rule, reason string, backend uint32) {
		t.Helper()
		e, err := w.d.Explain(p)
		if err != nil {
			t.Fatal(err)
		}
		if !e.Agree || e.Model.Rule != rule || e.Program.Reason != reason || e.Program.BackendID != backend {
			t.Errorf("%s: model %s (backend %d), program %s (backend %d), agree %v %q; want %s, %s, backend %d",
				name, e.Model.Rule, e.Model.BackendID, e.Program.Reason, e.Program.BackendID, e.Agree, e.Disagreement, rule, reason, backend)
		}
	}
	check("ACK of no flow", Packet{Src: c, Dst: v, Proto: TCP}, RuleNATNoFlow, "drop/snat_no_flow", 0)
	check("SYN", Packet{Src: c, Dst: v, Proto: TCP, SYN: true}, RuleTable, "tx/snat", fxSNATID4)
	check("ICMP error at the VIP", Packet{Src: c, Dst: v, Proto: TCP, ICMPError: true}, RuleNATICMP, "drop/icmp", 0)
	if ret, _ := fxRun(t, w.d.Program(), fxIn(fxIP(c, v, packet.TCPSyn, nil), nil)); ret != fxTX {
		t.Fatalf("SYN: verdict %s", fxVerdict(ret))
	}
	if err := w.d.SetTable(VIPKey{v.Addr(), 80, TCP}, fxFill(7, 43)); err != nil {
		t.Fatal(err)
	}
	check("ACK of the flow after a table change", Packet{Src: c, Dst: v, Proto: TCP}, RuleNATFlow, "tx/snat", fxSNATID4)
	b := w.be[fxSNATID4]
	b.Up = false
	if err := w.d.UpsertBackend(fxSNATID4, b); err != nil {
		t.Fatal(err)
	}
	check("ACK of the flow, its backend down", Packet{Src: c, Dst: v, Proto: TCP}, RuleNATBackendLost, "tx/snat_rst", 0)
	check("SYN again, its backend down", Packet{Src: c, Dst: v, Proto: TCP, SYN: true}, RuleTable, "tx/snat", 43)
}

// TestNATEntries: the entries the program makes, found by the keys and
// hashes user space computes (natKey), in both tables, with the value
// layout natFrom reads: the translation both ways, the backend, the state
// bits, the creation stamp and the client side's interface and MACs.
func TestNATEntries(t *testing.T) {
	w := newNATWorld(t, Options{})
	before := monotonicNow()
	for _, c := range []struct {
		client, vip netip.AddrPort
		id          uint32
	}{
		{fxAP(fxClient4, 47000), fxAP(fxSNATVIP4, 80), fxSNATID4},
		{fxAP(netip.MustParseAddr("2001:db8:1::7"), 47000), fxAP(fxSNATVIP6, 80), fxSNATID6},
	} {
		src, be := w.translation(c.client, c.vip, TCP)
		w.run(t, []natStep{{name: c.client.String() + " SYN", in: fxIn(fxIP(c.client, c.vip, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[c.id], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"}})
		fwd, _, ok := w.d.natFind(c.client, c.vip, TCP, false)
		if !ok {
			t.Fatalf("%s -> %s: no forward entry under the key user space computes", c.client, c.vip)
		}
		rev, _, ok := w.d.natFind(be, src, TCP, true)
		if !ok {
			t.Fatalf("%s -> %s: no reply entry under the key user space computes", be, src)
		}
		created := time.Duration(uint64(fwd.aux) << natCreatedShift)
		if fwd.toSrc != src || fwd.toDst != be || fwd.backendID != c.id || fwd.bits != uint32(lbXdplbNatStateNAT_S_SYN) ||
			created > monotonicNow() || created < before-2*time.Second {
			t.Errorf("forward entry %+v: want %s -> %s, backend %d, bits SYN, created after %v", fwd, src, be, c.id, before)
		}
		var macs [12]byte
		for i, m := range rev.macs {
			putLE32(macs[4*i:], m)
		}
		if rev.toSrc != c.vip || rev.toDst != c.client || rev.backendID != c.id || rev.bits != 0 || rev.aux != 1 ||
			!bytes.Equal(macs[:6], fxRouterMAC) || !bytes.Equal(macs[6:], fxLBMAC) {
			t.Errorf("reply entry %+v (MACs %x): want %s -> %s, backend %d, interface 1 (the test run's), to %s from %s",
				rev, macs, c.vip, c.client, c.id, fxRouterMAC, fxLBMAC)
		}
	}
	var n int
	w.d.natEntries(func(natEntry, natRef) { n++ })
	if n != 4 {
		t.Errorf("%d entries in the NAT tables, want 4", n)
	}
}

// TestUpgradeCopiesOldNAT: the NAT flows of an earlier release's nat_flows
// hash map, found pinned at open, are copied into nat4, go on both ways,
// and the old map's pin is removed.
func TestUpgradeCopiesOldNAT(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	o := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128, MaxNATFlows: 64}
	w := newNATWorld(t, o)
	if err := w.d.Close(); err != nil {
		t.Fatal(err)
	}
	c, v := fxAP(fxClient4, 46100), fxAP(fxSNATVIP4, 80)
	src, be := w.translation(c, v, TCP)
	words := func(a netip.Addr) (w [4]uint32) {
		copy(w[:], addrWords(a))
		return w
	}
	now := uint64(monotonicNow())
	var dmac, smac [6]byte
	copy(dmac[:], fxRouterMAC)
	copy(smac[:], fxLBMAC)
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: "nat_flows", Type: ebpf.Hash, KeySize: uint32(binary.Size(lbNatKey{})), ValueSize: uint32(binary.Size(lbNatValue{})), MaxEntries: 128, Pinning: ebpf.PinByName},
		ebpf.MapOptions{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		k lbNatKey
		v lbNatValue
	}{
		{lbNatKey{Saddr: words(c.Addr()), Daddr: words(v.Addr()), Sport: port(c.Port()), Dport: port(v.Port()), Proto: 6, Family: 4},
			lbNatValue{Saddr: words(src.Addr()), Daddr: words(be.Addr()), Sport: port(src.Port()), Dport: port(be.Port()), BackendId: fxSNATID4,
				State: uint64(lbXdplbNatStateNAT_S_SYN | lbXdplbNatStateNAT_S_SEEN), Created: now, LastSeen: now}},
		{lbNatKey{Saddr: words(be.Addr()), Daddr: words(src.Addr()), Sport: port(be.Port()), Dport: port(src.Port()), Proto: 6, Family: 4, Dir: 1},
			lbNatValue{Saddr: words(v.Addr()), Daddr: words(c.Addr()), Sport: port(v.Port()), Dport: port(c.Port()), BackendId: fxSNATID4,
				Ifindex: 1, Dmac: dmac, Smac: smac, State: uint64(lbXdplbNatStateNAT_S_SYN | lbXdplbNatStateNAT_S_SEEN), Created: now, LastSeen: now}},
	} {
		if err := old.Put(e.k, e.v); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()

	d, err := Open(o)
	if err != nil {
		t.Fatalf("opening over an earlier release's nat_flows: %v", err)
	}
	t.Cleanup(func() { d.Unpin(); d.Close() })
	if _, err := os.Stat(filepath.Join(pin, "nat_flows")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("nat_flows still pinned: %v", err)
	}
	w.d = d
	// The copy set the flow's NAT filter bit: its SYN, sent again while
	// the CPU backs off from a full table, follows it.
	natBackOff(t, d, true)
	w.run(t, []natStep{{name: "SYN again, backing off, after the upgrade", in: fxIn(fxIP(c, v, packet.TCPSyn, nil), nil), wantVerdict: fxTX,
		wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPSyn, nil), nil), wantCounter: "tx/snat"}})
	natBackOff(t, d, false)
	w.run(t, []natStep{
		{name: "ACK after the upgrade", in: fxIn(fxIP(c, v, packet.TCPAck, nil), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxIP(src, be, packet.TCPAck, nil), nil), wantCounter: "tx/snat"},
		{name: "reply after the upgrade", in: fxFromBackend(fxIP(be, src, packet.TCPAck, nil)), wantVerdict: fxTX,
			wantOut: fxToClient(fxIP(v, c, packet.TCPAck, nil)), wantCounter: "tx/snat_reply"},
	})
	natFlowDiff(t, w.flows(t), []NATFlow{{Client: c, VIP: v, Source: src, Backend: be, Proto: TCP, BackendID: fxSNATID4, State: NATStateEstablished}})
}

// TestSNATSourceIsAVIP: a SNAT source may be a VIP address: the backends'
// replies to it and ICMP errors about its flows go back to the clients,
// and pings to it are answered as the VIP's.
func TestSNATSourceIsAVIP(t *testing.T) {
	w := newNATWorld(t, Options{})
	if err := w.d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATVIP4, fxSNATSrc6}, PortLo: fxSNATPortLo, PortHi: fxSNATPortHi}); err != nil {
		t.Fatal(err)
	}
	c, v := fxAP(fxClient4, 44100), fxAP(fxSNATVIP4, 53)
	a, p := NATPick(FlowHash(c, v, UDP, w.vips[VIPKey{v.Addr(), v.Port(), UDP}].HashSeed), 0, []netip.Addr{fxSNATVIP4}, fxSNATPortLo, fxSNATPortHi)
	src, be := netip.AddrPortFrom(a, p), netip.AddrPortFrom(fxSNATBE4, w.be[fxSNATID4].Port)
	payload := bytes.Repeat([]byte{0xcd}, 64)
	toBackend := packet.MustBuild(fxUDP(src, be, payload))
	unreach := func(from, to netip.Addr, quote []byte) packet.Layer {
		return packet.IPv4{Src: from, Dst: to, TTL: 64, Payload: packet.ICMPv4{Type: packet.ICMPv4DestUnreachable, Code: 3, Body: quote[:28]}}
	}
	w.run(t, []natStep{
		{name: "UDP flow from the VIP's address", in: fxIn(fxUDP(c, v, payload), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], packet.RawIP(toBackend), nil), wantCounter: "tx/snat"},
		{name: "reply to the VIP's address", in: fxFromBackend(fxUDP(be, src, payload)), wantVerdict: fxTX,
			wantOut: fxToClient(fxUDP(v, c, payload)), wantCounter: "tx/snat_reply"},
		{name: "port unreachable to the VIP's address", in: fxFromBackend(unreach(be.Addr(), src.Addr(), toBackend)), wantVerdict: fxTX,
			wantOut: fxToClient(unreach(v.Addr(), c.Addr(), packet.MustBuild(fxUDP(c, v, payload)))), wantCounter: "tx/snat_icmp_error"},
		{name: "ping to the VIP", in: fxIn(packet.IPv4{Src: fxClient4, Dst: fxSNATVIP4, TTL: 61, Payload: packet.ICMPv4{Type: packet.ICMPv4EchoRequest, Rest: packet.EchoRest(1, 2), Body: []byte("ping")}}, nil),
			wantVerdict: fxTX, wantCounter: "tx/icmp_echo_reply",
			wantOut: packet.MustBuild(packet.Ethernet{Dst: fxRouterMAC, Src: fxLBMAC, Payload: packet.IPv4{Src: fxSNATVIP4, Dst: fxClient4, TTL: 64,
				Payload: packet.ICMPv4{Type: packet.ICMPv4EchoReply, Rest: packet.EchoRest(1, 2), Body: []byte("ping")}}})},
	})
}

// natSourceFlags returns, per VIP at address a, whether its meta in the
// vips hash and, when the index serves it, in its vip_slots slot carries
// VIP_F_SNAT_SOURCE.
func natSourceFlags(t *testing.T, d *Datapath, a netip.Addr) map[VIPKey][2]bool {
	t.Helper()
	const flag = uint8(lbXdplbVipFlagsVIP_F_SNAT_SOURCE)
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[VIPKey][2]bool{}
	for k, st := range d.vips {
		if k.Addr != a {
			continue
		}
		var m lbVipMeta
		if err := d.objs.Vips.Lookup(k.bpf(), &m); err != nil {
			t.Fatal(err)
		}
		got := [2]bool{m.Flags&flag != 0, m.Flags&flag != 0}
		if st.indexed {
			var s lbVipSlot
			if err := d.objs.VipSlots.Lookup(st.slot, &s); err != nil {
				t.Fatal(err)
			}
			got[1] = s.Meta.Flags&flag != 0
		}
		out[k] = got
	}
	return out
}

// TestSNATSourceFlag: a packet to a service skips the look for a NAT flow
// unless the service's address is a SNAT source (VIP_F_SNAT_SOURCE). The
// flag follows the SNAT config and the VIPs, and is set at Open on VIPs of
// maps a release before it pinned. Its proof: a reply to a source:port that
// is also a service's address and port goes back to the client, not to the
// service.
func TestSNATSourceFlag(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	o := Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128, MaxNATFlows: 64}
	w := newNATWorld(t, o)
	wantFlags := func(t *testing.T, d *Datapath, want bool) {
		t.Helper()
		flags := natSourceFlags(t, d, fxSNATVIP4)
		if len(flags) != 2 {
			t.Fatalf("VIPs at %s: %v, want 2", fxSNATVIP4, flags)
		}
		for k, f := range flags {
			if f != [2]bool{want, want} {
				t.Errorf("VIP %s: VIP_F_SNAT_SOURCE in vips, vip_slots %v, want %v", k, f, want)
			}
		}
	}
	wantFlags(t, w.d, false)
	// The VIP's address as the only IPv4 source, with one port: the
	// port of the UDP service at that address.
	if err := w.d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATVIP4}, PortLo: 53, PortHi: 53}); err != nil {
		t.Fatal(err)
	}
	wantFlags(t, w.d, true)
	c, v := fxAP(fxClient4, 44200), fxAP(fxSNATVIP4, 53)
	src, be := netip.AddrPortFrom(fxSNATVIP4, 53), netip.AddrPortFrom(fxSNATBE4, w.be[fxSNATID4].Port)
	payload := bytes.Repeat([]byte{0x5a}, 32)
	reply := natStep{name: "reply to the source:port that is the service's", in: fxFromBackend(fxUDP(be, src, payload)), wantVerdict: fxTX,
		wantOut: fxToClient(fxUDP(v, c, payload)), wantCounter: "tx/snat_reply"}
	w.run(t, []natStep{
		{name: "datagram to the service", in: fxIn(fxUDP(c, v, payload), nil), wantVerdict: fxTX,
			wantOut: fxL2Out(w.be[fxSNATID4], fxUDP(src, be, payload), nil), wantCounter: "tx/snat"},
		reply,
	})

	// A VIP added at a source's address has the flag from the start.
	web := VIPKey{fxSNATVIP4, 443, TCP}
	if err := w.d.UpsertVIP(web, VIP{Mode: ModeSNAT}); err != nil {
		t.Fatal(err)
	}
	if f := natSourceFlags(t, w.d, fxSNATVIP4)[web]; !f[0] {
		t.Errorf("VIP %s added at a SNAT source: no VIP_F_SNAT_SOURCE", web)
	}
	if err := w.d.DeleteVIP(web); err != nil {
		t.Fatal(err)
	}

	// A release before the flag pinned metas without it, in vips and in
	// vip_slots: Open sets it before the program can be attached.
	if err := w.d.Close(); err != nil {
		t.Fatal(err)
	}
	vips, err := ebpf.LoadPinnedMap(filepath.Join(pin, lbMapVips), nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		k lbVipKey
		m lbVipMeta
	)
	var keys []lbVipKey
	for it := vips.Iterate(); it.Next(&k, &m); {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := vips.Lookup(k, &m); err != nil {
			t.Fatal(err)
		}
		m.Flags &^= uint8(lbXdplbVipFlagsVIP_F_SNAT_SOURCE)
		if err := vips.Update(k, &m, ebpf.UpdateExist); err != nil {
			t.Fatal(err)
		}
	}
	vips.Close()
	slots, err := ebpf.LoadPinnedMap(filepath.Join(pin, lbMapVipSlots), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint32(0); i < slots.MaxEntries(); i++ {
		var s lbVipSlot
		if err := slots.Lookup(i, &s); err != nil {
			t.Fatal(err)
		}
		if s.Meta.Flags&uint8(lbXdplbVipFlagsVIP_F_SNAT_SOURCE) != 0 {
			s.Meta.Flags &^= uint8(lbXdplbVipFlagsVIP_F_SNAT_SOURCE)
			if err := slots.Put(i, &s); err != nil {
				t.Fatal(err)
			}
		}
	}
	slots.Close()
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Unpin(); d.Close() })
	w.d = d
	wantFlags(t, d, true)
	reply.name += ", after the restart"
	w.run(t, []natStep{reply})

	// Without the source, the flag goes; the same datagram is the UDP
	// service's (a new flow, from the IPv4 source left).
	if err := d.SetNAT(NATConfig{Sources: []netip.Addr{fxSNATSrc4}, PortLo: fxSNATPortLo, PortHi: fxSNATPortHi}); err != nil {
		t.Fatal(err)
	}
	wantFlags(t, d, false)
	before, _ := fxCounters(t, d)
	if ret, _ := fxRun(t, d.Program(), fxFromBackend(fxUDP(be, src, payload))); ret != fxTX {
		t.Errorf("datagram to %s once it is no SNAT source: verdict %s, want XDP_TX", src, fxVerdict(ret))
	}
	after, _ := fxCounters(t, d)
	if n := after["tx/snat"] - before["tx/snat"]; n != 1 {
		t.Errorf("datagram to %s once it is no SNAT source: tx/snat moved by %d, want 1 (a new flow of the service)", src, n)
	}
}
