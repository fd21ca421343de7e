package xdp_test

// FuzzDatapath is the differential fuzzing of the program against the frame
// model (xdp.FrameModel): an input is a configuration and the frames run
// against it (internal/dpfuzz). Plain `go test` runs the committed corpus
// (testdata/fuzz/FuzzDatapath); `go test -fuzz FuzzDatapath ./xdp/` looks
// for more.

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/internal/dpfuzz"
	"github.com/xdplb/xdplb/internal/packet"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// fuzzFrames bounds the frames of one input.
const fuzzFrames = 64

func FuzzDatapath(f *testing.F) {
	testnet.RequirePrivileged(f)
	env, err := dpfuzz.NewEnv()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { env.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		err := env.NS.Do(func() error {
			s := dpfuzz.FromBytes(data)
			cfg := dpfuzz.NewConfig(s)
			w, err := dpfuzz.Open(cfg, env, true)
			if err != nil {
				return err
			}
			defer w.Close()
			w.Exact = true
			frames := dpfuzz.NewFrames(s, cfg)
			for i := 0; i < fuzzFrames && !s.Exhausted(); i++ {
				ingress := env.Ingress
				if s.Chance(20) {
					ingress = env.TxPort
				}
				if err := w.Check(frames.Frame(), ingress); err != nil {
					var d *dpfuzz.Divergence
					if errors.As(err, &d) {
						t.Errorf("frame %d: %v", i, d)
						continue
					}
					return err
				}
			}
			for _, d := range w.CheckCounters() {
				t.Error(d)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestFixedProgramBugs keeps a reproducer for each program bug the
// differential fuzzing found: the program must do what the model, which
// follows the rule, says, for every frame.
func TestFixedProgramBugs(t *testing.T) {
	testnet.RequirePrivileged(t)
	env, err := dpfuzz.NewEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })

	vip := netip.MustParseAddr("198.19.0.1")
	client := netip.MustParseAddr("198.18.1.1")
	router := netip.MustParseAddr("198.18.5.1")
	lbMAC, routerMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}
	config := func(port uint16, proto xdp.Proto, mode xdp.Mode) *dpfuzz.Config {
		return &dpfuzz.Config{
			Backends: []dpfuzz.BackendDef{{ID: 1, Addr: netip.MustParseAddr("198.18.2.1"), MAC: net.HardwareAddr{2, 0, 0, 0, 1, 1}, Up: true}},
			VIPs:     []dpfuzz.VIPDef{{Key: xdp.VIPKey{Addr: vip, Port: port, Proto: proto}, Mode: mode, Seed: 1, Tables: [][]uint32{{1, 1, 1, 1, 1, 1, 1}}}},
			Encap4:   netip.MustParsePrefix("198.18.3.1/32"),
		}
	}
	frame := func(l packet.Layer) []byte {
		return packet.MustBuild(packet.Ethernet{Dst: lbMAC, Src: routerMAC, Payload: l})
	}

	// An ICMP error whose IP packet ends with the quoted IP header, in a
	// frame whose last 4 bytes (after the packet) look like the quoted
	// ports: the program reads them and forwards the error to the flow's
	// backend; the quote has no ports, the rule drops it (truncated).
	quoted := packet.MustBuild(packet.IPv4{Src: vip, Dst: client, TTL: 64, Payload: packet.TCP{SrcPort: 80, DstPort: 40000, Flags: packet.TCPAck}})
	icmpErr := frame(packet.IPv4{Src: router, Dst: vip, TTL: 64, Payload: packet.ICMPv4{
		Type: 3, Code: 4, Rest: packet.FragNeededRest(1200), Body: quoted[:20],
	}})
	icmpErr = append(icmpErr, quoted[20:24]...)

	// The last fragment of a datagram, 2 bytes of data, TTL 1, to an IPIP
	// service: the program answers time exceeded quoting 28 bytes, the 22
	// of the packet and 6 zeros; the rule quotes the 22.
	src := netip.AddrPortFrom(client, 40000)
	first := frame(packet.IPv4{Src: client, Dst: vip, ID: 7, Flags: packet.IPv4MoreFragments, TTL: 64,
		Payload: packet.UDP{SrcPort: src.Port(), DstPort: 53, Payload: make([]byte, 64)}})
	last := frame(packet.IPv4{Src: client, Dst: vip, ID: 7, FragmentOffset: 9, TTL: 1, Protocol: 17, Payload: packet.Raw{0xaa, 0xbb}})

	// A TCP packet in an IPv6 atomic fragment (a fragment header with
	// offset 0 and no more) of a NAT flow whose backend went down: the
	// program read the fragment header as the TCP header and answered with
	// a malformed RST; the rule drops it (snat_unsupported) and leaves the
	// flow, whose next plain packet gets the RST.
	vip6 := netip.MustParseAddrPort("[2001:db8:100::1]:80")
	client6 := netip.MustParseAddrPort("[2001:db8:1::1]:40000")
	snat := &dpfuzz.Config{
		Backends: []dpfuzz.BackendDef{{ID: 1, Addr: netip.MustParseAddr("2001:db8:2::1"), Port: 8080, MAC: net.HardwareAddr{2, 0, 0, 0, 1, 1}, Up: true}},
		VIPs:     []dpfuzz.VIPDef{{Key: xdp.VIPKey{Addr: vip6.Addr(), Port: vip6.Port(), Proto: xdp.TCP}, Mode: xdp.ModeSNAT, Seed: 1, Tables: [][]uint32{{1, 1, 1, 1, 1, 1, 1}}}},
		NAT:      xdp.NATConfig{Sources: []netip.Addr{netip.MustParseAddr("2001:db8:6::1")}, PortLo: 20000, PortHi: 20099},
		// The backend goes down after the flow's first packet.
		Flips: []dpfuzz.Flip{{ID: 1, At: 1, Every: 1 << 30}},
	}
	tcp6 := func(flags packet.TCPFlags) []byte {
		return packet.MustBuild(packet.IPv6{Src: client6.Addr(), Dst: vip6.Addr(), HopLimit: 64, Payload: packet.TCP{
			SrcPort: client6.Port(), DstPort: vip6.Port(), Seq: 1000, Ack: 2000, Flags: flags, Window: 512, Payload: []byte("hello"),
		}})
	}
	atomic := func(ip []byte) []byte {
		fh := []byte{ip[6], 0, 0, 0, 0, 0, 0, 7}
		out := append(append(append([]byte{}, ip[:40]...), fh...), ip[40:]...)
		out[6] = 44
		out[5] += 8
		return out
	}
	raw := func(ip []byte) []byte { return frame(packet.RawIP(ip)) }

	for _, c := range []struct {
		bug    string
		cfg    *dpfuzz.Config
		frames [][]byte
	}{
		// The program read the quote up to the end of the frame and
		// forwarded the error; the quote has no ports: drop/truncated.
		{"icmp-quote-beyond-packet", config(80, xdp.TCP, xdp.ModeDSRL2), [][]byte{icmpErr}},
		// The program quoted 28 bytes, 6 of them past the packet.
		{"icmp-back-quote-padded", config(53, xdp.UDP, xdp.ModeDSRIPIP), [][]byte{first, last}},
		{"snat-rst-atomic-fragment", snat, [][]byte{raw(tcp6(packet.TCPSyn)), raw(atomic(tcp6(packet.TCPAck | packet.TCPPsh))), raw(tcp6(packet.TCPAck))}},
	} {
		t.Run(c.bug, func(t *testing.T) {
			err := env.NS.Do(func() error {
				w, err := dpfuzz.Open(c.cfg, env, false)
				if err != nil {
					return err
				}
				defer w.Close()
				w.Exact = true
				for i, f := range c.frames {
					if err := w.Check(f, env.Ingress); err != nil {
						t.Errorf("frame %d: %v", i, err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
