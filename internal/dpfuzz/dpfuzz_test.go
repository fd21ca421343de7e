package dpfuzz

import (
	"bytes"
	"testing"
)

// TestFramesRepeat checks that a seed makes the same configuration and
// frames every time (a campaign's divergence is replayed by its seed), and
// that the model takes every frame without failing.
func TestFramesRepeat(t *testing.T) {
	env := Env{Ingress: 1, TxPort: 3, NoPort: 4}
	run := func(seed uint64) (string, [][]byte) {
		s := FromSeed(seed)
		cfg := NewConfig(s)
		m := cfg.Model(env)
		g := NewFrames(s, cfg)
		var fs [][]byte
		for i := range 2000 {
			cfg.Step(m, i)
			f := g.Frame()
			if len(f) < 14 {
				t.Fatalf("frame of %d bytes: BPF_PROG_TEST_RUN takes at least an Ethernet header", len(f))
			}
			m.Run(f, env.Ingress)
			fs = append(fs, f)
		}
		return cfg.String(), fs
	}
	for seed := range uint64(20) {
		c1, f1 := run(seed)
		c2, f2 := run(seed)
		if c1 != c2 {
			t.Fatalf("seed %d: two configurations:\n%s\n%s", seed, c1, c2)
		}
		for i := range f1 {
			if !bytes.Equal(f1[i], f2[i]) {
				t.Fatalf("seed %d: frame %d differs", seed, i)
			}
		}
	}
}

// TestFromBytes checks that a fuzzer's input runs out into zeros.
func TestFromBytes(t *testing.T) {
	s := FromBytes([]byte{7, 9})
	if s.Byte() != 7 || s.Exhausted() || s.Byte() != 9 || !s.Exhausted() || s.Byte() != 0 {
		t.Error("FromBytes does not read its bytes, then zeros")
	}
}
