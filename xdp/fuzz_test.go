package xdp_test

// FuzzDatapath is the differential fuzzing of the program against the frame
// model (xdp.FrameModel): an input is a configuration and the frames run
// against it (internal/dpfuzz). Plain `go test` runs the committed corpus
// (testdata/fuzz/FuzzDatapath); `go test -fuzz FuzzDatapath ./xdp/` looks
// for more.

import (
	"errors"
	"testing"

	"github.com/xdplb/xdplb/internal/dpfuzz"
	"github.com/xdplb/xdplb/internal/testnet"
)

// fuzzFrames bounds the frames of one input.
const fuzzFrames = 64

func FuzzDatapath(f *testing.F) {
	testnet.RequirePrivileged(f)
	env, err := dpfuzz.NewEnv()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { env.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		err := env.NS.Do(func() error {
			s := dpfuzz.FromBytes(data)
			cfg := dpfuzz.NewConfig(s)
			w, err := dpfuzz.Open(cfg, env, true)
			if err != nil {
				return err
			}
			defer w.Close()
			w.Exact = true
			frames := dpfuzz.NewFrames(s, cfg)
			for i := 0; i < fuzzFrames && !s.Exhausted(); i++ {
				ingress := env.Ingress
				if s.Chance(20) {
					ingress = env.TxPort
				}
				if err := w.Check(frames.Frame(), ingress); err != nil {
					var d *dpfuzz.Divergence
					if errors.As(err, &d) {
						t.Errorf("frame %d: %v", i, d)
						continue
					}
					return err
				}
			}
			for _, d := range w.CheckCounters() {
				t.Error(d)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
