package xdp

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The pin filter (pin_filter in bpf/maps.h) has a bit per flow hash: set for
// every pinned flow, so a packet whose bit is clear skips the flow lookup.
// The program sets a new pin's bit in both halves and reads the half
// settings_map names; Maintain rebuilds the other half from the pins that
// remain and switches to it, so the bits of expired pins are dropped.

const (
	pinFilterShift = 24
	pinFilterWords = (1 << pinFilterShift) / 64
)

func (d *Datapath) mapPinFilter() error {
	n := 2 * pinFilterWords * 8
	mem, err := unix.Mmap(d.objs.PinFilter.FD(), 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping pin_filter: %w", err)
	}
	d.pinFilter = mem
	return nil
}

func (d *Datapath) unmapPinFilter() {
	if d.pinFilter != nil {
		_ = unix.Munmap(d.pinFilter)
		d.pinFilter = nil
	}
}

func (d *Datapath) pinWord(half, bit uint32) *uint64 {
	i := int(half)*pinFilterWords + int(bit>>6)
	return (*uint64)(unsafe.Pointer(&d.pinFilter[i*8]))
}

// markPin sets a flow hash's bit in both halves, as the program does.
func (d *Datapath) markPin(hash uint32) {
	bit := hash >> (32 - pinFilterShift)
	for half := uint32(0); half < 2; half++ {
		atomic.OrUint64(d.pinWord(half, bit), 1<<(bit&63))
	}
}

// clearPinFilter zeroes the half of the filter packets do not read, the
// first step of its rebuild: Maintain calls it before it walks the flow
// tables. The program sets a pin's bit after it inserts the pin, so a bit
// set before the zeroing reached its word belongs to a pin already in the
// flow tables when the walk starts: the walk finds it and sets the bit again
// (switchPinFilter). A pin made later sets its bit in the cleared half
// itself. No pin loses its bit; clearing after the walk would erase the bits
// of pins made while it ran.
func (d *Datapath) clearPinFilter() {
	next := 1 - d.settings.PinFilter&1
	for i := 0; i < pinFilterWords; i++ {
		atomic.StoreUint64(d.pinWord(next, uint32(i)<<6), 0)
	}
}

// switchPinFilter sets the bits of the given flow hashes (of every pin the
// walk found) in the half clearPinFilter cleared, and makes it the one
// packets read.
func (d *Datapath) switchPinFilter(hashes []uint32) error {
	next := 1 - d.settings.PinFilter&1
	for _, h := range hashes {
		bit := h >> (32 - pinFilterShift)
		atomic.OrUint64(d.pinWord(next, bit), 1<<(bit&63))
	}
	s := d.settings
	s.PinFilter = next
	if err := d.objs.SettingsMap.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("switching the pin filter: %w", err)
	}
	d.settings = s
	return nil
}

// markPinFlow sets the filter bits of a flow pinned behind the datapath's
// back (batch fills of benchmarks), with its VIP's hash seed.
func (d *Datapath) markPinFlow(f Flow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := VIPKey{Addr: f.Dst.Addr(), Port: f.Dst.Port(), Proto: f.Proto}
	st, ok := d.vips[k]
	if !ok {
		k.Port = 0
		if st, ok = d.vips[k]; !ok {
			return
		}
	}
	d.markPin(FlowHash(f.Src, f.Dst, f.Proto, st.meta.HashSeed))
}
