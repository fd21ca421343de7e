package xdp

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The pin filter (pin_filter in bpf/maps.h) has a bit per flow hash: set for
// every pinned flow, so a packet whose bit is clear skips the flow lookup.
// The program sets a new pin's bit in both halves and reads the half
// settings_map names; Maintain rebuilds the other half from the pins that
// remain and switches to it, so the bits of expired pins are dropped. The
// NAT filter (nat_filter in bpf/nat.h) works the same way for forward NAT
// entries, with the half in the NAT config, rebuilt by MaintainNAT.

const (
	pinFilterShift = 24
	natFilterShift = 24
)

// halfFilter is a filter of two halves of 2^shift bits each, mapped from
// an ARRAY of u64 words: word i of half h at i*stride + h*hoff (hf_has in
// bpf/lb.h).
type halfFilter struct {
	mem          []byte
	shift        uint
	words        int // per half
	stride, hoff int
}

// mapHalfFilter maps a filter whose halves are one after the other
// (interleaved: false) or interleaved word by word.
func mapHalfFilter(m *ebpf.Map, name string, shift uint, interleaved bool) (*halfFilter, error) {
	f := &halfFilter{shift: shift, words: (1 << shift) / 64, stride: 1, hoff: (1 << shift) / 64}
	if interleaved {
		f.stride, f.hoff = 2, 1
	}
	mem, err := unix.Mmap(m.FD(), 0, 2*f.words*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", name, err)
	}
	f.mem = mem
	return f, nil
}

func (f *halfFilter) unmap() {
	if f != nil && f.mem != nil {
		_ = unix.Munmap(f.mem)
		f.mem = nil
	}
}

func (f *halfFilter) bit(hash uint32) uint32 { return hash >> (32 - f.shift) }

func (f *halfFilter) word(half, bit uint32) *uint64 {
	i := int(bit>>6)*f.stride + int(half)*f.hoff
	return (*uint64)(unsafe.Pointer(&f.mem[i*8]))
}

// mark sets a hash's bit in both halves, as the program does.
func (f *halfFilter) mark(hash uint32) {
	bit := f.bit(hash)
	for half := uint32(0); half < 2; half++ {
		atomic.OrUint64(f.word(half, bit), 1<<(bit&63))
	}
}

// has says whether a hash's bit is set in a half.
func (f *halfFilter) has(half, hash uint32) bool {
	bit := f.bit(hash)
	return atomic.LoadUint64(f.word(half, bit))&(1<<(bit&63)) != 0
}

// clear zeroes a half (the one packets do not read), the first step of its
// rebuild, before the walk of the table it covers. The program sets an
// entry's bit after it inserts the entry, so a bit set before the zeroing
// reached its word belongs to an entry already in the table when the walk
// starts: the walk finds it and sets the bit again (set). An entry made
// later sets its bit in the cleared half itself. No entry loses its bit;
// clearing after the walk would erase the bits of entries made while it
// ran.
func (f *halfFilter) clear(half uint32) {
	for i := 0; i < f.words; i++ {
		atomic.StoreUint64(f.word(half, uint32(i)<<6), 0)
	}
}

// set sets the bits of the given hashes (of every entry the walk found) in
// a half.
func (f *halfFilter) set(half uint32, hashes []uint32) {
	for _, h := range hashes {
		bit := f.bit(h)
		atomic.OrUint64(f.word(half, bit), 1<<(bit&63))
	}
}

func (d *Datapath) mapFilters() error {
	var err error
	if d.pinFilter, err = mapHalfFilter(d.objs.PinFilter, "pin_filter", pinFilterShift, false); err != nil {
		return err
	}
	d.natFilter, err = mapHalfFilter(d.objs.NatFilter, "nat_filter", natFilterShift, true)
	return err
}

func (d *Datapath) unmapFilters() {
	d.pinFilter.unmap()
	d.natFilter.unmap()
}

// clearPinFilter zeroes the half of the pin filter packets do not read:
// Maintain calls it before it walks the flow tables.
func (d *Datapath) clearPinFilter() { d.pinFilter.clear(1 - d.settings.PinFilter&1) }

// switchPinFilter sets the bits of the given flow hashes (of every pin the
// walk found) in the half clearPinFilter cleared, and makes it the one
// packets read.
func (d *Datapath) switchPinFilter(hashes []uint32) error {
	next := 1 - d.settings.PinFilter&1
	d.pinFilter.set(next, hashes)
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
	d.pinFilter.mark(FlowHash(f.Src, f.Dst, f.Proto, st.meta.HashSeed))
}

// clearNATFilter zeroes the half of the NAT filter packets do not read:
// MaintainNAT calls it before it walks the NAT tables.
func (d *Datapath) clearNATFilter() {
	d.mu.Lock()
	half := 1 - uint32(d.natConfig.FilterHalf&1)
	d.mu.Unlock()
	d.natFilter.clear(half)
}

// switchNATFilter sets the bits of the given forward keys' hashes (of every
// flow that remains) in the half clearNATFilter cleared, and makes it the
// one packets read.
func (d *Datapath) switchNATFilter(hashes []uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.natConfig
	v.FilterHalf = 1 - v.FilterHalf&1
	d.natFilter.set(uint32(v.FilterHalf), hashes)
	if err := d.objs.NatConfigMap.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("switching the NAT filter: %w", err)
	}
	d.natConfig = v
	return nil
}
