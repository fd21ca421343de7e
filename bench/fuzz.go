package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/xdplb/xdplb/internal/dpfuzz"
)

// fuzz runs `bench fuzz`: a differential fuzzing campaign (internal/dpfuzz).
func fuzz(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
	fs.SetOutput(stderr)
	packets := fs.Int("packets", 1_000_000, "frames to run in all")
	perConfig := fs.Int("per-config", 20_000, "frames run against each configuration (a fresh datapath) before the next")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the first configuration (configuration i uses seed+i)")
	strict := fs.Bool("strict", false, "count frames that meet a known program bug as divergences too")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the campaign to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *packets < 1 || *perConfig < 1 {
		return fmt.Errorf("-packets %d, -per-config %d: want at least 1", *packets, *perConfig)
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("fuzz needs root (it loads XDP programs and runs them with BPF_PROG_TEST_RUN); running as uid %d: try sudo", uid)
	}
	env, err := dpfuzz.NewEnv()
	if err != nil {
		return err
	}
	defer env.Close()
	fmt.Fprintf(stdout, "%s\nseed %d, %d frames per configuration\n", machine(), *seed, *perConfig)
	last := time.Now()
	st, err := dpfuzz.Campaign(ctx, env, dpfuzz.CampaignOptions{
		Packets: *packets, PerConfig: *perConfig, Seed: *seed, Strict: *strict, Report: stderr,
		Progress: func(s dpfuzz.CampaignStats) {
			if time.Since(last) >= 10*time.Second {
				last = time.Now()
				fmt.Fprintf(stderr, "%d packets, %d configurations, %d divergences, %.0f packets/s\n",
					s.Packets, s.Configs, s.Divergences, s.PacketsPerSecond())
			}
		},
	})
	fmt.Fprintf(stdout, "packets        %d\nconfigurations %d\ndivergences    %d\nthroughput     %.0f packets/s (%v)\n",
		st.Packets, st.Configs, st.Divergences, st.PacketsPerSecond(), st.Elapsed.Round(time.Second))
	var names []string
	for n, v := range st.Counters {
		if v > 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	fmt.Fprintf(stdout, "counters moved (what the frames exercised):\n")
	for _, n := range names {
		fmt.Fprintf(stdout, "  %-36s %d\n", n, st.Counters[n])
	}
	var bugs []string
	for b := range st.KnownBugs {
		bugs = append(bugs, b)
	}
	slices.Sort(bugs)
	for _, b := range bugs {
		fmt.Fprintf(stdout, "known program bug %s: met by %d frames (predicted; -strict counts them)\n", b, st.KnownBugs[b])
	}
	if err != nil {
		return err
	}
	if st.Divergences > 0 {
		return fmt.Errorf("%d divergences between the program and the model", st.Divergences)
	}
	return nil
}
