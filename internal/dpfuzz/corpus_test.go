package dpfuzz

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var corpusDir = flag.String("corpus", "", "write FuzzDatapath's seed corpus into this directory (xdp/testdata/fuzz/FuzzDatapath)")

// TestCorpus chooses FuzzDatapath's seed corpus when -corpus is given: from
// 3,000 random inputs of 5,000 bytes (about 60 frames each),
// greedily, the fewest (at most 40) in which every
// verdict counter and event (by the IP version of the frame in and out, and
// its VLAN tag) and every known program bug is met twice, by the model alone.
//
//	go test ./internal/dpfuzz -run TestCorpus -corpus $PWD/xdp/testdata/fuzz/FuzzDatapath
func TestCorpus(t *testing.T) {
	if *corpusDir == "" {
		t.Skip("-corpus not given")
	}
	env := Env{Ingress: 1, TxPort: 3, NoPort: 4}
	r := rand.New(rand.NewPCG(42, 43))
	type input struct {
		data []byte
		keys map[string]bool
	}
	shape := func(b []byte) string {
		l2 := 14
		if len(b) >= 14 && (b[12] == 0x81 || b[12] == 0x88) {
			l2 = 18
		}
		if len(b) <= l2 {
			return "-"
		}
		return fmt.Sprintf("v%d/l2 %d", b[l2]>>4, l2)
	}
	var inputs []input
	for range 3000 {
		data := make([]byte, 5000)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		s := FromBytes(data)
		cfg := NewConfig(s)
		m := cfg.Model(env)
		m.KnownBugs = true
		g := NewFrames(s, cfg)
		keys := map[string]bool{}
		for i := range 64 {
			if s.Exhausted() {
				break
			}
			cfg.Step(m, i)
			ingress := env.Ingress
			if s.Chance(20) {
				ingress = env.TxPort
			}
			f := g.Frame()
			o := m.Run(f, ingress)
			keys[o.Counter] = true
			keys[o.Counter+" "+shape(f)+" "+shape(o.Out)] = true
			for _, e := range o.Events {
				keys[e] = true
			}
			for _, b := range o.Bugs {
				keys["bug "+b] = true
			}
		}
		inputs = append(inputs, input{data, keys})
	}
	covered := map[string]int{}
	var chosen []input
	for len(chosen) < 40 {
		best, gain := -1, 0
		for i, in := range inputs {
			g := 0
			for k := range in.keys {
				if covered[k] < 2 {
					g++
				}
			}
			if g > gain {
				best, gain = i, g
			}
		}
		if best < 0 {
			break
		}
		for k := range inputs[best].keys {
			covered[k]++
		}
		chosen = append(chosen, inputs[best])
		inputs = slices.Delete(inputs, best, best+1)
	}
	old, _ := filepath.Glob(filepath.Join(*corpusDir, "seed*"))
	for _, f := range old {
		os.Remove(f)
	}
	for i, in := range chosen {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n[]byte(\"")
		for _, c := range in.data {
			fmt.Fprintf(&b, "\\x%02x", c)
		}
		b.WriteString("\")\n")
		if err := os.WriteFile(filepath.Join(*corpusDir, fmt.Sprintf("seed%02d", i)), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for k := range covered {
		if !strings.Contains(k, " ") || strings.HasPrefix(k, "bug ") {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	t.Logf("%d inputs meet %d keys; counters, events and bugs: %s", len(chosen), len(covered), strings.Join(names, ", "))
}
