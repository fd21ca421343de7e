package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A VIP's Maglev tables live in one inner array of M slots (an entry of
// maglev_tables), each slot holding two backend ids (struct maglev_slot): the
// current table is one half, the next one is written into the other half
// through mmap and swapped in by replacing the VIP's vip_meta, and the
// previous table stays where it was for the grace period. Only a change of M
// needs a new inner map, and so an update of maglev_tables, which the kernel
// makes wait for an RCU grace period: those are batched.

// innerTable is one inner map of maglev_tables, mapped into memory.
type innerTable struct {
	idx  uint32
	m    *ebpf.Map
	mem  []byte // the map's slots: 8 bytes each, the id of half h at 4*h
	size uint32 // M
}

const (
	innerFlags = unix.BPF_F_INNER_MAP | unix.BPF_F_MMAPABLE
	slotBytes  = 8 // sizeof(struct maglev_slot), also the array's element stride
)

func newInnerTable(size uint32) (*innerTable, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "xdplb_maglev", Type: ebpf.Array, KeySize: 4, ValueSize: slotBytes, MaxEntries: size, Flags: innerFlags,
	})
	if err != nil {
		return nil, err
	}
	return mapTable(m)
}

func mapTable(m *ebpf.Map) (*innerTable, error) {
	size := m.MaxEntries()
	n := int(size) * slotBytes
	page := unix.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (n+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("mapping a Maglev table: %w", err)
	}
	return &innerTable{m: m, mem: mem[:n:n], size: size}, nil
}

func (t *innerTable) close() {
	_ = unix.Munmap(t.mem[:cap(t.mem)])
	t.m.Close()
}

// write stores table as half h. Each id is one aligned 4-byte store, which
// the program reads whole.
func (t *innerTable) write(h uint32, table []uint32) {
	for i, id := range table {
		binary.LittleEndian.PutUint32(t.mem[i*slotBytes+4*int(h&1):], id)
	}
}

func (t *innerTable) read(h uint32) []uint32 {
	out := make([]uint32, t.size)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(t.mem[i*slotBytes+4*int(h&1):])
	}
	return out
}

// newEmptyTable makes the placeholder that released slots point to.
func (d *Datapath) newEmptyTable() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "xdplb_empty", Type: ebpf.Array, KeySize: 4, ValueSize: slotBytes, MaxEntries: 1, Flags: innerFlags,
	})
	if err != nil {
		return fmt.Errorf("creating the empty Maglev table: %w", err)
	}
	info, err := m.Info()
	if err != nil {
		m.Close()
		return err
	}
	d.empty = m
	d.emptyID, _ = info.ID()
	d.syncMap, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "xdplb_sync", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: slotBytes, MaxEntries: 1, Flags: innerFlags},
	})
	if err != nil {
		m.Close()
		return fmt.Errorf("creating the sync map: %w", err)
	}
	return nil
}

// openTable maps the inner map at idx of maglev_tables (after a restart).
func (d *Datapath) openTable(idx uint32) (*innerTable, error) {
	var id ebpf.MapID
	if err := d.objs.MaglevTables.Lookup(idx, &id); err != nil {
		return nil, fmt.Errorf("opening table %d: %w", idx, err)
	}
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("opening table %d: %w", idx, err)
	}
	t, err := mapTable(m)
	if err != nil {
		return nil, fmt.Errorf("opening table %d: %w", idx, err)
	}
	t.idx = idx
	d.tables.markUsed(idx)
	return t, nil
}

// Sync waits until every run of the program that started before it has
// finished: after it, no packet can still use a table or backend entry that
// the datapath no longer references (an RCU grace period, about 10 ms here).
// The reconciler calls it before deleting backend entries a table swap
// stopped referencing.
func (d *Datapath) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sync()
}

// sync updates a map-in-map, which the kernel makes wait for an RCU grace
// period (programs run under rcu_read_lock).
func (d *Datapath) sync() error {
	if err := d.syncMap.Put(uint32(0), d.empty); err != nil {
		return fmt.Errorf("waiting for running programs: %w", err)
	}
	d.syncGen++
	return nil
}

// releaseTable queues t's slot for the next flush.
func (d *Datapath) releaseTable(t *innerTable) {
	if t == nil {
		return
	}
	d.freed = append(d.freed, t.idx)
	t.close()
}

// flushFreed points every released slot to the empty table, in one batch
// (one RCU wait), and lets the slots be reused after the quarantine.
func (d *Datapath) flushFreed() error {
	if len(d.freed) == 0 {
		return nil
	}
	fds := make([]uint32, len(d.freed))
	for i := range fds {
		fds[i] = uint32(d.empty.FD())
	}
	if _, err := d.objs.MaglevTables.BatchUpdate(d.freed, fds, nil); err != nil {
		return fmt.Errorf("releasing Maglev tables: %w", err)
	}
	for _, idx := range d.freed {
		d.tables.put(idx)
	}
	d.freed = d.freed[:0]
	return nil
}

func (d *Datapath) closeTables() {
	for _, st := range d.vips {
		for _, t := range []*innerTable{st.table, st.old} {
			if t != nil {
				t.close()
			}
		}
	}
	if d.empty != nil {
		d.empty.Close()
	}
	if d.syncMap != nil {
		d.syncMap.Close()
	}
}

// SetTable gives a service a new Maglev table (backend ids, one per slot; the
// length is M) and swaps it in atomically. When the service had a table, the
// old one stays consulted for Options.TransitionGrace so that flows whose slot
// moved stay on their backend (they are pinned on their next packet).
func (d *Datapath) SetTable(k VIPKey, table []uint32) error {
	return d.SetTables(map[VIPKey][]uint32{k: table})[k]
}

// SetTables is SetTable for many services at once; it returns the errors by
// service (nil when all succeeded). Services that need a new inner map (a
// first table, or a new size) get them in one batch.
func (d *Datapath) SetTables(tables map[VIPKey][]uint32) map[VIPKey]error {
	d.mu.Lock()
	defer d.mu.Unlock()
	errs := map[VIPKey]error{}
	fail := func(k VIPKey, err error) { errs[k] = fmt.Errorf("setting the table of %s: %w", k, err) }

	keys := make([]VIPKey, 0, len(tables))
	for k := range tables {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })

	// A table the VIP has already is not written again: a swap would start
	// a new transition and end the running one, whose previous table keeps
	// the flows not pinned yet on their backends (a restarted reconciler
	// writes every table it wants once).
	same := map[VIPKey]bool{}
	// New inner maps, put into maglev_tables in one batch.
	fresh := map[VIPKey]*innerTable{}
	var idxs, fds []uint32
	for _, k := range keys {
		table := tables[k]
		st, ok := d.vips[k]
		switch {
		case !ok:
			fail(k, ErrNotFound)
			continue
		case len(table) == 0:
			fail(k, errors.New("empty table"))
			continue
		case st.table != nil && st.meta.TableSize == uint32(len(table)) && st.meta.TableIdx == st.table.idx &&
			slices.Equal(st.table.read(st.meta.TableHalf&1), table):
			same[k] = true
			continue
		case st.table != nil && st.table.size == uint32(len(table)):
			continue
		}
		idx, err := d.tables.get()
		if err == nil {
			var t *innerTable
			if t, err = newInnerTable(uint32(len(table))); err == nil {
				t.idx = idx
				fresh[k] = t
				idxs = append(idxs, idx)
				fds = append(fds, uint32(t.m.FD()))
				continue
			}
			d.tables.put(idx)
		}
		fail(k, err)
	}
	if len(idxs) > 0 {
		if _, err := d.objs.MaglevTables.BatchUpdate(idxs, fds, nil); err != nil {
			// Find out which: one by one.
			for k, t := range fresh {
				if err := d.objs.MaglevTables.Put(t.idx, uint32(t.m.FD())); err != nil {
					fail(k, err)
					t.close()
					d.tables.put(t.idx)
					delete(fresh, k)
				}
			}
		}
	}

	now := d.nowMono()
	for _, k := range keys {
		if errs[k] != nil {
			continue
		}
		st := d.vips[k]
		if same[k] {
			// Nothing to swap; a VIP not indexed yet may be now (its
			// entry was taken when it got its table).
			if !st.indexed {
				if err := d.writeMeta(k, st, st.meta); err != nil {
					fail(k, err)
				}
			}
			continue
		}
		if err := d.swapTable(st, k, tables[k], fresh[k], now); err != nil {
			if t := fresh[k]; t != nil {
				d.releaseTable(t)
			}
			fail(k, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// swapTable writes table into fresh (a new inner map) or into the free half
// of the VIP's inner map, then switches the VIP to it.
func (d *Datapath) swapTable(st *vipState, k VIPKey, table []uint32, fresh *innerTable, now time.Duration) error {
	m := st.meta
	hasTable := st.table != nil && m.TableSize != 0
	t, half := fresh, uint32(0)
	if t == nil {
		t, half = st.table, 1-m.TableHalf&1
		// The half about to be written may be the previous table of a
		// running transition (or one that ended less than a second ago):
		// end that transition first, and wait until no packet that saw it
		// is still running, so no packet reads a half-written table.
		if m.PrevIdx == t.idx && m.PrevHalf == half && time.Duration(m.TransitionEnd)+time.Second > now {
			cut := m
			cut.PrevIdx, cut.PrevHalf, cut.PrevSize, cut.TransitionEnd = 0, 0, 0, 0
			if err := d.writeMeta(k, st, cut); err != nil {
				return err
			}
			m = cut
			if err := d.sync(); err != nil {
				return err
			}
		}
	}
	t.write(half, table)
	next := m
	next.PrevIdx, next.PrevHalf, next.PrevSize, next.TransitionEnd = 0, 0, 0, 0
	if hasTable {
		next.PrevIdx, next.PrevHalf, next.PrevSize = m.TableIdx, m.TableHalf, m.TableSize
		next.TransitionEnd = uint64(now + d.opts.TransitionGrace)
		next.Flags |= uint8(lbXdplbVipFlagsVIP_F_HAS_PINS)
	}
	next.TableIdx, next.TableHalf, next.TableSize = t.idx, half, uint32(len(table))
	if err := d.writeMeta(k, st, next); err != nil {
		return err
	}
	if fresh != nil {
		// The old inner map holds the previous table until the grace period
		// ends; an even older one is no longer referenced.
		d.releaseTable(st.old)
		st.old = nil
		if hasTable {
			st.old = st.table
		}
		st.table = fresh
	} else if st.old != nil {
		d.releaseTable(st.old)
		st.old = nil
	}
	return nil
}

// Table reads back a service's current table.
func (d *Datapath) Table(k VIPKey) ([]uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vips[k]
	if !ok || st.table == nil {
		return nil, fmt.Errorf("reading the table of %s: %w", k, ErrNotFound)
	}
	return st.table.read(st.meta.TableHalf), nil
}

// Tables reads a service's current table and, while its grace period runs,
// the previous one (nil otherwise) and the time left of the grace period.
func (d *Datapath) Tables(k VIPKey) (cur, prev []uint32, left time.Duration, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vips[k]
	if !ok || st.table == nil {
		return nil, nil, 0, fmt.Errorf("reading the tables of %s: %w", k, ErrNotFound)
	}
	m := st.meta
	cur = st.table.read(m.TableHalf)
	if end := time.Duration(m.TransitionEnd); end > d.nowMono() && m.PrevSize != 0 {
		left = end - d.nowMono()
		switch {
		case m.PrevIdx == st.table.idx:
			prev = st.table.read(m.PrevHalf)
		case st.old != nil && m.PrevIdx == st.old.idx:
			prev = st.old.read(m.PrevHalf)
		}
	}
	return cur, prev, left, nil
}

// LookupVIP finds the service a packet to dst would match: the exact key, or
// the port-0 entry of its address.
func (d *Datapath) LookupVIP(dst netip.AddrPort, proto Proto) (VIPKey, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := VIPKey{Addr: dst.Addr().Unmap(), Port: dst.Port(), Proto: proto}
	if _, ok := d.vips[k]; ok {
		return k, true
	}
	k.Port = 0
	_, ok := d.vips[k]
	return k, ok
}
