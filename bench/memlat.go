package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// memlat measures what a flow-table lookup meets on this machine: loads at
// random cache lines of an area the size of a large table, each load's
// address the previous load's value (a pointer chase), so each pays the full
// latency. It chases 1, 2, ... independent chains in lockstep as well: the
// time per step stays near one latency as long as the CPU overlaps the
// misses, as a new NAT flow's two bucket reads must. The area is mapped with
// 4 KiB pages (as BPF arrays are) and, for comparison, with transparent huge
// pages (fewer TLB misses).

// memlatLine is the distance between two loads: a cache line.
const memlatLine = 64

// memlatResult is one figure of memlat's report.
type memlatResult struct {
	Pages     string  `json:"pages"` // "4KiB" or "huge"
	Chains    int     `json:"chains"`
	NsPerStep float64 `json:"ns_per_step"`
}

func memlat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("memlat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the results as a JSON array")
	sizeMiB := fs.Int("size", 256, "the area chased, in MiB (larger than the last-level cache)")
	chainList := fs.String("chains", "1,2,4", "chains walked in lockstep, comma-separated")
	loads := fs.Int("loads", 2_000_000, "steps per measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sizeMiB < 1 || *loads < 1 {
		return fmt.Errorf("memlat: -size and -loads must be at least 1")
	}
	var chains []int
	for f := range strings.SplitSeq(*chainList, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 1 || k > 16 {
			return fmt.Errorf("memlat: -chains %q: each a number from 1 to 16", *chainList)
		}
		chains = append(chains, k)
	}
	size := *sizeMiB << 20
	var out []memlatResult
	for _, huge := range []bool{false, true} {
		mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return fmt.Errorf("memlat: mapping %d MiB: %w", *sizeMiB, err)
		}
		advice, pages := unix.MADV_NOHUGEPAGE, "4KiB"
		if huge {
			advice, pages = unix.MADV_HUGEPAGE, "huge"
		}
		// Without transparent huge pages the advice fails and the area
		// keeps 4 KiB pages: say so rather than report them as huge.
		if err := unix.Madvise(mem, advice); err != nil {
			pages += " (madvise: " + err.Error() + ")"
		}
		memlatCycle(mem, 1)
		for _, k := range chains {
			if ctx.Err() != nil {
				unix.Munmap(mem)
				return ctx.Err()
			}
			d, end := memlatChase(mem, k, *loads)
			if end >= uint64(size/memlatLine) {
				unix.Munmap(mem)
				return fmt.Errorf("memlat: the chase left the area (line %d)", end)
			}
			out = append(out, memlatResult{Pages: pages, Chains: k, NsPerStep: float64(d.Nanoseconds()) / float64(*loads)})
		}
		if err := unix.Munmap(mem); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(stdout, "dependent loads at random cache lines of %d MiB, %d steps per figure\n", *sizeMiB, *loads)
	for _, r := range out {
		fmt.Fprintf(stdout, "%-5s pages, %2d chain(s) in lockstep: %6.1f ns per step\n", r.Pages, r.Chains, r.NsPerStep)
	}
	return nil
}

// memlatCycle links the cache lines of mem into one cycle in a random
// order: the first 8 bytes of each line hold the index of the next line.
// Sattolo's shuffle makes a single cycle, so a chase from any line visits
// every line before it comes back.
func memlatCycle(mem []byte, seed uint64) {
	n := len(mem) / memlatLine
	perm := make([]uint32, n)
	for i := range perm {
		perm[i] = uint32(i)
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9E3779B97F4A7C15))
	for i := n - 1; i > 0; i-- {
		j := r.IntN(i) // j < i: Sattolo
		perm[i], perm[j] = perm[j], perm[i]
	}
	// perm as a cyclic sequence: line perm[i] is followed by perm[i+1].
	for i := range n {
		binary.LittleEndian.PutUint64(mem[int(perm[i])*memlatLine:], uint64(perm[(i+1)%n]))
	}
}

// memlatChase walks k chains of mem's cycle in lockstep for steps steps,
// the chains starting a k-th of the area apart, and returns the time taken
// and where the first chain ended (so that the loads are used).
func memlatChase(mem []byte, k, steps int) (time.Duration, uint64) {
	n := len(mem) / memlatLine
	var at [16]uint64
	for j := range k {
		at[j] = uint64(j * (n / k))
	}
	start := time.Now()
	for range steps {
		for j := range k {
			at[j] = binary.LittleEndian.Uint64(mem[at[j]*memlatLine:])
		}
	}
	return time.Since(start), at[0]
}
