package lb

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
)

// DefaultTableSize is the Maglev table size used when the configuration does
// not name one. It suits services of up to about 160 backends; see
// CommonTableSizes.
const DefaultTableSize = 16381

// MinTableSize and MaxTableSize bound the Maglev table size. The table size
// must also be a prime; see [ValidTableSize].
const (
	MinTableSize = 251
	MaxTableSize = 131071
)

// MaxWeight is the largest backend weight [MaglevBuilder.Build] accepts.
// Weights are relative, so 1 to 100 is plenty in practice; the cap keeps the
// number of rounds the builder runs bounded.
const MaxWeight = 10000

// CommonTableSizes lists the primes users usually pick as the Maglev table
// size, smallest first; [ValidTableSize] accepts any other prime in range
// too. A backend gets within one slot of its weighted share, so a size of at
// least 100 times the number of backends keeps shares within about 1%, and a
// bigger table also moves fewer flows when backends come and go.
var CommonTableSizes = []int{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071}

// ValidTableSize returns an error unless m is a prime between MinTableSize and
// MaxTableSize. The table size must be a prime so that every backend's
// permutation visits every slot.
func ValidTableSize(m int) error {
	if m < MinTableSize || m > MaxTableSize || !isPrime(m) {
		return fmt.Errorf("table size %d is not a prime between %d and %d", m, MinTableSize, MaxTableSize)
	}
	return nil
}

// isPrime reports whether n is a prime by trial division, which is quick for
// the table sizes we accept.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// MaglevBackend is one backend of a service as the Maglev table builder sees
// it.
type MaglevBackend struct {
	// ID is the value the table holds in this backend's slots. IDs must be
	// unique and must not be 0, which marks a slot with no backend.
	ID uint32
	// Addr identifies the backend: it alone decides which slots the backend
	// prefers, so a backend keeps its slots when its ID or the other backends
	// change. An IPv4-mapped IPv6 address is the same backend as the IPv4
	// address, and addresses with an IPv6 zone are rejected, since a zone
	// names an interface of one host.
	Addr netip.AddrPort
	// Weight is the backend's share of the slots relative to the other
	// backends, from 0 to MaxWeight. A backend with weight 0 is draining: it
	// gets no slots, and the caller keeps its datapath entry alive for the
	// flows it already has.
	Weight uint32
}

// MaglevBuilder builds Maglev lookup tables. It keeps its scratch buffers
// between builds, so rebuilding a table of the same or a smaller size for the
// same number of backends or fewer allocates nothing. A MaglevBuilder is not
// safe for concurrent use.
//
// The table a builder fills depends only on the seed, the table size M and
// the set of backends, never on the order the backends are given in or on
// the appliance that builds it. Fleets upgraded one node at a time rely on
// every release building the same table, so the algorithm below must never
// change:
//
//  1. A backend's key is 18 bytes: its address in 16-byte IPv6 form (an IPv4
//     address as ::ffff:a.b.c.d) followed by its port, big-endian.
//  2. Its hash h is SipHash-2-4 of the key, keyed with the seed (k0 is seed
//     bytes 0 to 7 and k1 is bytes 8 to 15, both little-endian, as in the
//     SipHash paper). Its permutation starts at offset = uint32(h) mod M and
//     steps by skip = uint32(h>>32) mod (M-1) + 1, so its j-th preferred slot
//     is (offset + j*skip) mod M. As M is a prime, the permutation visits
//     every slot exactly once.
//  3. Backends with weight 0 are left out. The others are ordered by
//     decreasing weight, then by increasing key, compared bytewise.
//  4. With W the sum of the weights, a backend of weight w gets a quota of
//     floor(M*w/W) slots, and the M - sum(floor(M*w/W)) backends with the
//     largest remainders M*w mod W get one slot more; between equal
//     remainders the backend earlier in the order wins (the largest
//     remainder method). Every backend thus owns within one slot of
//     M*w/W slots.
//  5. Backends take turns in rounds 1, 2, 3 and so on. With wmax the
//     largest weight, a backend of weight w takes its k-th turn in round
//     ceil(k*wmax/w), so the heaviest backends take a turn every round;
//     within a round, backends take their turns in the order of step 3. A
//     backend stops taking turns once it has filled its quota.
//  6. On its turn a backend takes the first slot along its permutation that
//     no backend holds yet, searching on from the slot after the one it took
//     on its previous turn.
//
// With equal weights this is exactly the population algorithm of the Maglev
// paper (Eisenbud et al., NSDI 2016, §3.4): one turn each per round until the
// table is full, so every backend gets floor(M/N) or ceil(M/N) slots. Step 5
// extends it to weights as Katran's MaglevHashV2 does (a backend takes a turn
// whenever its accumulated weight reaches the largest weight), and step 4
// adds quotas so that shares are exact to a slot. Permutation entries are
// computed as the search goes; nothing of size N×M is ever built.
type MaglevBuilder struct {
	k0, k1 uint64 // SipHash key, from the seed

	entries []maglevEntry  // the backends, validated
	set     []int32        // hash set of indexes into entries, plus 1
	order   []int32        // indexes into entries, in turn order
	cursors []maglevCursor // the backends with weight > 0, in turn order
	groups  []maglevGroup  // runs of cursors with equal weight
	byRem   []int32        // indexes into groups, for handing out quotas
	taken   []uint8        // 1 for each slot taken so far, 0 for free; twice
	empty   []uint32       // the slots still free, once few are left

	// tail overrides tailSize when positive; tests use it to exercise the
	// endgame search.
	tail int
}

// maglevEntry is a validated backend.
type maglevEntry struct {
	hi, lo uint64 // the address in 16-byte form, as two big-endian halves
	hash   uint64 // of the key
	port   uint16
	weight uint32
	id     uint32
}

// compareKey orders entries by their key (step 1 of the algorithm) bytewise.
func compareKey(x, y *maglevEntry) int {
	if c := cmp.Compare(x.hi, y.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(x.lo, y.lo); c != 0 {
		return c
	}
	return cmp.Compare(x.port, y.port)
}

// maglevCursor is a backend's place in its permutation.
type maglevCursor struct {
	next uint32 // the next slot of the permutation to try
	skip uint32
	id   uint32
	inv  uint32    // skip⁻¹ mod M, computed when first needed; 0 until then
	step [4]uint32 // step[k] is (k+1)·skip mod M
}

// maglevGroup is a run of backends with the same weight. They take their
// turns in the same rounds, and the first extra of them take one turn more
// than quota.
type maglevGroup struct {
	start, n uint32 // the group is cursors[start : start+n]
	weight   uint32
	quota    uint32 // slots every member gets
	extra    uint32 // members that get one slot more
	rem      uint64 // M*weight mod W, for handing out the extra slots
	turns    uint32 // turns taken so far
	round    uint64 // round of the next turn, or noRound when done
}

const noRound = math.MaxUint64

var errStuck = errors.New("building Maglev table: no free slot found; this is a bug")

// NewMaglevBuilder returns a builder for tables with the given seed. Every
// appliance that must agree on the tables has to use the same seed.
func NewMaglevBuilder(seed [16]byte) *MaglevBuilder {
	return &MaglevBuilder{
		k0: binary.LittleEndian.Uint64(seed[0:8]),
		k1: binary.LittleEndian.Uint64(seed[8:16]),
	}
}

// BuildMaglev builds a Maglev table of size m for the backends with a new
// [MaglevBuilder]. Use a MaglevBuilder directly to rebuild tables without
// allocating.
func BuildMaglev(seed [16]byte, m int, backends []MaglevBackend) ([]uint32, error) {
	if err := ValidTableSize(m); err != nil {
		return nil, err
	}
	table := make([]uint32, m)
	if err := NewMaglevBuilder(seed).Build(table, backends); err != nil {
		return nil, err
	}
	return table, nil
}

// SlotCounts returns how many slots of table each ID holds, including ID 0
// for slots with no backend.
func SlotCounts(table []uint32) map[uint32]int {
	counts := make(map[uint32]int)
	for _, id := range table {
		counts[id]++
	}
	return counts
}

// Build fills table with the IDs of backends, as the [MaglevBuilder]
// documentation describes. The length of table is the table size and must
// pass [ValidTableSize]. If no backend has a weight above 0, Build fills the
// table with 0.
//
// Build returns an error if a backend has ID 0, a weight above MaxWeight, an
// unset address or one with an IPv6 zone, or shares its ID or address with
// another backend. It checks everything before it writes, so table is left
// as it was when it returns an error.
func (b *MaglevBuilder) Build(table []uint32, backends []MaglevBackend) error {
	if err := ValidTableSize(len(table)); err != nil {
		return err
	}
	if err := b.load(backends); err != nil {
		return err
	}

	// Step 3: turn order. Drained backends drop out.
	b.order = b.order[:0]
	for i := range b.entries {
		if b.entries[i].weight > 0 {
			b.order = append(b.order, int32(i))
		}
	}
	if len(b.order) == 0 {
		clear(table)
		return nil
	}
	entries := b.entries
	slices.SortFunc(b.order, func(i, j int32) int {
		x, y := &entries[i], &entries[j]
		if c := cmp.Compare(y.weight, x.weight); c != 0 {
			return c
		}
		return compareKey(x, y)
	})
	m := uint32(len(table))

	// Step 2: permutations; and groups of equal weight.
	b.cursors = b.cursors[:0]
	b.groups = b.groups[:0]
	var sum uint64
	for i, k := range b.order {
		e := &entries[k]
		h := e.hash
		c := maglevCursor{
			next: uint32(h) % m,
			skip: uint32(h>>32)%(m-1) + 1,
			id:   e.id,
		}
		for k := range c.step {
			c.step[k] = c.skip
			if k > 0 {
				c.step[k] = addMod(c.step[k-1], c.skip-m, m)
			}
		}
		b.cursors = append(b.cursors, c)
		sum += uint64(e.weight)
		if g := len(b.groups) - 1; g >= 0 && b.groups[g].weight == e.weight {
			b.groups[g].n++
		} else {
			b.groups = append(b.groups, maglevGroup{start: uint32(i), n: 1, weight: e.weight})
		}
	}

	// Step 4: quotas by the largest remainder method.
	left := uint64(m)
	b.byRem = b.byRem[:0]
	for i := range b.groups {
		g := &b.groups[i]
		share := uint64(m) * uint64(g.weight)
		g.quota = uint32(share / sum)
		g.rem = share % sum
		left -= uint64(g.quota) * uint64(g.n)
		b.byRem = append(b.byRem, int32(i))
	}
	groups := b.groups
	slices.SortFunc(b.byRem, func(x, y int32) int {
		if c := cmp.Compare(groups[y].rem, groups[x].rem); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	for _, i := range b.byRem {
		if left == 0 {
			break
		}
		g := &groups[i]
		g.extra = uint32(min(left, uint64(g.n)))
		left -= uint64(g.extra)
	}

	// Step 5: the first turn of each group.
	wmax := uint64(groups[0].weight)
	round := uint64(noRound)
	for i := range groups {
		g := &groups[i]
		g.round = g.nextRound(wmax)
		round = min(round, g.round)
	}

	b.resetTaken(m)
	tail := b.tailSize(m)
	slots := int(m)
	for slots > 0 {
		if round == noRound {
			return errStuck
		}
		next := uint64(noRound)
		for i := range groups {
			g := &groups[i]
			if g.round == round {
				k := g.n
				if g.turns >= g.quota {
					k = g.extra
				}
				var err error
				slots, err = b.place(table, b.cursors[g.start:g.start+k], slots, tail)
				if err != nil {
					return err
				}
				g.turns++
				g.round = g.nextRound(wmax)
			}
			next = min(next, g.round)
		}
		round = next
	}
	return nil
}

// nextRound returns the round of the group's next turn, or noRound if its
// members have filled their quotas.
func (g *maglevGroup) nextRound(wmax uint64) uint64 {
	k := uint64(g.turns) + 1
	if k > uint64(g.quota) && (k > uint64(g.quota)+1 || g.extra == 0) {
		return noRound
	}
	w := uint64(g.weight)
	return (k*wmax + w - 1) / w
}

// load validates backends into b.entries, with their hashes.
func (b *MaglevBuilder) load(backends []MaglevBackend) error {
	b.entries = b.entries[:0]
	for i, be := range backends {
		addr := be.Addr.Addr()
		switch {
		case be.ID == 0:
			return fmt.Errorf("backends[%d]: ID 0 is reserved for \"no backend\"", i)
		case be.Weight > MaxWeight:
			return fmt.Errorf("backends[%d]: weight %d is out of range 0 to %d", i, be.Weight, MaxWeight)
		case !addr.IsValid():
			return fmt.Errorf("backends[%d]: address is not set", i)
		case addr.Zone() != "":
			return fmt.Errorf("backends[%d]: address %q has an IPv6 zone", i, be.Addr)
		}
		a := addr.As16()
		e := maglevEntry{
			hi:     binary.BigEndian.Uint64(a[0:8]),
			lo:     binary.BigEndian.Uint64(a[8:16]),
			port:   be.Addr.Port(),
			weight: be.Weight,
			id:     be.ID,
		}
		e.hash = b.hash(&e)
		b.entries = append(b.entries, e)
	}

	// Report the duplicate that comes first in the caller's slice, against
	// the first backend it duplicates.
	b.resetSet(len(b.entries))
	for i := range b.entries {
		e := &b.entries[i]
		if j := b.insert(e.hash, int32(i), func(j int32) bool { return compareKey(e, &b.entries[j]) == 0 }); j >= 0 {
			return fmt.Errorf("backends[%d]: address %q duplicates backends[%d]", i, backends[i].Addr, j)
		}
	}
	b.resetSet(len(b.entries))
	for i := range b.entries {
		id := b.entries[i].id
		if j := b.insert(uint64(id)*0x9e3779b97f4a7c15, int32(i), func(j int32) bool { return b.entries[j].id == id }); j >= 0 {
			return fmt.Errorf("backends[%d]: ID %d duplicates backends[%d]", i, id, j)
		}
	}
	return nil
}

// resetSet empties b.set and sizes it for n entries.
func (b *MaglevBuilder) resetSet(n int) {
	size := 1 << bits.Len(uint(2*n))
	if cap(b.set) < size {
		b.set = make([]int32, size)
	}
	b.set = b.set[:size]
	clear(b.set)
}

// insert adds index i to the hash set b.set, with the hash h, unless an
// index j already there is equal to it by the equal function; then it
// returns j, and otherwise -1.
func (b *MaglevBuilder) insert(h uint64, i int32, equal func(j int32) bool) int32 {
	mask := uint64(len(b.set) - 1)
	for k := h >> 32 & mask; ; k = (k + 1) & mask {
		j := b.set[k] - 1
		if j < 0 {
			b.set[k] = i + 1
			return -1
		}
		if equal(j) {
			return j
		}
	}
}

// hash returns the SipHash-2-4 of the entry's key (steps 1 and 2).
func (b *MaglevBuilder) hash(e *maglevEntry) uint64 {
	var key [18]byte
	binary.BigEndian.PutUint64(key[0:8], e.hi)
	binary.BigEndian.PutUint64(key[8:16], e.lo)
	binary.BigEndian.PutUint16(key[16:18], e.port)
	return sipHash24(b.k0, b.k1, key[:])
}

// resetTaken marks all m slots free.
func (b *MaglevBuilder) resetTaken(m uint32) {
	if cap(b.taken) < int(2*m) {
		b.taken = make([]uint8, 2*m)
	}
	b.taken = b.taken[:2*m]
	clear(b.taken)
	b.empty = b.empty[:0]
}

// tailSize returns how few free slots must be left before the builder stops
// trying the slots of permutations in turn and computes instead, for each
// free slot, how far along the permutation it lies (see placeTail). Trying
// costs about M/F lookups per placement with F slots free, computing about F
// multiplications, so the switch pays off near sqrt(M); the factor was
// measured.
func (b *MaglevBuilder) tailSize(m uint32) int {
	if b.tail > 0 {
		return b.tail
	}
	return int(math.Sqrt(float64(m)) * 3 / 4)
}

// place gives each backend of cursors one slot, its next free slot along its
// permutation (step 6). It returns how many slots are left free.
func (b *MaglevBuilder) place(table []uint32, cursors []maglevCursor, free, tail int) (int, error) {
	for len(cursors) > 0 {
		k, ok := 1, true
		switch crowded := len(table) / 4; {
		case free > crowded:
			k = min(free-crowded, len(cursors))
			ok = walk4(table, b.taken, cursors[:k])
		case free > tail:
			k = min(free-tail, len(cursors))
			ok = walk8(table, b.taken, cursors[:k])
		default:
			ok = b.placeTail(table, &cursors[0], free)
		}
		if !ok {
			return free, errStuck
		}
		free -= k
		cursors = cursors[k:]
	}
	return free, nil
}

// walk4 gives each backend of cursors its next free slot by trying the
// slots of its permutation in turn. It reports false if a backend finds
// none, which cannot happen while there are at least len(cursors) free
// slots.
//
// This is the loop that takes most of the time of a build. It tries four
// slots at a time, each a step further than the last but all computed from
// p, so that the processor looks them up in parallel, and one branch tells
// whether any of them is free: which slot is free next is unpredictable,
// and a mispredicted branch costs more than a few lookups. taken is a byte
// per slot, because testing a bit costs more instructions than the bigger
// array costs in cache misses, and it is doubled so that p plus up to three
// steps needs no wrapping around.
func walk4(table []uint32, taken []uint8, cursors []maglevCursor) bool {
	m := uint32(len(table))
	for i := range cursors {
		c := &cursors[i]
		s1, s2, s3, s4 := c.step[0], c.step[1], c.step[2], c.step[3]-m
		p := c.next
		for steps := m; ; {
			t0, t1, t2, t3 := taken[p], taken[p+s1], taken[p+s2], taken[p+s3]
			if t0&t1&t2&t3 == 0 {
				free := ^(uint(t0) | uint(t1)<<1 | uint(t2)<<2 | uint(t3)<<3)
				offset := [4]uint32{0, s1, s2, s3}
				p += offset[bits.TrailingZeros(free)&3]
				p = min(p, p-m)
				break
			}
			// The permutation visits every slot, so this only guards
			// against bugs.
			if steps <= 4 {
				return false
			}
			steps -= 4
			p = addMod(p, s4, m)
		}
		taken[p] = 1
		taken[p+m] = 1
		table[p] = c.id
		c.next = addMod(p, s1-m, m)
	}
	return true
}

// walk8 is walk4 trying eight slots at a time, which pays once more than
// three quarters of the table is taken.
func walk8(table []uint32, taken []uint8, cursors []maglevCursor) bool {
	m := uint32(len(table))
	for i := range cursors {
		c := &cursors[i]
		s1, s2, s3, s4 := c.step[0], c.step[1], c.step[2], c.step[3]-m
		p := c.next
		for steps := m; ; {
			q := addMod(p, s4, m)
			t0, t1, t2, t3 := taken[p], taken[p+s1], taken[p+s2], taken[p+s3]
			u0, u1, u2, u3 := taken[q], taken[q+s1], taken[q+s2], taken[q+s3]
			if t0&t1&t2&t3&u0&u1&u2&u3 == 0 {
				free := ^(uint(t0) | uint(t1)<<1 | uint(t2)<<2 | uint(t3)<<3 |
					uint(u0)<<4 | uint(u1)<<5 | uint(u2)<<6 | uint(u3)<<7)
				k := bits.TrailingZeros(free) & 7
				base := [2]uint32{p, q}
				offset := [4]uint32{0, s1, s2, s3}
				p = base[k/4] + offset[k%4]
				p = min(p, p-m)
				break
			}
			if steps <= 8 {
				return false
			}
			steps -= 8
			p = addMod(q, s4, m)
		}
		taken[p] = 1
		taken[p+m] = 1
		table[p] = c.id
		c.next = addMod(p, s1-m, m)
	}
	return true
}

// addMod returns (p + step + m) mod m for p in [0, m) and step in [-m, 0)
// (as a two's complement uint32), without a branch: the slot to try is
// unpredictable, and a mispredicted branch costs more than the arithmetic.
func addMod(p, step, m uint32) uint32 {
	p += step
	return p + m&uint32(int32(p)>>31)
}

// placeTail gives the backend of c its next free slot along its permutation
// when few slots are free, and reports false if there are none. The free slot e lies (e-next)·skip⁻¹ mod M steps
// along from next, so the nearest one is found without walking.
func (b *MaglevBuilder) placeTail(table []uint32, c *maglevCursor, free int) bool {
	m := uint32(len(table))
	if len(b.empty) != free {
		// First call for this table: collect the free slots.
		b.empty = b.empty[:0]
		for p, t := range b.taken[:m] {
			if t == 0 {
				b.empty = append(b.empty, uint32(p))
			}
		}
		if len(b.empty) != free {
			return false
		}
	}
	if c.inv == 0 {
		c.inv = modInverse(c.skip, m)
	}
	inv, back, magic := uint64(c.inv), -c.next, remainderMagic(m)
	best, at := uint64(m), 0
	for i, e := range b.empty {
		d := addMod(e, back, m)
		if steps := remainder(uint64(d)*inv, magic, m); steps < best {
			best, at = steps, i
		}
	}
	p := b.empty[at]
	last := len(b.empty) - 1
	b.empty[at] = b.empty[last]
	b.empty = b.empty[:last]
	b.taken[p] = 1
	b.taken[p+m] = 1
	table[p] = c.id
	c.next = addMod(p, c.skip-m, m)
	return true
}

// remainderMagic returns the constant remainder needs to divide by m.
func remainderMagic(m uint32) uint64 {
	return ^uint64(0)/uint64(m) + 1
}

// remainder returns x mod m for x < 2^47 with two multiplications instead of
// a division, by the method of Lemire, Kaser and Kurz, "Faster remainder by
// direct computation" (2019). The builder's dividends are below m² < 2^34.
func remainder(x, magic uint64, m uint32) uint64 {
	r, _ := bits.Mul64(x*magic, uint64(m))
	return r
}

// modInverse returns the inverse of a modulo the prime m, for a in [1, m-1].
func modInverse(a, m uint32) uint32 {
	t, newT := int64(0), int64(1)
	r, newR := int64(m), int64(a)
	for newR != 0 {
		q := r / newR
		t, newT = newT, t-q*newT
		r, newR = newR, r-q*newR
	}
	if t < 0 {
		t += int64(m)
	}
	return uint32(t)
}

// sipHash24 returns the SipHash-2-4 of p under the key (k0, k1), as defined
// by Aumasson and Bernstein, "SipHash: a fast short-input PRF" (2012).
func sipHash24(k0, k1 uint64, p []byte) uint64 {
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	last := uint64(len(p)) << 56
	for ; len(p) >= 8; p = p[8:] {
		m := binary.LittleEndian.Uint64(p)
		v3 ^= m
		round()
		round()
		v0 ^= m
	}
	for i, c := range p {
		last |= uint64(c) << (8 * i)
	}
	v3 ^= last
	round()
	round()
	v0 ^= last
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	return v0 ^ v1 ^ v2 ^ v3
}
