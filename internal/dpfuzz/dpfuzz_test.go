package dpfuzz

import (
	"bytes"
	"encoding/binary"
	"net/netip"
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

// TestSourceIsAVIPConfigured checks that campaigns meet a SNAT source that is
// also a VIP's address, and send it frames: replies to its ports and
// packets to its services.
func TestSourceIsAVIPConfigured(t *testing.T) {
	configs, frames := 0, 0
	for seed := range uint64(200) {
		s := FromSeed(seed)
		cfg := NewConfig(s)
		both := map[netip.Addr]bool{}
		for _, a := range cfg.NAT.Sources {
			for _, v := range cfg.VIPs {
				if v.Key.Addr == a {
					both[a] = true
				}
			}
		}
		if len(both) == 0 {
			continue
		}
		configs++
		g := NewFrames(s, cfg)
		for range 500 {
			if dst, ok := frameDst(g.Frame()); ok && both[dst] {
				frames++
			}
		}
	}
	if configs < 10 || frames < 100 {
		t.Errorf("200 seeds: %d configurations with a SNAT source that is a VIP address, %d frames to it; want at least 10 and 100", configs, frames)
	}
}

// frameDst is the IP destination of an Ethernet frame without VLAN tag.
func frameDst(f []byte) (netip.Addr, bool) {
	if len(f) < 14 {
		return netip.Addr{}, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		if len(f) >= 34 {
			return netip.AddrFrom4([4]byte(f[30:34])), true
		}
	case 0x86dd:
		if len(f) >= 54 {
			return netip.AddrFrom16([16]byte(f[38:54])), true
		}
	}
	return netip.Addr{}, false
}
