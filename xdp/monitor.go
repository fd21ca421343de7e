package xdp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf/ringbuf"
)

// MonitorType says what a monitor event is about.
type MonitorType uint32

// The monitor's event types (enum xdplb_monitor_type in bpf/monitor.h).
const (
	MonitorDrop       = MonitorType(lbXdplbMonitorTypeMON_DROP)
	MonitorPin        = MonitorType(lbXdplbMonitorTypeMON_PIN)
	MonitorICMPError  = MonitorType(lbXdplbMonitorTypeMON_ICMP_ERROR)
	MonitorEchoReply  = MonitorType(lbXdplbMonitorTypeMON_ECHO_REPLY)
	MonitorICMPSent   = MonitorType(lbXdplbMonitorTypeMON_ICMP_SENT)
	monitorTypeLimit  = MonitorICMPSent + 1
	monitorFrameBytes = len(lbMonitorEvent{}.Data)
)

// String names the type as the CLI's --type takes it.
func (t MonitorType) String() string {
	switch t {
	case MonitorDrop:
		return "drop"
	case MonitorPin:
		return "pin"
	case MonitorICMPError:
		return "icmp-error"
	case MonitorEchoReply:
		return "echo-reply"
	case MonitorICMPSent:
		return "icmp-sent"
	}
	return fmt.Sprintf("type%d", uint32(t))
}

// MonitorEvent is one event of the datapath's monitor.
type MonitorEvent struct {
	Type MonitorType
	// Action and Reason name the counter of the packet's verdict (for a
	// pin: "event", "pin_created"), as the metrics do.
	Action, Reason string
	IfIndex        int
	BackendID      uint32 // 0: none
	// Src, Dst and Proto are the flow as the program saw it (for an ICMP
	// error, the quoted flow seen from the client); invalid when the packet
	// was not parsed that far.
	Src, Dst netip.AddrPort
	Proto    Proto
	SYN      bool
	// FrameLen is the frame's length; Frame its first bytes as the program
	// left it (none for a pin).
	FrameLen int
	Frame    []byte
}

// ErrMonitorBusy is returned by Monitor when another reader has the ring.
var ErrMonitorBusy = errors.New("the datapath's monitor already has a reader")

// Monitor turns the datapath's monitor on and calls fn with each event
// until ctx ends, then turns it off. One reader at a time (the daemon fans
// events out to its listeners). fn runs on Monitor's goroutine: a slow fn
// fills the ring, and the program then loses events (MonitorLost) rather
// than wait.
func (d *Datapath) Monitor(ctx context.Context, fn func(MonitorEvent)) error {
	d.mu.Lock()
	if d.monitoring {
		d.mu.Unlock()
		return ErrMonitorBusy
	}
	d.monitoring = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.monitoring = false
		d.mu.Unlock()
	}()
	rd, err := ringbuf.NewReader(d.objs.MonitorEvents)
	if err != nil {
		return fmt.Errorf("reading the monitor's ring: %w", err)
	}
	defer rd.Close()
	if err := d.SetMonitor(true); err != nil {
		return err
	}
	defer d.SetMonitor(false)
	// Close interrupts a ReadInto (SetDeadline would wait for it).
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if ctx.Err() != nil || errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading the monitor's ring: %w", err)
		}
		if e, ok := decodeMonitorEvent(rec.RawSample); ok {
			fn(e)
		}
	}
}

// SetMonitor turns the program's monitor flag on or off. Monitor does it;
// the benchmarks measure the program with it on.
func (d *Datapath) SetMonitor(on bool) error {
	v := uint32(0)
	if on {
		v = 1
	}
	if err := d.objs.MonitorOn.Update(uint32(0), v, 0); err != nil {
		return fmt.Errorf("setting the monitor flag: %w", err)
	}
	return nil
}

// MonitorOn says whether the program's monitor flag is on.
func (d *Datapath) MonitorOn() (bool, error) {
	var v uint32
	if err := d.objs.MonitorOn.Lookup(uint32(0), &v); err != nil {
		return false, fmt.Errorf("reading the monitor flag: %w", err)
	}
	return v != 0, nil
}

// MonitorLost returns how many events the program lost because the ring
// was full, since the datapath was created.
func (d *Datapath) MonitorLost() (uint64, error) {
	var perCPU []uint64
	if err := d.objs.MonitorLost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading the monitor's lost events: %w", err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}

// decodeMonitorEvent decodes one record of the ring (struct monitor_event).
func decodeMonitorEvent(b []byte) (MonitorEvent, bool) {
	var raw lbMonitorEvent
	if _, err := binary.Decode(b, binary.LittleEndian, &raw); err != nil {
		return MonitorEvent{}, false
	}
	t := MonitorType(raw.Type)
	if t == 0 || t >= monitorTypeLimit {
		return MonitorEvent{}, false
	}
	n := counterNames[lbXdplbCounter(raw.Reason)]
	e := MonitorEvent{
		Type: t, Action: n.action, Reason: n.reason, IfIndex: int(raw.Ifindex), BackendID: raw.BackendId,
		Proto: Proto(raw.Proto), SYN: raw.Syn != 0, FrameLen: int(raw.FrameLen),
	}
	switch raw.Family {
	case 4:
		var s, t [4]byte
		putLE32(s[:], raw.Saddr[0])
		putLE32(t[:], raw.Daddr[0])
		e.Src = netip.AddrPortFrom(netip.AddrFrom4(s), port(raw.Sport))
		e.Dst = netip.AddrPortFrom(netip.AddrFrom4(t), port(raw.Dport))
	case 6:
		var s, t [16]byte
		for i := range 4 {
			putLE32(s[4*i:], raw.Saddr[i])
			putLE32(t[4*i:], raw.Daddr[i])
		}
		e.Src = netip.AddrPortFrom(netip.AddrFrom16(s), port(raw.Sport))
		e.Dst = netip.AddrPortFrom(netip.AddrFrom16(t), port(raw.Dport))
	}
	if c := int(raw.CapLen); c > 0 && c <= monitorFrameBytes {
		e.Frame = append([]byte(nil), raw.Data[:c]...)
	}
	return e, true
}
