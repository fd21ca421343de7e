// Command bench runs xdplb's benchmarks and its soak; docs/bench.md has the
// method and the results.
//
//	go run ./bench datapath [-json] [-runs N] [-repeat N] [-case REGEXP] [-monitor] [-ablate STAGES] [-versus OBJECT]
//	go run ./bench fuzz [-packets N] [-per-config N] [-seed N] [-strict]
//	go run ./bench soak [-duration D] [-json] [-long N] [-rate R] [-pause D] [-changes KINDS] [-xdplb PATH] [-q]
//	go run ./bench forward [-json] [-rounds N] [-duration D] [-flows N] [-case REGEXP] [-versus OBJECT] [-q]
//	go run ./bench e2e [-json] [-rounds N] [-duration D] [-workers N] [-modes LIST] [-q]
//	go run ./bench memlat [-json] [-size MiB] [-chains LIST] [-loads N]
//
// datapath measures the XDP program per packet with BPF_PROG_TEST_RUN, case
// by case, next to the frame-restore floor and an empty XDP program measured
// in the same runs, and checks every run's verdict, output and counters. It
// needs root. A missed budget is reported, not an error: the exit status is
// non-zero only when the benchmark could not run or a check failed. With
// -ablate, every run also measures, right beside the case, the program
// without the stages named (xdp.Ablations), and reports what they cost. With
// -versus, every run also measures, right beside the case, the bench wrapper
// of another build (its xdp/bench_bpfel.o), and reports the difference.
//
// fuzz runs a differential fuzzing campaign: configurations and frames made
// from a pseudo-random seed, each frame through the XDP program and through
// the frame model (xdp.FrameModel), comparing verdict, output and counters.
// It prints the packets run, the configurations, the divergences and the
// throughput, and exits non-zero on any divergence. It needs root.
//
// forward measures the forwarding rate on a real transmit path: frames sent
// with BPF_F_TEST_XDP_LIVE_FRAMES (or, where the kernel refuses it, from a
// packet-socket feeder) into the appliance's veth in a namespace, forwarded
// by the attached program (xdplb in DSR L2 and IPIP, a trivial XDP_TX
// hairpin, the hairpin that swaps the MACs, a trivial XDP_REDIRECT) to a
// backend namespace that counts and drops them; Mpps per vCPU of the
// appliance's NAPI thread and frames per wake-up of it. It checks
// sample frames at the backend and that the counts match xdplb's counters.
// With -versus, each xdplb case is also run by another build's forwarding
// program (its xdp/lb_bpfel.o) beside this build's. It needs root and two
// CPUs.
//
// e2e balances one VIP over the same backends three ways in one namespace
// topology: xdplb (DSR), the kernel's nftables DNAT and HAProxy in TCP mode,
// and measures for each the UDP datagrams delivered per second from a
// live-frames generator (not for HAProxy), TCP connections per second from a
// Go load generator, and the appliance's CPU per packet and per connection,
// the appliance pinned to one CPU. It needs root, two CPUs, nft and haproxy.
//
// memlat measures the machine's memory latency as a flow-table lookup meets
// it: dependent loads at random cache lines of a large area (a pointer
// chase), with 4 KiB and with transparent huge pages, one chain and several
// in lockstep (how far misses overlap). It needs no privilege.
//
// soak runs the real daemon (cmd/xdplb, built for the run) in network
// namespaces with long-lived and new TCP connections through four VIPs while
// it changes backends, services, health, restarts the daemon and sends bad
// reloads, and classifies every connection that broke (internal/soak). It
// needs root. The exit status is non-zero when it found a defect.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/xdplb/xdplb/internal/soak"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/xdp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

const usage = `usage: bench datapath [-json] [-runs N] [-repeat N] [-case REGEXP] [-monitor] [-ablate STAGES] [-versus OBJECT]
       bench fuzz [-packets N] [-per-config N] [-seed N] [-strict]
       bench soak [-duration 10m] [-json] [-long 200] [-rate 20] [-pause 4s] [-changes KINDS] [-xdplb PATH] [-q]
       bench forward [-json] [-rounds 5] [-duration 2s] [-flows 4096] [-case REGEXP] [-versus OBJECT] [-q]
       bench e2e [-json] [-rounds 5] [-duration 2s] [-workers 32] [-modes xdplb,nftables,haproxy] [-q]
       bench memlat [-json] [-size 256] [-chains 1,2,4] [-loads 2000000]

datapath  per-packet cost of the XDP program, case by case (needs root)
fuzz      differential fuzzing of the XDP program against its Go model: packets
          run, configurations, divergences (must be 0) and packets/s (needs root)
soak      the real daemon under connections and changes; every broken
          connection classified, exit status 1 on any defect (needs root)
forward   forwarding rate of the attached program on veths, frames sent with
          live frames: xdplb DSR L2 and IPIP beside a trivial XDP_TX hairpin
          (untouched and MACs swapped) and XDP_REDIRECT, Mpps per vCPU;
          -versus runs another build's program beside (needs root and two CPUs)
e2e       xdplb against nftables DNAT and HAProxy on the same VIP and backends:
          UDP packets/s, TCP connections/s, appliance CPU (needs root, two CPUs,
          nft and haproxy)
memlat    memory latency as the flow tables meet it: ns per dependent load at
          random cache lines, 4 KiB and huge pages, 1 or more chains at once
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "fuzz":
			return fuzz(ctx, args[1:], stdout, stderr)
		case "forward":
			return forward(ctx, args[1:], stdout, stderr)
		case "e2e":
			return e2e(ctx, args[1:], stdout, stderr)
		case "memlat":
			return memlat(ctx, args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || (args[0] != "datapath" && args[0] != "soak") {
		fmt.Fprint(stderr, usage)
		return errors.New("no benchmark named")
	}
	if args[0] == "soak" {
		return runSoak(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("datapath", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the results as a JSON array")
	runs := fs.Int("runs", 7, "runs per case (the median is reported; at least 5)")
	repeat := fs.Int("repeat", 1<<20, "packets per run (one BPF_PROG_TEST_RUN call)")
	only := fs.String("case", "", "run only the cases whose name matches this regular expression")
	monitor := fs.Bool("monitor", false, "measure with the monitor flag on, as while `xdplb monitor` runs")
	versus := fs.String("versus", "", "also measure, beside each run, the bench wrapper of another build: its xdp/bench_bpfel.o (e.g. from `git show REV:xdp/bench_bpfel.o`)")
	ablateList := fs.String("ablate", "", "also measure, beside each run, the program without these stages (comma-separated: "+strings.Join(ablationNames(), ", ")+")")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var ablate xdp.Ablation
	for name := range strings.SplitSeq(*ablateList, ",") {
		if name == "" {
			continue
		}
		a, ok := xdp.Ablations[name]
		if !ok {
			return fmt.Errorf("-ablate: no stage %q (stages: %s)", name, strings.Join(ablationNames(), ", "))
		}
		ablate |= a
	}
	if *runs < 5 {
		return fmt.Errorf("-runs %d: at least 5 runs, for a median worth the name", *runs)
	}
	if *repeat < 1000 || *repeat > 1<<30 {
		return fmt.Errorf("-repeat %d: want 1000 to 2^30", *repeat)
	}
	re, err := regexp.Compile(*only)
	if err != nil {
		return fmt.Errorf("-case: %w", err)
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("datapath needs root (it loads XDP programs and runs them with BPF_PROG_TEST_RUN); running as uid %d: try sudo", uid)
	}
	return datapath(ctx, *runs, *repeat, re, *asJSON, xdp.BenchConfig{BuildTable: maglev, Monitor: *monitor, Ablate: ablate, Versus: *versus}, stdout, stderr)
}

func ablationNames() []string {
	names := slices.Collect(maps.Keys(xdp.Ablations))
	slices.Sort(names)
	return names
}

// result is one case in the JSON output. A run is one BPF_PROG_TEST_RUN call
// of repeat packets through the bench wrapper, with runs of the restore alone
// and of an empty XDP program right beside it. ns_per_packet is the median of
// runs, each the program's own cost per packet (wrapper − restore + empty
// program); floor_ns is the median empty XDP program, the least any program
// costs. The wrapper's and the restore's own figures follow.
type result struct {
	Case        string    `json:"case"`
	NsPerPacket float64   `json:"ns_per_packet"`
	FloorNs     float64   `json:"floor_ns"`
	Runs        []float64 `json:"runs"`
	WrapperNs   float64   `json:"wrapper_ns"`
	WrapperRuns []float64 `json:"wrapper_runs"`
	RestoreNs   float64   `json:"restore_ns"`
	RestoreRuns []float64 `json:"restore_runs"`
	OverFloorNs float64   `json:"over_restore_ns"`
	Repeat      int       `json:"repeat"`
	BudgetNs    float64   `json:"budget_ns,omitempty"`
	OverFloor   bool      `json:"budget_over_floor,omitempty"`
	// A case whose budget is relative to another case's cost: that case,
	// run beside it in every run, and the median over the runs of this
	// case's wrapper minus that case's.
	Baseline       string  `json:"baseline,omitempty"`
	OverBaselineNs float64 `json:"over_baseline_ns,omitempty"`
	WithinBudget   bool    `json:"within_budget"`
	// With -ablate: the stages left out, the cost of the ablation build
	// without them (as ns_per_packet), and what they cost: the median over
	// the runs of the ablation build with nothing left out minus the same
	// build without the stages, run beside it.
	// With -versus: the other build's cost (as ns_per_packet) and the
	// median over the runs of this build's wrapper minus the other's, run
	// beside it (negative: this build is faster).
	VersusNs     float64   `json:"versus_ns_per_packet,omitempty"`
	OverVersusNs float64   `json:"over_versus_ns,omitempty"`
	Ablated      string    `json:"ablated,omitempty"`
	AblatedNs    float64   `json:"ablated_ns_per_packet,omitempty"`
	StageNs      float64   `json:"stage_ns,omitempty"`
	StageRuns    []float64 `json:"stage_runs,omitempty"`
}

func ns(d time.Duration) float64 { return float64(d) / float64(time.Nanosecond) }

func datapath(ctx context.Context, runs, repeat int, only *regexp.Regexp, asJSON bool, cfg xdp.BenchConfig, stdout, stderr io.Writer) error {
	ablate := cfg.Ablate
	suite, err := xdp.NewBenchSuite(cfg)
	if err != nil {
		return err
	}
	defer suite.Close()

	var results []result
	var cases []*xdp.BenchCase
	for _, c := range suite.Cases() {
		if !only.MatchString(c.Name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		fmt.Fprintf(stderr, "%-28s ", c.Name)
		if err := c.Prepare(); err != nil {
			fmt.Fprintln(stderr)
			return err
		}
		r, err := c.Measure(runs, repeat)
		if err != nil {
			fmt.Fprintln(stderr)
			return err
		}
		fmt.Fprintf(stderr, "%6.1f ns/packet (empty program %.1f; wrapper %.1f, restore %.1f) in %v\n", ns(r.Cost), ns(r.EmptyMedian), ns(r.Median), ns(r.FloorMedian), time.Since(start).Round(100*time.Millisecond))
		out := result{
			Case: c.Name, NsPerPacket: ns(r.Cost), FloorNs: ns(r.EmptyMedian),
			WrapperNs: ns(r.Median), RestoreNs: ns(r.FloorMedian), OverFloorNs: ns(r.OverFloor),
			Repeat: repeat, BudgetNs: ns(c.Budget), OverFloor: c.OverFloor, WithinBudget: c.Within(r),
		}
		if c.Baseline != nil {
			out.Baseline, out.OverBaselineNs = c.Baseline.Name, ns(r.OverBaseline)
			fmt.Fprintf(stderr, "%-28s %+6.1f ns over %s, run beside it\n", "", out.OverBaselineNs, out.Baseline)
		}
		for _, s := range r.Samples {
			out.Runs = append(out.Runs, ns(s.Cost()))
			out.WrapperRuns = append(out.WrapperRuns, ns(s.Case))
			out.RestoreRuns = append(out.RestoreRuns, ns(s.Floor))
		}
		if cfg.Versus != "" {
			out.VersusNs, out.OverVersusNs = ns(r.VersusCost), ns(r.OverVersus)
			fmt.Fprintf(stderr, "%-28s %6.1f ns/packet in %s: this build %+.1f ns, run beside it\n", "", out.VersusNs, cfg.Versus, out.OverVersusNs)
		}
		if ablate != 0 {
			out.Ablated, out.AblatedNs, out.StageNs = ablate.String(), ns(r.AblatedCost), ns(r.StageCost)
			for _, s := range r.Samples {
				out.StageRuns = append(out.StageRuns, ns(s.StageCost()))
			}
			fmt.Fprintf(stderr, "%-28s %6.1f ns/packet without %s: they cost %.1f ns (runs %v)\n", "", out.AblatedNs, out.Ablated, out.StageNs, out.StageRuns)
		}
		results = append(results, out)
		cases = append(cases, c)
	}
	if len(results) == 0 {
		return fmt.Errorf("no case matches %q", only)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	return printTable(stdout, results, cases, runs, repeat)
}

func printTable(w io.Writer, results []result, cases []*xdp.BenchCase, runs, repeat int) error {
	fmt.Fprintf(w, "%s\nmedians of %d runs of %d packets, ns per packet as the kernel reports it. ns/packet is the program's cost:\n"+
		"the bench wrapper's run minus its frame restore's plus an empty XDP program's (floor), run by run\n\n", machine(), runs, repeat)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tns/packet\truns min-max\tfloor\twrapper\trestore\tbudget\t\t")
	for _, r := range results {
		lo, hi := r.Runs[0], r.Runs[0]
		for _, v := range r.Runs {
			lo, hi = min(lo, v), max(hi, v)
		}
		budget, verdict := "-", "info"
		switch {
		case r.Baseline != "":
			budget = fmt.Sprintf("%s%+.0f (%+.0f)", r.Baseline, r.BudgetNs, r.OverBaselineNs)
		case r.BudgetNs == 0:
		case r.OverFloor:
			budget = fmt.Sprintf("floor+%.0f", r.BudgetNs)
		default:
			budget = fmt.Sprintf("%.0f", r.BudgetNs)
		}
		if r.BudgetNs != 0 || r.Baseline != "" {
			verdict = "pass"
			if !r.WithinBudget {
				verdict = "MISS"
			}
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.0f-%.0f\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", r.Case, r.NsPerPacket, lo, hi, r.FloorNs, r.WrapperNs, r.RestoreNs, budget, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, c := range cases {
		fmt.Fprintf(w, "%s: %s.\n", c.Name, c.About)
	}
	if len(cases) > 0 {
		fmt.Fprintln(w, "\nA missed budget is reported, not an error (docs/bench.md has what was tried).")
	}
	return nil
}

// maglevSeed seeds the benchmark's tables; any seed costs the same.
var maglevSeed = [16]byte{'x', 'd', 'p', 'l', 'b', '-', 'b', 'e', 'n', 'c', 'h'}

func maglev(m int, backends []xdp.BenchBackend) ([]uint32, error) {
	in := make([]lb.MaglevBackend, len(backends))
	for i, b := range backends {
		in[i] = lb.MaglevBackend{ID: b.ID, Addr: netip.AddrPortFrom(b.Addr, 80), Weight: 1}
	}
	return lb.BuildMaglev(maglevSeed, m, in)
}

// machine describes the CPU and kernel in one line.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d CPUs, %s", model, runtime.NumCPU(), kernel)
}

// runSoak runs `bench soak`.
func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: bench soak [flags]\n\n"+
			"Runs xdplb run in network namespaces (198.18.0.0/15, 2001:db8::/32) with long-lived\n"+
			"and new TCP connections through four VIPs (IPv4 and IPv6, DSR L2 and IPIP) while it\n"+
			"adds, removes, reweights and drains backends, adds and removes services, flaps\n"+
			"backends' health, restarts the daemon and sends bad reloads. Every connection that\n"+
			"broke is classified: on a backend removed or down before the break (and reset\n"+
			"within 8 s) it is expected, anything else is a defect. Progress goes to stderr, the\n"+
			"summary to stdout; the exit status is 1 when there are defects. Needs root.\n\nflags:\n")
		fs.PrintDefaults()
	}
	duration := fs.Duration("duration", 10*time.Minute, "how long to soak, after the set-up")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	long := fs.Int("long", 200, "long-lived connections, spread over the four VIPs")
	rate := fs.Float64("rate", 20, "new short connections a second")
	pause := fs.Duration("pause", 4*time.Second, "pause between two changes (more than the 1 s echo interval)")
	bin := fs.String("xdplb", "", "a built xdplb binary (default: build ./cmd/xdplb for the run)")
	quiet := fs.Bool("q", false, "no progress on stderr")
	kinds := fs.String("changes", strings.Join(soak.ChangeKinds, ","), "the kinds of change to make, comma-separated")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("soak: unexpected arguments %q", fs.Args())
	}
	opts := soak.Options{Duration: *duration, Long: *long, ShortRate: *rate, Pause: *pause, Binary: *bin, Progress: stderr,
		Kinds: strings.Split(*kinds, ",")}
	if *quiet {
		opts.Progress = nil
	}
	r, err := soak.Run(ctx, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.Print(stdout)
	}
	if n := len(r.Defects); n > 0 {
		return fmt.Errorf("soak: %d defects", n)
	}
	return nil
}
