package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
)

// The chase must visit every cache line of the area before it comes back:
// a shorter cycle would stay in the cache and report its latency instead of
// memory's.
func TestMemlatCycleVisitsEveryLine(t *testing.T) {
	for _, lines := range []int{2, 3, 1000, 1 << 14} {
		mem := make([]byte, lines*memlatLine)
		memlatCycle(mem, 7)
		seen := make([]bool, lines)
		at := uint64(0)
		for step := range lines {
			if seen[at] {
				t.Fatalf("%d lines: line %d visited again at step %d", lines, at, step)
			}
			seen[at] = true
			at = binary.LittleEndian.Uint64(mem[at*memlatLine:])
			if at >= uint64(lines) {
				t.Fatalf("%d lines: next line %d out of the area", lines, at)
			}
		}
		if at != 0 {
			t.Fatalf("%d lines: after %d steps the chase is at line %d, not back at 0", lines, lines, at)
		}
	}
}

// Sattolo's shuffle with the same seed links the lines alike; another seed
// otherwise.
func TestMemlatCycleSeeded(t *testing.T) {
	a, b, c := make([]byte, 4096*memlatLine), make([]byte, 4096*memlatLine), make([]byte, 4096*memlatLine)
	memlatCycle(a, 1)
	memlatCycle(b, 1)
	memlatCycle(c, 2)
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed linked the lines differently")
	}
	if bytes.Equal(a, c) {
		t.Fatal("two seeds linked the lines alike")
	}
}

func TestMemlatReport(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"memlat", "-json", "-size", "4", "-chains", "1,2", "-loads", "10000"}, &out, &errOut); err != nil {
		t.Fatalf("memlat: %v (%s)", err, errOut.String())
	}
	var rs []memlatResult
	if err := json.Unmarshal(out.Bytes(), &rs); err != nil {
		t.Fatalf("memlat -json: %v\n%s", err, out.String())
	}
	if len(rs) != 4 {
		t.Fatalf("memlat: %d figures, want 4 (two page sizes, two chain counts):\n%s", len(rs), out.String())
	}
	for i, r := range rs {
		wantPages, wantChains := "4KiB", 1+i%2
		if i >= 2 {
			wantPages = "huge"
		}
		if !strings.HasPrefix(r.Pages, wantPages) || r.Chains != wantChains || r.NsPerStep <= 0 {
			t.Errorf("figure %d: %+v, want pages %s, %d chains and a positive time", i, r, wantPages, wantChains)
		}
	}
	if err := run(context.Background(), []string{"memlat", "-chains", "0"}, &out, &errOut); err == nil ||
		err.Error() != `memlat: -chains "0": each a number from 1 to 16` {
		t.Errorf("memlat -chains 0: error %v", err)
	}
}
