// Package dpfuzz is the differential fuzzing of the datapath: it builds a
// configuration and frames from a stream of bytes (a fuzzer's input or a
// pseudo-random generator), runs every frame through the XDP program with
// BPF_PROG_TEST_RUN and through the frame model (xdp.FrameModel), and
// reports every difference in verdict, output bytes or counter, with the
// frame and the configuration as a reproducer. Output frames are also
// decoded by gopacket (internal/gpcheck). The fuzz target FuzzDatapath
// (xdp/fuzz_test.go) and `bench fuzz` share it.
package dpfuzz

import "math/rand/v2"

// Source is the bytes that decide a configuration and its frames. Once a
// fuzzer's input is used up, it reads zeros (the first choice of every
// decision).
type Source struct {
	data []byte
	rng  *rand.Rand
}

// FromBytes is a source that reads data, then zeros.
func FromBytes(data []byte) *Source { return &Source{data: data} }

// FromSeed is an endless pseudo-random source.
func FromSeed(seed uint64) *Source {
	return &Source{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Exhausted reports whether a byte source has no input left.
func (s *Source) Exhausted() bool { return s.rng == nil && len(s.data) == 0 }

// Byte is the next byte.
func (s *Source) Byte() byte {
	if s.rng != nil {
		return byte(s.rng.Uint32())
	}
	if len(s.data) == 0 {
		return 0
	}
	b := s.data[0]
	s.data = s.data[1:]
	return b
}

// N is a number in [0, n).
func (s *Source) N(n int) int {
	if n <= 1 {
		return 0
	}
	if n <= 256 {
		return int(s.Byte()) % n
	}
	return int(s.U16()) % n
}

// U16 is two bytes.
func (s *Source) U16() uint16 { return uint16(s.Byte())<<8 | uint16(s.Byte()) }

// U32 is four bytes.
func (s *Source) U32() uint32 { return uint32(s.U16())<<16 | uint32(s.U16()) }

// Chance is true with probability about pct/100.
func (s *Source) Chance(pct int) bool { return s.N(100) < pct }

// Pick is one of xs.
func Pick[T any](s *Source, xs ...T) T { return xs[s.N(len(xs))] }

// Bytes is n bytes.
func (s *Source) Bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = s.Byte()
	}
	return b
}
