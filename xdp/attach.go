package xdp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// AttachMode is how an XDP program is attached to an interface.
type AttachMode string

// Attach modes. Auto tries native (driver) mode and falls back to generic.
const (
	AttachAuto    AttachMode = "auto"
	AttachNative  AttachMode = "native"
	AttachGeneric AttachMode = "generic"
)

// Attachment is the program attached to one interface.
type Attachment struct {
	Interface string
	IfIndex   int
	// Mode is the mode the kernel accepted: native or generic.
	Mode AttachMode
	// Reused is true when the attachment was left by an earlier instance and
	// now runs this instance's program.
	Reused bool
	link   link.Link
}

// ProgramID is the id of the attached program.
func (a *Attachment) ProgramID() (ebpf.ProgramID, error) {
	info, err := a.link.Info()
	if err != nil {
		return 0, err
	}
	return info.Program, nil
}

func linkPin(dir, iface string) string { return filepath.Join(dir, "link_"+iface) }

// attachXDP attaches prog to iface in mode, or takes over the link pinned at
// pin (updating it to prog without a gap), and pins the link when pin is set.
func attachXDP(prog *ebpf.Program, iface string, mode AttachMode, pin string) (*Attachment, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("attaching XDP to %q: %w", iface, err)
	}
	a := &Attachment{Interface: iface, IfIndex: ifi.Index}
	if pin != "" {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("updating the XDP program on %q: %w", iface, err)
			}
			a.link, a.Reused = l, true
			a.Mode = kernelMode(ifi.Index)
			return a, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("loading pinned link %s: %w", pin, err)
		}
	}
	try := []AttachMode{mode}
	if mode == AttachAuto || mode == "" {
		try = []AttachMode{AttachNative, AttachGeneric}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == AttachGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: flags})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
			continue
		}
		a.link, a.Mode = l, m
		break
	}
	if a.link == nil {
		return nil, fmt.Errorf("attaching XDP to %q: %w", iface, errors.Join(errs...))
	}
	if pin != "" {
		if err := a.link.Pin(pin); err != nil {
			a.link.Close()
			return nil, fmt.Errorf("pinning the XDP link of %q: %w", iface, err)
		}
	}
	return a, nil
}

// kernelMode asks the kernel how the program on ifindex is attached.
func kernelMode(ifindex int) AttachMode {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil || l.Attrs().Xdp == nil {
		return AttachAuto
	}
	switch l.Attrs().Xdp.AttachMode {
	case nl.XDP_ATTACHED_DRV, nl.XDP_ATTACHED_HW:
		return AttachNative
	case nl.XDP_ATTACHED_SKB:
		return AttachGeneric
	}
	return AttachAuto
}

// Attach runs the load-balancer program on iface (mode auto: native, else
// generic) and adds iface to the tx ports. With a pin path the link is pinned
// and survives the process; a link pinned by an earlier instance is taken over.
func (d *Datapath) Attach(iface string, mode AttachMode) (*Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.links[iface]; ok {
		return a, nil
	}
	pin := ""
	if d.opts.PinPath != NoPin {
		pin = linkPin(d.opts.PinPath, iface)
	}
	a, err := attachXDP(d.objs.Xdplb, iface, mode, pin)
	if err != nil {
		return nil, err
	}
	if err := d.objs.TxPorts.Put(uint32(a.IfIndex), uint32(a.IfIndex)); err != nil {
		a.link.Close()
		return nil, fmt.Errorf("adding %q to tx ports: %w", iface, err)
	}
	d.links[iface] = a
	return a, nil
}

// Detach removes the program from iface (and its pin).
func (d *Datapath) Detach(iface string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.links[iface]
	if !ok {
		return fmt.Errorf("detaching from %q: %w", iface, ErrNotFound)
	}
	delete(d.links, iface)
	_ = a.link.Unpin()
	_ = d.objs.TxPorts.Delete(uint32(a.IfIndex))
	return a.link.Close()
}

// Attachments lists the interfaces the program runs on.
func (d *Datapath) Attachments() []Attachment {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Attachment, 0, len(d.links))
	for _, a := range d.links {
		out = append(out, *a)
	}
	return out
}
