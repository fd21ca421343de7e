package xdp

import (
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The program finds most services through vip_index, a direct-mapped cache
// of the vips hash: entry vipIndexOf(key) holds the vip_slots slot of the
// service with that key, whose copy of vip_meta the program then uses. Each
// VIP has two slots (2*id and 2*id+1). A change of a VIP's meta is written
// into its slot not in use, then vip_index is pointed at it with one atomic
// 4-byte store; the slot left is written again only after a Sync (no packet
// can still be reading it). The vips hash stays the reference: keys that
// share an entry, and port-0 services, are found there.

const (
	vipIndexShift = 16
	vipIndexSize  = 1 << vipIndexShift
	indexStride   = 8 // a 4-byte array value takes 8 bytes
)

// vipIndexOf mirrors vip_index_of in bpf/hash.h.
func vipIndexOf(k VIPKey) uint32 {
	port := uint32(bits.ReverseBytes16(k.Port))
	return ((foldAddr(k.Addr) ^ port<<16 ^ uint32(k.Proto)) * 0x9E3779B1) >> (32 - vipIndexShift)
}

func (d *Datapath) mapIndex() error {
	n := vipIndexSize * indexStride
	page := unix.Getpagesize()
	mem, err := unix.Mmap(d.objs.VipIndex.FD(), 0, (n+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping vip_index: %w", err)
	}
	d.vipIndex = mem
	return nil
}

func (d *Datapath) unmapIndex() {
	if d.vipIndex != nil {
		_ = unix.Munmap(d.vipIndex)
		d.vipIndex = nil
	}
}

func (d *Datapath) indexEntry(idx uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(&d.vipIndex[int(idx)*indexStride]))
}

// recoverIndex finds which VIPs the index of an earlier instance serves.
func (d *Datapath) recoverIndex() {
	byID := map[uint32]VIPKey{}
	for k, st := range d.vips {
		byID[st.meta.VipId] = k
	}
	for idx := uint32(0); idx < vipIndexSize; idx++ {
		slot := atomic.LoadUint32(d.indexEntry(idx))
		if slot == 0 {
			continue
		}
		k, ok := byID[slot/2]
		if !ok || vipIndexOf(k) != idx {
			atomic.StoreUint32(d.indexEntry(idx), 0) // stale
			continue
		}
		st := d.vips[k]
		st.slot, st.indexed = slot, true
		d.indexOwner[idx] = k
	}
}

// writeMeta makes m the meta of VIP k: in the vips hash, and in the index
// when the VIP is (or can now be) served by it.
func (d *Datapath) writeMeta(k VIPKey, st *vipState, m lbVipMeta) error {
	m.Flags = d.snatFlag(k.Addr, m.Flags)
	if err := d.objs.Vips.Update(k.bpf(), &m, ebpf.UpdateExist); err != nil {
		return err
	}
	st.meta = m
	idx := vipIndexOf(k)
	if !st.indexed {
		// Index a VIP once it has a table, if its entry is free; port-0
		// services are only looked up in the hash.
		if k.Port == 0 || m.TableSize == 0 {
			return nil
		}
		if _, taken := d.indexOwner[idx]; taken {
			return nil
		}
		if u, ok := d.slotsUsed[m.VipId]; ok && d.recent(u) {
			// A VIP that had this id may still be read from its slots.
			if err := d.sync(); err != nil {
				return err
			}
		}
		slot := 2 * m.VipId
		if err := d.objs.VipSlots.Put(slot, &lbVipSlot{Key: k.bpf(), Meta: m}); err != nil {
			return fmt.Errorf("indexing VIP %s: %w", k, err)
		}
		atomic.StoreUint32(d.indexEntry(idx), slot)
		d.indexOwner[idx] = k
		st.slot, st.indexed, st.flipped = slot, true, use{}
		return nil
	}
	if d.recent(st.flipped) {
		// The slot about to be written was in use moments ago.
		if err := d.sync(); err != nil {
			return err
		}
	}
	slot := st.slot ^ 1
	if err := d.objs.VipSlots.Put(slot, &lbVipSlot{Key: k.bpf(), Meta: m}); err != nil {
		// The hash has the new meta, the index the old one: take the VIP
		// out of the index, so every packet uses the hash.
		d.unindex(k, st)
		return fmt.Errorf("updating the index of VIP %s: %w", k, err)
	}
	atomic.StoreUint32(d.indexEntry(idx), slot)
	st.slot, st.flipped = slot, d.now()
	return nil
}

// use is when something (a slot, a half) stopped being the one in use:
// the Sync count and the time.
type use struct {
	gen uint64
	at  time.Time
}

func (d *Datapath) now() use { return use{gen: d.syncGen, at: time.Now()} }

// recent reports whether a packet may still be reading what stopped being in
// use at u: no Sync since, and less than a second ago (a program run takes
// microseconds).
func (d *Datapath) recent(u use) bool {
	return !u.at.IsZero() && u.gen >= d.syncGen && time.Since(u.at) < time.Second
}

// unindex takes a VIP out of the index; its slots may be read until the next
// Sync.
func (d *Datapath) unindex(k VIPKey, st *vipState) {
	if !st.indexed {
		return
	}
	idx := vipIndexOf(k)
	atomic.StoreUint32(d.indexEntry(idx), 0)
	delete(d.indexOwner, idx)
	st.indexed = false
	d.slotsUsed[st.meta.VipId] = d.now()
}
