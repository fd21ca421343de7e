package xdp

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/xdplb/xdplb/internal/packet"
)

// Explanation is the model's decision for a flow next to what the program
// (its dry-run build) does with the flow's packet.
type Explanation struct {
	Packet Packet
	// Frame is the frame built for the packet and run through the program.
	Frame   []byte
	Model   Decision
	Program DryRunResult
	// Agree says the program did what the model decided: the same service
	// found or not, the same backend (or none), the same pin written. When
	// not, Disagreement says what differs, in a line: that is a bug, of the
	// program or of the model.
	Agree        bool
	Disagreement string
}

// Addresses of the frames Explain builds: locally administered MACs the
// program never looks at.
var (
	explainDstMAC = net.HardwareAddr{0x02, 0x78, 0x64, 0x70, 0x00, 0x01}
	explainSrcMAC = net.HardwareAddr{0x02, 0x78, 0x64, 0x70, 0x00, 0x02}
)

// ExplainFrame builds the frame Explain runs for p: Ethernet, IPv4 or IPv6,
// then a TCP segment (an ACK with a few bytes, or a SYN when p.SYN) or a UDP
// datagram; for p.ICMPError, an ICMP "fragmentation needed" (ICMPv6 "packet
// too big") from the client's address quoting the VIP's packet to the
// client.
func ExplainFrame(p Packet) ([]byte, error) {
	src, dst := p.Src.Addr().Unmap(), p.Dst.Addr().Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return nil, fmt.Errorf("explaining %s -> %s: want two addresses of one family", p.Src, p.Dst)
	}
	l4 := func(from, to uint16) (packet.Layer, error) {
		switch p.Proto {
		case TCP:
			t := packet.TCP{SrcPort: from, DstPort: to, Seq: 0x01020304, Ack: 0x0a0b0c0d, Flags: packet.TCPAck | packet.TCPPsh, Window: 502, Payload: []byte("xdplb explain")}
			if p.SYN {
				t = packet.TCP{SrcPort: from, DstPort: to, Seq: 0x01020304, Flags: packet.TCPSyn, Window: 64240}
			}
			return t, nil
		case UDP:
			return packet.UDP{SrcPort: from, DstPort: to, Payload: []byte("xdplb explain")}, nil
		}
		return nil, fmt.Errorf("explaining %s -> %s: protocol %s is neither tcp nor udp", p.Src, p.Dst, p.Proto)
	}
	var l packet.Layer
	if !p.ICMPError {
		seg, err := l4(p.Src.Port(), p.Dst.Port())
		if err != nil {
			return nil, err
		}
		if src.Is4() {
			l = packet.IPv4{Src: src, Dst: dst, ID: 0x4d2, Flags: packet.IPv4DontFragment, TTL: 64, Payload: seg}
		} else {
			l = packet.IPv6{Src: src, Dst: dst, HopLimit: 64, Payload: seg}
		}
	} else {
		// The quoted packet went from the VIP to the client.
		seg, err := l4(p.Dst.Port(), p.Src.Port())
		if err != nil {
			return nil, err
		}
		if src.Is4() {
			q, err := packet.Build(packet.IPv4{Src: dst, Dst: src, Flags: packet.IPv4DontFragment, TTL: 64, Payload: seg})
			if err != nil {
				return nil, err
			}
			l = packet.IPv4{Src: src, Dst: dst, TTL: 64, Payload: packet.ICMPv4{
				Type: packet.ICMPv4DestUnreachable, Code: packet.ICMPv4CodeFragNeeded, Rest: packet.FragNeededRest(1280), Body: q[:28]}}
		} else {
			q, err := packet.Build(packet.IPv6{Src: dst, Dst: src, HopLimit: 64, Payload: seg})
			if err != nil {
				return nil, err
			}
			l = packet.IPv6{Src: src, Dst: dst, HopLimit: 64, Payload: packet.ICMPv6{
				Type: packet.ICMPv6PacketTooBig, Rest: packet.PacketTooBigRest(1280), Body: q[:48]}}
		}
	}
	return packet.Build(packet.Ethernet{Dst: explainDstMAC, Src: explainSrcMAC, Payload: l})
}

// Explain builds a frame of p's flow (ExplainFrame), asks the model what
// the program decides for it (ModelState, Decide) and the program what it
// does (DryRun), and compares the two. Forwarding after the choice of a
// backend (MAC rewrite, encapsulation, MTU) is the program's alone: a
// packet the program drops there (drop/no_encap_source, say) agrees with
// the model when the backend does. The frame arrives on loopback (see
// DryRun); ExplainOn says on which interface.
func (d *Datapath) Explain(p Packet) (Explanation, error) { return d.ExplainOn(p, 0) }

// ExplainOn is Explain for a packet arriving on the interface of index
// ingress; 0 means the interface of the chosen backend's next hop, when
// the datapath is attached to it, as for a client on the backends' LAN.
func (d *Datapath) ExplainOn(p Packet, ingress int) (Explanation, error) {
	e := Explanation{Packet: p}
	frame, err := ExplainFrame(p)
	if err != nil {
		return e, err
	}
	e.Frame = frame
	s, err := d.ModelState()
	if err != nil {
		return e, fmt.Errorf("explaining %s -> %s: %w", p.Src, p.Dst, err)
	}
	e.Model = s.Decide(p)
	if b, ok := s.Backends[e.Model.BackendID]; ingress == 0 && ok && d.attachedTo(b.IfIndex) {
		ingress = b.IfIndex
	}
	if e.Program, err = d.DryRunOn(frame, ingress); err != nil {
		return e, fmt.Errorf("explaining %s -> %s: %w", p.Src, p.Dst, err)
	}
	e.Disagreement = disagreement(p, e.Model, e.Program)
	e.Agree = e.Disagreement == ""
	return e, nil
}

// disagreement says how the program's run differs from the model's
// decision, or "" when it does not.
func disagreement(p Packet, m Decision, r DryRunResult) string {
	prog := fmt.Sprintf("the program counted %s", r.Reason)
	if r.BackendID != 0 {
		prog += fmt.Sprintf(" with backend %d", r.BackendID)
	}
	switch {
	case !m.IsVIP:
		if r.BackendID == 0 && (r.Reason == "pass/not_vip" || r.Reason == "drop/no_service" || (p.ICMPError && r.Reason == "drop/icmp")) {
			return ""
		}
		return "the model finds no service; " + prog
	case m.Rule == RuleNATNoFlow, m.Rule == RuleNATICMP, m.Rule == RuleNATBackendLost:
		want := map[string][]string{RuleNATNoFlow: {"drop/snat_no_flow"}, RuleNATICMP: {"drop/icmp"},
			RuleNATBackendLost: {"tx/snat_rst", "drop/no_backend"}}[m.Rule]
		if r.BackendID == 0 && slices.Contains(want, r.Reason) {
			return ""
		}
		return fmt.Sprintf("the model says %s (%s); %s", m.Rule, strings.Join(want, " or "), prog)
	case m.Rule == RuleNoBackend:
		if r.Reason == "drop/no_backend" {
			return pinDisagreement(m, r)
		}
		return fmt.Sprintf("the model finds no usable backend (id %d); %s", m.BackendID, prog)
	case r.BackendID != m.BackendID || r.Reason == "drop/no_backend":
		return fmt.Sprintf("the model sends it to backend %d (%s); %s", m.BackendID, m.Rule, prog)
	}
	return pinDisagreement(m, r)
}

func pinDisagreement(m Decision, r DryRunResult) string {
	if m.Pin == r.Pin {
		return ""
	}
	name := func(s string) string {
		if s == "" {
			return "none"
		}
		return s
	}
	return fmt.Sprintf("the model writes pin %s; the program writes %s", name(m.Pin), name(r.Pin))
}

// attachedTo says whether the datapath runs on the interface of index
// ifindex.
func (d *Datapath) attachedTo(ifindex int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.links {
		if a.IfIndex == ifindex {
			return true
		}
	}
	return false
}
