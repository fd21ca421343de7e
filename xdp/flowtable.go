package xdp

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The flow table of bpf/flowtable.h, from user space: the same layout and
// protocol over the table's memory, mapped (or, for the model, allocated).
// Written once for every type of entry; the pins are pins.go's.

const (
	ftEmpty     = 0
	ftBusy      = 1
	ftLive      = 2
	ftStateMask = 0x3
	ftTouchMask = 0xfc
	ftTagShift  = 8
	ftTagMask   = 0xff00
	ftGenOne    = 0x10000
	ftGenMask   = 0xffff0000
	ftProbe     = 12
	ftHeadWords = 2
	ftLocked    = 1 << 32
	// ftLockTries bounds the wait for a bucket's insert lock, which the
	// program holds for a few stores (user space could hold it longer if
	// descheduled, which is why the program gives up sooner).
	ftLockTries = 1 << 20
)

var (
	errFTExists = errors.New("flow table: key exists")
	errFTBusy   = errors.New("flow table: bucket locked")
)

// ftGeom is a type of entry: its words after the state word (key, then
// value), words from one entry to the next, entries per bucket and bytes per
// bucket (struct ft_geom and the bucket struct in bpf/).
type ftGeom struct {
	kw, vw, stride, ways int
	bucket               int
}

// ftBuckets is the number of buckets of a table for entries of g sized for
// maxFlows entries: twice as many entries, in a power of two of buckets. At
// half full, a key finds its window of ftProbe (12) buckets full rarely: 27
// and 52 of 2^20 random keys in two measurements (with windows of 8 buckets,
// 0.03 %). The memory: 64 bytes an IPv4 pin and 128 an IPv6 one, 192 MiB for
// both at the default 2^20 (the hash maps before: 216 MiB).
func ftBuckets(maxFlows int, g ftGeom) int {
	n := (2*maxFlows + g.ways - 1) / g.ways
	if n < 1 {
		n = 1
	}
	return 1 << bits.Len(uint(n-1))
}

// flowTable is a flow table's memory.
type flowTable struct {
	mem  []byte
	g    ftGeom
	mask uint32
}

// mapFlowTable maps table m (an mmapable array of buckets of g) into memory.
func mapFlowTable(m *ebpf.Map, g ftGeom) (*flowTable, error) {
	n := int(m.MaxEntries()) * g.bucket
	page := unix.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (n+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", m, err)
	}
	return &flowTable{mem: mem, g: g, mask: m.MaxEntries() - 1}, nil
}

// newFlowTable is a table of n buckets (a power of two) in process memory.
func newFlowTable(n int, g ftGeom) *flowTable {
	words := make([]uint64, n*g.bucket/8) // 8-byte aligned
	return &flowTable{mem: unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n*g.bucket), g: g, mask: uint32(n - 1)}
}

func (t *flowTable) unmap() {
	if t != nil && t.mem != nil {
		_ = unix.Munmap(t.mem)
		t.mem = nil
	}
}

// word is word w of bucket b (0: the head's ovf).
func (t *flowTable) word(b uint32, w int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.mem[int(b)*t.g.bucket+4*w]))
}

// entry is word i of entry way of bucket b (0: the state word).
func (t *flowTable) entry(b uint32, way, i int) *uint32 {
	return t.word(b, ftHeadWords+way*t.g.stride+i)
}

func (t *flowTable) state(b uint32, way int) *uint64 {
	return (*uint64)(unsafe.Pointer(t.entry(b, way, 0)))
}

// ftRef is where an entry was found, and its first 8 bytes then.
type ftRef struct {
	bucket, home uint32
	way          int
	state        uint64
}

func withState(v uint64, s uint32) uint64 { return v&^0xffffffff | uint64(s) }

func (t *flowTable) keyEq(b uint32, way int, v uint64, key []uint32, tag uint32) bool {
	if uint32(v>>32) != key[0] || (uint32(v)&ftTagMask)>>ftTagShift != tag {
		return false
	}
	for i := 1; i < t.g.kw; i++ {
		if atomic.LoadUint32(t.entry(b, way, 1+i)) != key[i] {
			return false
		}
	}
	return true
}

// find looks key and tag up from hash, as the program does.
func (t *flowTable) find(hash uint32, key []uint32, tag uint32) (ftRef, bool) {
	home := hash & t.mask
	for i := uint32(0); i < ftProbe && i <= t.mask; i++ {
		b := (home + i) & t.mask
		for w := 0; w < t.g.ways; w++ {
			v := atomic.LoadUint64(t.state(b, w))
			if uint32(v)&ftStateMask == ftLive && t.keyEq(b, w, v, key, tag) {
				return ftRef{bucket: b, home: home, way: w, state: v}, true
			}
		}
		if i == 0 && atomic.LoadUint32(t.word(b, 0)) == 0 {
			break
		}
	}
	return ftRef{}, false
}

// value reads the value of the entry r names into val and says whether the
// entry is still the one found (apart from touches).
func (t *flowTable) value(r ftRef, val []uint32) bool {
	for i := range val {
		val[i] = atomic.LoadUint32(t.entry(r.bucket, r.way, 1+t.g.kw+i))
	}
	return (atomic.LoadUint64(t.state(r.bucket, r.way))^r.state)&^ftTouchMask == 0
}

// lock takes bucket b's insert lock.
func (t *flowTable) lock(b uint32) bool {
	p := (*uint64)(unsafe.Pointer(t.word(b, 0)))
	for i := 0; i < ftLockTries; i++ {
		v := atomic.LoadUint64(p)
		if v&ftLocked == 0 && atomic.CompareAndSwapUint64(p, v, v|ftLocked) {
			return true
		}
		runtime.Gosched()
	}
	return false
}

func (t *flowTable) unlock(b uint32) {
	atomic.AddUint64((*uint64)(unsafe.Pointer(t.word(b, 0))), ^uint64(ftLocked-1))
}

// insert adds key and tag with value val, as the program does: errFTExists
// if the key is there (with replace, its value is overwritten instead),
// ErrFull if its buckets are full.
func (t *flowTable) insert(hash uint32, key []uint32, tag uint32, val []uint32, replace bool) error {
	home := hash & t.mask
	if !t.lock(home) {
		return errFTBusy
	}
	defer t.unlock(home)
	if r, ok := t.find(hash, key, tag); ok {
		if !replace {
			return errFTExists
		}
		for i, v := range val {
			atomic.StoreUint32(t.entry(r.bucket, r.way, 1+t.g.kw+i), v)
		}
		t.touch(r)
		return nil
	}
	for i := uint32(0); i < ftProbe && i <= t.mask; i++ {
		b := (home + i) & t.mask
		for w := 0; w < t.g.ways; w++ {
			p := t.state(b, w)
			v := atomic.LoadUint64(p)
			s := uint32(v)
			if s&ftStateMask != ftEmpty {
				continue
			}
			busy := (s&ftGenMask + ftGenOne) | ftBusy
			if !atomic.CompareAndSwapUint64(p, v, withState(v, busy)) {
				continue
			}
			if i != 0 {
				atomic.AddUint32(t.word(home, 0), 1)
			}
			for j := 1; j < t.g.kw; j++ {
				atomic.StoreUint32(t.entry(b, w, 1+j), key[j])
			}
			for j, x := range val {
				atomic.StoreUint32(t.entry(b, w, 1+t.g.kw+j), x)
			}
			atomic.StoreUint64(p, uint64(key[0])<<32|uint64(busy&^(ftStateMask|ftTagMask)|tag<<ftTagShift|ftLive))
			return nil
		}
	}
	return ErrFull
}

// touch bumps the touch counter of the entry r names.
func (t *flowTable) touch(r ftRef) {
	p := t.state(r.bucket, r.way)
	v := atomic.LoadUint64(p)
	s := uint32(v)
	if s&ftStateMask == ftLive {
		atomic.CompareAndSwapUint64(p, v, withState(v, s&^ftTouchMask|(s+4)&ftTouchMask))
	}
}

// delete removes the entry r names unless it changed since it was read
// (touched, replaced, deleted, reused): true if it removed it.
func (t *flowTable) delete(r ftRef) bool {
	s := uint32(r.state)
	if !atomic.CompareAndSwapUint64(t.state(r.bucket, r.way), r.state, withState(r.state, (s&ftGenMask+ftGenOne)|ftEmpty)) {
		return false
	}
	if r.bucket != r.home {
		atomic.AddUint32(t.word(r.home, 0), ^uint32(0))
	}
	return true
}

// live says whether the entry r names is still live with the same key
// (touched or given a new value since, maybe).
func (t *flowTable) live(r ftRef) bool {
	v := atomic.LoadUint64(t.state(r.bucket, r.way))
	return uint32(v)&ftStateMask == ftLive && (v^r.state)&^ftTouchMask == 0
}

// walk calls fn with every live entry: where it is (home as hash, which fn
// computes from the key: see walkFlows), its tag and its words after the
// state word (key then value, valid until fn returns), until fn returns
// false. An entry that changes while it is read is skipped.
func (t *flowTable) walk(fn func(r ftRef, tag uint32, words []uint32) bool) {
	words := make([]uint32, t.g.kw+t.g.vw)
	for b := uint32(0); b <= t.mask; b++ {
		for w := 0; w < t.g.ways; w++ {
			p := t.state(b, w)
			v := atomic.LoadUint64(p)
			if uint32(v)&ftStateMask != ftLive {
				continue
			}
			words[0] = uint32(v >> 32)
			for i := 1; i < len(words); i++ {
				words[i] = atomic.LoadUint32(t.entry(b, w, 1+i))
			}
			if (atomic.LoadUint64(p)^v)&^ftTouchMask != 0 {
				continue
			}
			if !fn(ftRef{bucket: b, way: w, state: v}, (uint32(v)&ftTagMask)>>ftTagShift, words) {
				return
			}
		}
	}
}

// room says whether an insert of a key of this hash would find an empty
// entry (if the key is not there already).
func (t *flowTable) room(hash uint32) bool {
	home := hash & t.mask
	for i := uint32(0); i < ftProbe && i <= t.mask; i++ {
		b := (home + i) & t.mask
		for w := 0; w < t.g.ways; w++ {
			if uint32(atomic.LoadUint64(t.state(b, w)))&ftStateMask == ftEmpty {
				return true
			}
		}
	}
	return false
}
