package xdp

// Benchmark support. BPF_PROG_TEST_RUN with repeat runs a program again on
// the frame its previous run rewrote, so the programs xdplb_bench and
// xdplb_bench_floor first restore the original frame from the per-CPU map
// bench_frames (optionally adding seq % vary_count to one big-endian 32-bit
// field, so that a run spreads over many flows). They live in an object of
// their own (bpf/bench.bpf.c), which the daemon never loads: a benchmark
// loads it with the maps of its Datapath, so the wrapper runs the
// program's code (lb_main of bpf/lb.h) on the datapath's state. This file
// drives them, and holds the datapath benchmark suite that `go run ./bench
// datapath` and BenchmarkDatapath share, so that both measure the same thing.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// XDP verdicts, as BenchRun returns them.
const (
	XDPAborted  uint32 = 0
	XDPDrop     uint32 = 1
	XDPPass     uint32 = 2
	XDPTx       uint32 = 3
	XDPRedirect uint32 = 4
)

// BenchMaxFrame is the longest frame the bench wrapper restores
// (BENCH_MAX_FRAME in bpf/consts.h).
const BenchMaxFrame = 256

// BenchFrame is a frame run through the bench wrapper. Every run of the
// program sees Data as it is here, except that when VaryCount is above 0 the
// big-endian 32-bit field at VaryOffset has seq % VaryCount added to it, where
// seq counts the runs of one BPF_PROG_TEST_RUN call from 0: a call with repeat
// r processes the flows of values 0 .. r-1 (mod VaryCount) in that order.
// Checksums are not updated (the program reads none).
type BenchFrame struct {
	Data       []byte
	VaryOffset uint32
	VaryCount  uint32
}

func (f BenchFrame) check() error {
	if len(f.Data) < 14 || len(f.Data) > BenchMaxFrame {
		return fmt.Errorf("bench frame of %d bytes: want 14 to %d", len(f.Data), BenchMaxFrame)
	}
	if f.VaryCount > 0 && int(f.VaryOffset)+4 > len(f.Data) {
		return fmt.Errorf("bench frame of %d bytes: varied field at %d does not fit", len(f.Data), f.VaryOffset)
	}
	return nil
}

// Varied returns the frame as the run of sequence number seq sees it.
func (f BenchFrame) Varied(seq uint32) []byte {
	b := slices.Clone(f.Data)
	if f.VaryCount > 0 {
		v := binary.BigEndian.Uint32(b[f.VaryOffset:])
		binary.BigEndian.PutUint32(b[f.VaryOffset:], v+seq%f.VaryCount)
	}
	return b
}

// BenchRun runs the load-balancer program on f, repeat times in one
// BPF_PROG_TEST_RUN call, each run on the original frame (see BenchFrame).
// It returns the kernel-reported duration per run, which includes the cost of
// restoring the frame (BenchFloor measures that alone), the verdict and the
// output of the last run. The calling thread is pinned to its CPU for the
// call, so that every run uses the same per-CPU copy of the frame; when f
// varies, BenchRun checks afterwards that the wrapper ran exactly repeat
// times.
func (d *Datapath) BenchRun(f BenchFrame, repeat int) (perPacket time.Duration, verdict uint32, out []byte, err error) {
	return d.BenchRunAblated(f, repeat, 0)
}

// Ablation is a set of stages of the program that a bench wrapper leaves out
// (enum xdplb_ablation of xdp/bpf/lb.h), to measure what they cost.
type Ablation uint32

// The stages a benchmark can leave out.
const (
	AblateMonitor = Ablation(benchXdplbAblationABLATE_MONITOR)  // the monitor's test of each verdict
	AblateStats   = Ablation(benchXdplbAblationABLATE_STATS)    // the global verdict and event counters
	AblateLBStats = Ablation(benchXdplbAblationABLATE_LB_STATS) // the per-VIP and per-backend counters
	AblateIndex   = Ablation(benchXdplbAblationABLATE_INDEX)    // the vip_index cache (services from the vips hash)
	AblateHash    = Ablation(benchXdplbAblationABLATE_HASH)     // the flow hash (a constant: the backend changes)
	AblateTable   = Ablation(benchXdplbAblationABLATE_TABLE)    // the Maglev slot's read (slot 0: the backend changes)
	AblateSNAT    = Ablation(benchXdplbAblationABLATE_SNAT)     // the SNAT-source check (services at a SNAT source, packets of no service)
	// A new NAT flow's steps (snat_new_flow), with the others run alike.
	AblateNATPeek   = Ablation(benchXdplbAblationABLATE_NAT_PEEK)   // a SYN's early read of both its entries' buckets
	AblateNATLookup = Ablation(benchXdplbAblationABLATE_NAT_LOOKUP) // the forward entry's lookup (always a miss)
	AblateNATInsert = Ablation(benchXdplbAblationABLATE_NAT_INSERT) // a new flow's two inserts (nothing written)
)

// Ablations names the stages, for flags and reports.
var Ablations = map[string]Ablation{
	"monitor": AblateMonitor, "stats": AblateStats, "lbstats": AblateLBStats, "index": AblateIndex, "hash": AblateHash,
	"table": AblateTable, "snat": AblateSNAT, "natpeek": AblateNATPeek, "natlookup": AblateNATLookup, "natinsert": AblateNATInsert,
}

// ablationBuild, with stages or alone, asks benchObjects for the ablation
// build (benchablate): bench_ablate's tests are in its code, so a stage's
// cost is the build with the stage left out beside the same build without.
const ablationBuild Ablation = 1 << 31

// String lists the stages left out, comma-separated.
func (a Ablation) String() string {
	var names []string
	for name, s := range Ablations {
		if a&s != 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// BenchRunAblated is BenchRun with the stages of ablate left out of the
// program (none: BenchRun). The ablation build that leaves them out carries
// a test of each stage that the program does not: compare its runs with
// BenchRunAblationBuild's, not with BenchRun's.
func (d *Datapath) BenchRunAblated(f BenchFrame, repeat int, ablate Ablation) (perPacket time.Duration, verdict uint32, out []byte, err error) {
	perPacket, verdict, out, _, err = d.benchRunAblated(f, repeat, ablate)
	return perPacket, verdict, out, err
}

// BenchRunAblationBuild runs the ablation build with nothing left out: the
// reference for BenchRunAblated.
func (d *Datapath) BenchRunAblationBuild(f BenchFrame, repeat int) (perPacket time.Duration, verdict uint32, out []byte, err error) {
	return d.BenchRunAblated(f, repeat, ablationBuild)
}

// BenchRunFile is BenchRun with the bench wrapper of another build: the
// bench object at path (xdp/bench_bpfel.o of another commit, say), loaded on
// the datapath's maps once and kept until Close. Its maps must be the same
// as this build's.
func (d *Datapath) BenchRunFile(path string, f BenchFrame, repeat int) (perPacket time.Duration, verdict uint32, out []byte, err error) {
	perPacket, verdict, out, _, err = d.benchRunFile(path, f, repeat)
	return perPacket, verdict, out, err
}

func (d *Datapath) benchRunFile(path string, f BenchFrame, repeat int) (time.Duration, uint32, []byte, bool, error) {
	b, err := d.benchFile(path)
	if err != nil {
		return 0, 0, nil, false, err
	}
	return d.benchRun(b.BenchFrames, b.XdplbBench, f, repeat)
}

// loadOther loads the objects of another build's object file at path into
// to (as LoadAndAssign), configured as this datapath and on the maps of it
// that the object has: an earlier build lacks the maps added since, which
// it does not use. An object without the datapath's counters and services
// is of another datapath. d.mu is held.
func (d *Datapath) loadOther(path string, to any) error {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return err
	}
	for _, name := range []string{lbMapStats, lbMapVips, lbMapBackends} {
		if _, ok := spec.Maps[name]; !ok {
			return fmt.Errorf("it has no map %s: another datapath", name)
		}
	}
	if err := d.opts.configure(spec); err != nil {
		return err
	}
	maps := d.maps()
	for name := range maps {
		if _, ok := spec.Maps[name]; !ok {
			delete(maps, name)
		}
	}
	return spec.LoadAndAssign(to, &ebpf.CollectionOptions{MapReplacements: maps})
}

// BenchAttachFile runs another build's forwarding program (the xdplb
// program of its lb object, xdp/lb_bpfel.o) on iface in place of this
// build's, on this datapath's maps, until the function it returns puts this
// build's program back. iface must be attached (Attach); the swap updates
// its link, so no frame goes without a program. `bench forward -versus`
// measures two builds on the same transmit path with it.
func (d *Datapath) BenchAttachFile(iface, path string) (restore func() error, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.links[iface]
	if !ok {
		return nil, fmt.Errorf("running %s on %q: %w", path, iface, ErrNotFound)
	}
	prog := d.benchProgs[path]
	if prog == nil {
		var o struct {
			Xdplb *ebpf.Program `ebpf:"xdplb"`
		}
		if err := d.loadOther(path, &o); err != nil {
			return nil, fmt.Errorf("loading the forwarding program of %s: %w", path, err)
		}
		if d.benchProgs == nil {
			d.benchProgs = make(map[string]*ebpf.Program)
		}
		prog = o.Xdplb
		d.benchProgs[path] = prog
	}
	if err := a.link.Update(prog); err != nil {
		return nil, fmt.Errorf("running %s on %q: %w", path, iface, err)
	}
	return func() error {
		d.mu.Lock()
		defer d.mu.Unlock()
		if err := a.link.Update(d.objs.Xdplb); err != nil {
			return fmt.Errorf("putting this build's program back on %q: %w", iface, err)
		}
		return nil
	}, nil
}

// benchFileObjects are what BenchRunFile uses of another build's bench
// object, whose variables may differ from this build's.
type benchFileObjects struct {
	XdplbBench  *ebpf.Program `ebpf:"xdplb_bench"`
	BenchFrames *ebpf.Map     `ebpf:"bench_frames"`
}

func (o *benchFileObjects) Close() error {
	return errors.Join(o.XdplbBench.Close(), o.BenchFrames.Close())
}

func (d *Datapath) benchFile(path string) (*benchFileObjects, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("loading the bench wrappers: datapath closed")
	}
	if b := d.benchFiles[path]; b != nil {
		return b, nil
	}
	var b benchFileObjects
	if err := d.loadOther(path, &b); err != nil {
		return nil, fmt.Errorf("loading the bench wrappers of %s: %w", path, err)
	}
	if d.benchFiles == nil {
		d.benchFiles = make(map[string]*benchFileObjects)
	}
	d.benchFiles[path] = &b
	return &b, nil
}

// benchRunAblated is BenchRunAblated that also says whether a call was
// interrupted (EINTR) and made again: then the counters moved by the packets
// of the interrupted call too.
func (d *Datapath) benchRunAblated(f BenchFrame, repeat int, ablate Ablation) (time.Duration, uint32, []byte, bool, error) {
	b, err := d.benchObjects(ablate)
	if err != nil {
		return 0, 0, nil, false, err
	}
	return d.benchRun(b.BenchFrames, b.XdplbBench, f, repeat)
}

// BenchFloor runs only the frame restore of the bench wrapper, as BenchRun
// runs the whole program: the difference between the two is the program's
// own cost. grow is how much the program changes the frame's length (IPIP
// encapsulation: 20 or 40 bytes; 0 for most cases): the restore after such
// a program then moves the frame's head back, one bpf_xdp_adjust_head a
// run that is the benchmark's, and the floor makes it too
// (xdplb_bench_floor_grow). Its verdict is XDP_PASS.
func (d *Datapath) BenchFloor(f BenchFrame, grow int, repeat int) (time.Duration, error) {
	b, err := d.benchObjects(0)
	if err != nil {
		return 0, err
	}
	prog := b.XdplbBenchFloor
	if grow != 0 {
		if grow < -BenchMaxFrame || grow > BenchMaxFrame {
			return 0, fmt.Errorf("bench floor: growth of %d bytes out of range", grow)
		}
		if err := b.BenchFloorGrow.Set(int32(grow)); err != nil {
			return 0, fmt.Errorf("bench floor: setting bench_floor_grow: %w", err)
		}
		prog = b.XdplbBenchFloorGrow
	}
	dur, verdict, _, _, err := d.benchRun(b.BenchFrames, prog, f, repeat)
	if err != nil {
		return 0, err
	}
	if verdict != XDPPass {
		return 0, fmt.Errorf("bench floor: verdict %d, want XDP_PASS (%d): the frame was not restored", verdict, XDPPass)
	}
	return dur, nil
}

// benchObjects loads the bench wrappers on the datapath's maps, once per
// ablation; Close releases them.
func (d *Datapath) benchObjects(ablate Ablation) (*benchObjects, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("loading the bench wrappers: datapath closed")
	}
	if b := d.bench[ablate]; b != nil {
		return b, nil
	}
	load := loadBench
	if ablate != 0 {
		load = loadBenchablate
	}
	spec, err := load()
	if err != nil {
		return nil, err
	}
	if err := d.opts.configure(spec); err != nil {
		return nil, fmt.Errorf("loading the bench wrappers: %w", err)
	}
	if ablate != 0 {
		if err := spec.Variables[benchablateVarBenchAblate].Set(uint32(ablate &^ ablationBuild)); err != nil {
			return nil, fmt.Errorf("loading the bench wrappers: setting bench_ablate: %w", err)
		}
	}
	var b benchObjects
	if err := spec.LoadAndAssign(&b, &ebpf.CollectionOptions{MapReplacements: d.maps()}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the bench wrappers: %+v", ve)
		}
		return nil, fmt.Errorf("loading the bench wrappers: %w", err)
	}
	if d.bench == nil {
		d.bench = make(map[Ablation]*benchObjects)
	}
	d.bench[ablate] = &b
	return &b, nil
}

func (d *Datapath) benchRun(frames *ebpf.Map, prog *ebpf.Program, f BenchFrame, repeat int) (_ time.Duration, _ uint32, _ []byte, interrupted bool, _ error) {
	if err := f.check(); err != nil {
		return 0, 0, nil, false, err
	}
	if repeat < 1 || repeat > 1<<31 {
		return 0, 0, nil, false, fmt.Errorf("repeat %d out of range", repeat)
	}
	cpu, unpin, err := pinToCurrentCPU()
	if err != nil {
		return 0, 0, nil, false, err
	}
	defer unpin()
	var v benchBenchFrame
	v.Len = uint32(len(f.Data))
	v.VaryOffset, v.VaryCount = f.VaryOffset, f.VaryCount
	copy(v.Data[:], f.Data)
	all := make([]benchBenchFrame, ebpf.MustPossibleCPU())
	for i := range all {
		all[i] = v
	}
	var (
		dur     time.Duration
		verdict uint32
		out     []byte
	)
	for attempt := 0; ; attempt++ {
		// Every attempt starts from seq 0 on every CPU.
		if err := frames.Put(uint32(0), all); err != nil {
			return 0, 0, nil, false, fmt.Errorf("writing the bench frame: %w", err)
		}
		dur, verdict, out, err = testRun(prog, f.Data, repeat)
		if errors.Is(err, unix.EINTR) && attempt < 5 {
			interrupted = true
			continue
		}
		if err != nil {
			return 0, 0, nil, false, err
		}
		break
	}
	if f.VaryCount > 0 {
		var got []benchBenchFrame
		if err := frames.Lookup(uint32(0), &got); err != nil {
			return 0, 0, nil, false, fmt.Errorf("reading the bench frame: %w", err)
		}
		if cpu >= len(got) || got[cpu].Seq != uint32(repeat) {
			return 0, 0, nil, false, fmt.Errorf("bench wrapper on CPU %d ran %d times, want %d", cpu, got[cpu].Seq, repeat)
		}
	}
	return dur, verdict, out, interrupted, nil
}

// NewEmptyXDP loads an XDP program that returns XDP_PASS and does nothing
// else (mov r0, 2; exit): the reference for the cost of running any XDP
// program through BPF_PROG_TEST_RUN.
func NewEmptyXDP() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "xdplb_empty",
		Type:         ebpf.XDP,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(XDPPass)), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("loading the empty XDP program: %w", err)
	}
	return p, nil
}

// BenchProgram runs any XDP program on data repeat times in one
// BPF_PROG_TEST_RUN call, with the thread pinned to its CPU, and returns the
// kernel-reported duration per run, the verdict and the output of the last
// run. Nothing restores the frame between runs.
func BenchProgram(p *ebpf.Program, data []byte, repeat int) (time.Duration, uint32, []byte, error) {
	if repeat < 1 || repeat > 1<<31 {
		return 0, 0, nil, fmt.Errorf("repeat %d out of range", repeat)
	}
	_, unpin, err := pinToCurrentCPU()
	if err != nil {
		return 0, 0, nil, err
	}
	defer unpin()
	for attempt := 0; ; attempt++ {
		dur, verdict, out, err := testRun(p, data, repeat)
		if errors.Is(err, unix.EINTR) && attempt < 5 {
			continue
		}
		return dur, verdict, out, err
	}
}

// progTestRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr
// (include/uapi/linux/bpf.h). cilium/ebpf's Program.Run does not return the
// duration and Program.Benchmark not the output; a benchmark needs both of
// the same call.
type progTestRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// testRun is one BPF_PROG_TEST_RUN call. The kernel reports the mean
// duration of the runs, in whole nanoseconds.
func testRun(p *ebpf.Program, data []byte, repeat int) (time.Duration, uint32, []byte, error) {
	out := make([]byte, len(data)+512)
	attr := progTestRunAttr{
		progFD:      uint32(p.FD()),
		dataSizeIn:  uint32(len(data)),
		dataSizeOut: uint32(len(out)),
		dataIn:      uint64(uintptr(unsafe.Pointer(&data[0]))),
		dataOut:     uint64(uintptr(unsafe.Pointer(&out[0]))),
		repeat:      uint32(repeat),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(data)
	runtime.KeepAlive(out)
	if errno != 0 {
		return 0, 0, nil, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
	}
	if int(attr.dataSizeOut) > len(out) {
		return 0, 0, nil, fmt.Errorf("BPF_PROG_TEST_RUN: output of %d bytes", attr.dataSizeOut)
	}
	return time.Duration(attr.duration), attr.retval, out[:attr.dataSizeOut], nil
}

// pinToCurrentCPU locks the goroutine to its thread and the thread to the
// CPU it is on, until unpin is called. The kernel may reschedule a long
// BPF_PROG_TEST_RUN call (it leaves and re-enters the run loop when asked
// to), and a migration would switch to another CPU's copy of the frame.
func pinToCurrentCPU() (cpu int, unpin func(), err error) {
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return 0, nil, fmt.Errorf("reading CPU affinity: %w", err)
	}
	var c, node uint32
	if _, _, errno := unix.Syscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&node)), 0); errno != 0 {
		runtime.UnlockOSThread()
		return 0, nil, fmt.Errorf("getcpu: %w", errno)
	}
	var set unix.CPUSet
	set.Set(int(c))
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return 0, nil, fmt.Errorf("pinning to CPU %d: %w", c, err)
	}
	return int(c), func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}, nil
}

// The benchmark suite.

// BenchBackend is a backend as BenchConfig.BuildTable sees it.
type BenchBackend struct {
	ID   uint32
	Addr netip.Addr
}

// BenchConfig shapes the configuration the datapath benchmark runs against.
// Zero values take the defaults.
type BenchConfig struct {
	// VIPs is the number of IPv4 services, each with its own table (default
	// 100, at least 40: the cases use VIPs 0-15, 20, 30, 31, 35 and 39).
	VIPs int
	// TableSize is the Maglev table size M (default 16381).
	TableSize int
	// MinBackends and MaxBackends bound the backends of a VIP (default 10
	// and 100); VIP i has MinBackends + (37*i) % (MaxBackends-MinBackends+1).
	MinBackends, MaxBackends int
	// BuildTable fills a table of size m for the backends (weight 1 each),
	// e.g. with lb.BuildMaglev. Nil deals the slots out round robin and
	// shuffles them, which costs the datapath the same.
	BuildTable func(m int, backends []BenchBackend) ([]uint32, error)
	// Monitor turns the monitor flag on in the datapaths, as while
	// `xdplb monitor` runs (nobody reads the ring here: an event finds it
	// full after a while and is lost, as with a listener too slow).
	Monitor bool
	// Ablate, when not 0, measures in every sample, right beside the case,
	// the program without these stages (BenchSample.Ablated).
	Ablate Ablation
	// Versus, when set, is the bench object of another build
	// (BenchRunFile), measured in every sample right beside the case
	// (BenchSample.Versus).
	Versus string
}

func (c *BenchConfig) setDefaults() {
	if c.VIPs == 0 {
		c.VIPs = 100
	}
	if c.TableSize == 0 {
		c.TableSize = 16381
	}
	if c.MinBackends == 0 {
		c.MinBackends = 10
	}
	if c.MaxBackends == 0 {
		c.MaxBackends = 100
	}
	if c.BuildTable == nil {
		c.BuildTable = shuffledTable
	}
}

func shuffledTable(m int, backends []BenchBackend) ([]uint32, error) {
	if len(backends) == 0 {
		return nil, errors.New("no backends")
	}
	t := make([]uint32, m)
	for i := range t {
		t[i] = backends[i%len(backends)].ID
	}
	r := rand.New(rand.NewPCG(uint64(m), uint64(backends[0].ID)))
	r.Shuffle(len(t), func(i, j int) { t[i], t[j] = t[j], t[i] })
	return t, nil
}

// Sizes of the benchmark's datapaths and flow sets.
const (
	benchMaxFlows = 1 << 20 // Options.MaxFlows: the default
	// benchFullMaxFlows sizes the full datapath's flow state: the 1M cold
	// flows are not random keys (source ports of 16 VIPs), and a table sized
	// for 2^20 (2^21 entries) leaves a few of them without room in their
	// window; sized for 2^21, every one is pinned, and fillers fill the rest.
	benchFullMaxFlows = 2 * benchMaxFlows
	benchColdFlows    = 1 << 20 // established_cold_1m: MaxFlows
	benchColdVIPs     = 16      // ... spread over VIPs 0-15 (65536 source ports each)
	benchRemapFlows   = 10000   // transition_remap, transition_mixed
	benchFloodSrcs    = 1 << 17 // new_flow_flood: every source of 198.18.0.0/15
	benchRedeployIDs  = 2000    // ids of the backends that replace a VIP's in a redeploy
)

// Addresses of the benchmark (198.18.0.0/15 only). VIP i is 198.18.1.i:80;
// backend id n is 198.18.128.0 + n.
var (
	benchVIPBase     = netip.MustParseAddr("198.18.1.0")
	benchVIP6        = netip.MustParseAddr("2001:db8:1::20")
	benchClient6     = netip.MustParseAddr("2001:db8:ff::1")
	benchNonVIP      = netip.MustParseAddr("198.18.2.1")
	benchBackendBase = netip.MustParseAddr("198.18.128.0")
	benchClient      = netip.MustParseAddr("198.19.1.1")
	benchColdClient  = netip.MustParseAddr("198.19.0.1")
	benchRemapBase   = netip.MustParseAddr("198.19.64.0")
	benchFloodBase   = netip.MustParseAddr("198.18.0.0")
	benchEncapSrc    = netip.MustParsePrefix("198.18.255.0/24")
	benchLBMAC       = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	benchClientMAC   = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

// The roles of the VIPs; all are TCP port 80 and DSR L2 unless said.
const (
	benchVIPEstablished = 20 // established_l2, new_flow_syn
	benchVIPIPIP        = 39 // established_ipip: DSR IPIP
	benchVIPRemap       = 30 // transition_remap: all its backends replaced
	benchVIPMixed       = 31 // transition_mixed: one backend drained
	benchVIPFlood       = 35 // new_flow_flood: all its backends replaced, flow state full
	benchPort           = 80
	benchUDPPort        = 53
	benchSrcPort        = 40000
	benchFillPort       = 50000 // fullDP's filler pins: ports 50000-50063
	benchLBIfindex      = 1     // BPF_PROG_TEST_RUN's ingress interface (lo): XDP_TX
)

type benchVIP struct {
	key      VIPKey
	mode     Mode
	seed     uint32
	backends []BenchBackend
	table    []uint32
}

// BenchSuite is the datapath benchmark: a realistic configuration (100 IPv4
// VIPs with Maglev tables of 16381 slots over 10 to 100 backends) loaded into
// datapaths in the states the cases need, and the cases themselves. Each
// case checks the verdict, the output and the counters of every run it
// measures. Datapaths are built when a case first needs them.
type BenchSuite struct {
	cfg  BenchConfig
	vips []benchVIP
	// The VIPs after cfg.VIPs: an IPv6 DSR L2 and an IPv6 DSR IPIP one (to
	// IPv4 backends: 6in4) on port 80, and UDP port 53 of VIP
	// benchVIPEstablished's address; indices into vips.
	vip6L2, vip6IPIP, vipUDP int
	backends                 map[uint32]Backend
	models                   map[bool]*ModelState // by full: what the checks expect of steady and full
	steady                   *Datapath            // no pins; VIPs remap and mixed in transition
	full                     *Datapath            // flow state full: 1M pinned cold flows, VIP flood in transition
	empty                    *ebpf.Program
	cases                    []*BenchCase
	nat, natFlood            *Datapath      // the SNAT cases' (bench_nat.go)
	natFloodFlow             netip.AddrPort // a flow of natFlood's, which must go on during the flood
}

// NewBenchSuite computes the configuration (tables included) and the cases.
// It loads nothing yet.
func NewBenchSuite(cfg BenchConfig) (*BenchSuite, error) {
	cfg.setDefaults()
	if cfg.VIPs < 40 || cfg.VIPs > 250 { // and 3 more: IPv6 and UDP, within the datapath's 256
		return nil, fmt.Errorf("bench: %d VIPs, want 40 to 250", cfg.VIPs)
	}
	if cfg.MinBackends < 2 || cfg.MaxBackends < cfg.MinBackends || cfg.MaxBackends > 1000 {
		return nil, fmt.Errorf("bench: %d to %d backends per VIP, want 2 to 1000", cfg.MinBackends, cfg.MaxBackends)
	}
	s := &BenchSuite{cfg: cfg, backends: map[uint32]Backend{}, models: map[bool]*ModelState{}}
	for i := range cfg.VIPs {
		v := benchVIP{
			key:  VIPKey{Addr: benchAddr(benchVIPBase, uint32(i)), Port: benchPort, Proto: TCP},
			mode: ModeDSRL2,
			seed: uint32(i+1) * 0x9E3779B1,
		}
		if i == benchVIPIPIP {
			v.mode = ModeDSRIPIP
		}
		n := cfg.MinBackends + (37*i)%(cfg.MaxBackends-cfg.MinBackends+1)
		for j := range n {
			v.backends = append(v.backends, s.backend(uint32(1+(i*10+j)%1000)))
		}
		var err error
		if v.table, err = s.buildTable(v.backends); err != nil {
			return nil, err
		}
		s.vips = append(s.vips, v)
	}
	// The IPv6 and UDP VIPs have the backends of VIP benchVIPEstablished
	// (and its table, for UDP; their own seeds).
	est := s.vips[benchVIPEstablished]
	for i, v := range []benchVIP{
		{key: VIPKey{Addr: benchVIP6, Port: benchPort, Proto: TCP}, mode: ModeDSRL2},
		{key: VIPKey{Addr: benchVIP6.Next(), Port: benchPort, Proto: TCP}, mode: ModeDSRIPIP},
		{key: VIPKey{Addr: est.key.Addr, Port: benchUDPPort, Proto: UDP}, mode: ModeDSRL2},
	} {
		v.seed, v.backends = uint32(cfg.VIPs+i+1)*0x9E3779B1, est.backends
		var err error
		if v.table, err = s.buildTable(v.backends); err != nil {
			return nil, err
		}
		s.vips = append(s.vips, v)
	}
	s.vip6L2, s.vip6IPIP, s.vipUDP = cfg.VIPs, cfg.VIPs+1, cfg.VIPs+2
	s.redeploy(benchVIPRemap) // defines their backends before any datapath is configured
	s.redeploy(benchVIPFlood)
	s.cases = s.newCases()
	return s, nil
}

func benchAddr(base netip.Addr, off uint32) netip.Addr {
	b := base.As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+off)
	return netip.AddrFrom4(b)
}

// backend defines backend id (once) and returns it for a table.
func (s *BenchSuite) backend(id uint32) BenchBackend {
	a := benchAddr(benchBackendBase, id)
	if _, ok := s.backends[id]; !ok {
		s.backends[id] = Backend{
			Addr: a, IfIndex: benchLBIfindex, MTU: 1500, Up: true,
			NextHopMAC: net.HardwareAddr{0x02, 0xbe, 0, 0, byte(id >> 8), byte(id)},
			SrcMAC:     benchLBMAC,
		}
	}
	return BenchBackend{ID: id, Addr: a}
}

func (s *BenchSuite) buildTable(bs []BenchBackend) ([]uint32, error) {
	t, err := s.cfg.BuildTable(s.cfg.TableSize, bs)
	if err != nil {
		return nil, fmt.Errorf("bench: building a table: %w", err)
	}
	if len(t) != s.cfg.TableSize {
		return nil, fmt.Errorf("bench: table builder returned %d slots, want %d", len(t), s.cfg.TableSize)
	}
	return t, nil
}

// redeploy returns VIP i's backends all replaced by new ones (a rolling
// redeploy that gives every backend a new address): every slot moves.
func (s *BenchSuite) redeploy(i int) []BenchBackend {
	var bs []BenchBackend
	for j := range s.vips[i].backends {
		bs = append(bs, s.backend(uint32(benchRedeployIDs+i*100+j)))
	}
	return bs
}

// Cases lists the cases in the order they are best run (the budgeted ones
// first, then the variants).
func (s *BenchSuite) Cases() []*BenchCase { return s.cases }

// Empty is the empty XDP program of NewEmptyXDP, loaded once.
func (s *BenchSuite) Empty() (*ebpf.Program, error) {
	if s.empty == nil {
		p, err := NewEmptyXDP()
		if err != nil {
			return nil, err
		}
		s.empty = p
	}
	return s.empty, nil
}

// Close releases the datapaths and programs the suite loaded.
func (s *BenchSuite) Close() error {
	var errs []error
	for _, d := range []*Datapath{s.steady, s.full, s.nat, s.natFlood} {
		if d != nil {
			errs = append(errs, d.Close())
		}
	}
	s.nat, s.natFlood = nil, nil
	if s.empty != nil {
		errs = append(errs, s.empty.Close())
	}
	s.steady, s.full, s.empty = nil, nil, nil
	return errors.Join(errs...)
}

// open loads a datapath with the whole configuration, every table set once.
func (s *BenchSuite) open(maxFlows int) (*Datapath, error) {
	d, err := Open(Options{PinPath: NoPin, MaxVIPs: 256, MaxBackends: 1 << 14, MaxFlows: maxFlows, TransitionGrace: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	if err := s.configure(d); err != nil {
		d.Close()
		return nil, fmt.Errorf("bench: configuring the datapath: %w", err)
	}
	if s.cfg.Monitor {
		if err := d.SetMonitor(true); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

func (s *BenchSuite) configure(d *Datapath) error {
	if err := d.SetEncapSource(benchEncapSrc, netip.Prefix{}); err != nil {
		return err
	}
	for id, b := range s.backends {
		if err := d.UpsertBackend(id, b); err != nil {
			return err
		}
	}
	for _, v := range s.vips {
		if err := d.UpsertVIP(v.key, VIP{Mode: v.mode, HashSeed: v.seed}); err != nil {
			return err
		}
		if err := d.SetTable(v.key, v.table); err != nil {
			return err
		}
	}
	d.mu.Lock()
	shared := d.filter[FilterBit(benchNonVIP)] != 0
	d.mu.Unlock()
	if shared {
		return fmt.Errorf("%s shares its VIP filter bit with a VIP: choose another", benchNonVIP)
	}
	return nil
}

// steadyDP is the datapath with no pins, where VIP remap had all its
// backends replaced and VIP mixed one backend drained, moments ago.
func (s *BenchSuite) steadyDP() (*Datapath, error) {
	if s.steady != nil {
		return s.steady, nil
	}
	d, err := s.open(benchMaxFlows)
	if err != nil {
		return nil, err
	}
	mixed := s.vips[benchVIPMixed]
	drained, err := s.buildTable(mixed.backends[1:])
	if err != nil {
		d.Close()
		return nil, err
	}
	redeployed, err := s.buildTable(s.redeploy(benchVIPRemap))
	if err == nil {
		err = d.SetTable(s.vips[benchVIPRemap].key, redeployed)
	}
	if err == nil {
		err = d.SetTable(mixed.key, drained)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	s.steady = d
	return d, nil
}

// fullDP is the datapath whose IPv4 flow state is full: the 1M flows of
// established_cold_1m are pinned (to another backend than their table
// slot's, mostly), and VIP flood had all its backends replaced moments ago.
func (s *BenchSuite) fullDP() (*Datapath, error) {
	if s.full != nil {
		return s.full, nil
	}
	d, err := s.open(benchFullMaxFlows)
	if err != nil {
		return nil, err
	}
	if err := s.fill(d); err != nil {
		d.Close()
		return nil, err
	}
	s.full = d
	return d, nil
}

func (s *BenchSuite) fill(d *Datapath) error {
	// PinFlow once per VIP (it marks the VIP as having pins), then the
	// same keys straight into the table, without the lock of d.mu.
	for i := range benchColdVIPs {
		f := s.coldFlow(uint32(i) << 16)
		if err := d.PinFlow(f); err != nil {
			return err
		}
	}
	now := d.nowMono()
	for i := uint32(0); i < benchColdFlows; i++ {
		f := s.coldFlow(i)
		d.markPinFlow(f)
		if err := d.putPin(f, now, true); err != nil {
			return fmt.Errorf("pinning the cold flows: %w", err)
		}
	}
	// The table has room for about twice MaxFlows: fill it up with pins of
	// flows no frame belongs to (from every source of 198.18.0.0/15, port
	// benchFillPort, to VIP 0's port 81) until it takes no more, so that
	// new pins fail as in a table at capacity.
	extra := Flow{Src: netip.AddrPortFrom(benchClient, 1), Dst: netip.AddrPortFrom(s.vips[0].key.Addr, benchPort), Proto: TCP, BackendID: s.vips[0].backends[0].ID}
	filler := Flow{Dst: netip.AddrPortFrom(s.vips[0].key.Addr, benchPort+1), Proto: TCP, BackendID: extra.BackendID}
	for i, fails := uint32(0), 0; fails < 1<<14 || d.pinRoom(extra); i++ {
		if i == 64<<17 {
			return errors.New("pinning the cold flows: the flow state still has room after every filler")
		}
		a := binary.BigEndian.AppendUint32(nil, 198<<24|18<<16|i&(1<<17-1))
		filler.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a)), benchFillPort+uint16(i>>17))
		switch err := d.putPin(filler, now, false); {
		case err == nil:
			fails = 0
		case errors.Is(err, ErrFull):
			fails++
		default:
			return fmt.Errorf("filling the flow state: %w", err)
		}
	}
	redeployed, err := s.buildTable(s.redeploy(benchVIPFlood))
	if err != nil {
		return err
	}
	return d.SetTable(s.vips[benchVIPFlood].key, redeployed)
}

// coldFlow is flow i of established_cold_1m: from benchColdClient, source
// port i%65536, to VIP i/65536, pinned to the backend after its table
// slot's.
func (s *BenchSuite) coldFlow(i uint32) Flow {
	v := &s.vips[i>>16]
	src := netip.AddrPortFrom(benchColdClient, uint16(i))
	dst := netip.AddrPortFrom(v.key.Addr, benchPort)
	id := v.table[Slot(FlowHash(src, dst, TCP, v.seed), len(v.table))]
	k := slices.IndexFunc(v.backends, func(b BenchBackend) bool { return b.ID == id })
	return Flow{Src: src, Dst: dst, Proto: TCP, BackendID: v.backends[(k+1)%len(v.backends)].ID}
}

// BenchCase is one case of the datapath benchmark.
type BenchCase struct {
	// Name is the case's name in reports and in BenchmarkDatapath/<Name>.
	Name string
	// About says what the case exercises, in a sentence.
	About string
	// Budget is the most a packet may cost (BenchResult.Cost: the program's
	// own cost, as an XDP program); with OverFloor, the most it may cost
	// above an empty XDP program; with Baseline, the most it may cost above
	// the Baseline case, run beside it in every sample (0: no more than it).
	// Otherwise 0 means none: the case is for information.
	Budget    time.Duration
	OverFloor bool
	Baseline  *BenchCase

	suite    *BenchSuite
	dp       func() (*Datapath, error)
	frame    BenchFrame
	verdict  uint32
	expect   func(pkt []byte) ([]byte, error) // the output for an input
	counters map[string]uint64                // "action/reason" -> growth per packet
	prepare  func(d *Datapath) error          // once, before the first run
	// reset, when set, restores the state a run consumes (snat_new_flow's
	// empty NAT table) before every run of a sample: the case's, and those
	// of -ablate and -versus beside it, so that each starts alike.
	reset    func(d *Datapath) error
	prepared bool
	grow     int // how much the program changes the frame's length (BenchFloor)
}

// Frame is the frame the case runs.
func (c *BenchCase) Frame() BenchFrame { return c.frame }

// Within reports whether a result keeps the case's budget.
func (c *BenchCase) Within(r BenchResult) bool {
	switch {
	case c.Baseline != nil:
		return r.OverBaseline <= c.Budget
	case c.Budget == 0:
		return true
	case c.OverFloor:
		return r.Cost-r.EmptyMedian <= c.Budget
	}
	return r.Cost <= c.Budget
}

// BenchSample is one run of a case: the case, the floor and the empty
// program, each over repeat packets, one right after the other.
type BenchSample struct {
	Case, Floor, Empty time.Duration
	// With BenchConfig.Ablate: AblationBuild is the case run by the
	// ablation build with nothing left out, Ablated by the same build
	// without the stages; the two run side by side.
	AblationBuild, Ablated time.Duration
	// Baseline is the case's Baseline case run beside it (0: none).
	Baseline time.Duration
	// Versus is the case run by BenchConfig.Versus's build (0: none).
	Versus time.Duration
}

// BenchResult is the outcome of measuring a case.
type BenchResult struct {
	Case    string
	Repeat  int
	Samples []BenchSample
	// Medians over the samples. Median is the bench wrapper's (restore
	// included); FloorMedian the restore's alone, EmptyMedian an empty XDP
	// program's. OverFloor is the median of each sample's case minus its
	// floor, which cancels noise that hit both.
	Median, FloorMedian, EmptyMedian, OverFloor time.Duration
	// Cost is what the budgets judge: the median of each sample's case
	// minus its floor plus its empty program, i.e. the program's cost per
	// packet as an XDP program, without the benchmark's restore.
	Cost time.Duration
	// With an ablation: AblatedCost is Cost for the ablation build without
	// the stages, and StageCost the median of each sample's StageCost, what
	// the stages cost.
	AblatedCost, StageCost time.Duration
	// OverBaseline, for a case with a Baseline, is the median of each
	// sample's case minus its baseline's run.
	OverBaseline time.Duration
	// With BenchConfig.Versus: VersusCost is Cost for the other build, and
	// OverVersus the median of each sample's case minus the other build's
	// run beside it (negative: this build is faster).
	VersusCost, OverVersus time.Duration
}

// StageCost is what the stages left out cost in the sample: the ablation
// build's run with them minus its run without them, side by side, so that
// noise that hit both cancels.
func (s BenchSample) StageCost() time.Duration { return s.AblationBuild - s.Ablated }

// Cost is a sample's program cost: the case without the restore, with what
// any XDP program costs.
func (s BenchSample) Cost() time.Duration { return s.Case - s.Floor + s.Empty }

// Measure checks the case with a single packet, then takes runs samples of
// repeat packets each, checking every one (verdict, output of the last
// packet, counters), and returns their medians. The floor and the empty
// program are measured in the same sample, alternately before and after the
// case, so that noise hits all three.
func (c *BenchCase) Measure(runs, repeat int) (BenchResult, error) {
	r := BenchResult{Case: c.Name, Repeat: repeat}
	if runs < 1 {
		return r, fmt.Errorf("%s: %d runs", c.Name, runs)
	}
	for i := range runs {
		smp, err := c.Sample(repeat, i%2 == 1)
		if err != nil {
			return r, err
		}
		r.Samples = append(r.Samples, smp)
	}
	pick := func(f func(BenchSample) time.Duration) time.Duration {
		v := make([]time.Duration, len(r.Samples))
		for i, s := range r.Samples {
			v[i] = f(s)
		}
		return Median(v)
	}
	r.Median = pick(func(s BenchSample) time.Duration { return s.Case })
	r.FloorMedian = pick(func(s BenchSample) time.Duration { return s.Floor })
	r.EmptyMedian = pick(func(s BenchSample) time.Duration { return s.Empty })
	r.OverFloor = pick(func(s BenchSample) time.Duration { return s.Case - s.Floor })
	r.Cost = pick(BenchSample.Cost)
	if c.suite.cfg.Ablate != 0 {
		r.AblatedCost = pick(func(s BenchSample) time.Duration { return s.Ablated - s.Floor + s.Empty })
		r.StageCost = pick(BenchSample.StageCost)
	}
	if c.Baseline != nil {
		r.OverBaseline = pick(func(s BenchSample) time.Duration { return s.Case - s.Baseline })
	}
	if c.suite.cfg.Versus != "" {
		r.VersusCost = pick(func(s BenchSample) time.Duration { return s.Versus - s.Floor + s.Empty })
		r.OverVersus = pick(func(s BenchSample) time.Duration { return s.Case - s.Versus })
	}
	return r, nil
}

// Median is the median of v (the mean of the middle two for an even
// count).
func Median[T ~int64 | ~float64](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Prepare builds the case's datapath state and checks one packet through
// it: verdict and exact output. Sample calls it first.
func (c *BenchCase) Prepare() error {
	if c.prepared {
		return nil
	}
	d, err := c.dp()
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	if c.prepare != nil {
		if err := c.prepare(d); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	if _, err := c.run(d, 1); err != nil {
		return err
	}
	out, err := c.expect(c.frame.Varied(0))
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	c.grow = len(out) - len(c.frame.Data)
	c.prepared = true
	return nil
}

// Sample takes one sample: the case, its floor and the empty program (in
// the reverse order when floorFirst), each over repeat packets.
func (c *BenchCase) Sample(repeat int, floorFirst bool) (BenchSample, error) {
	var smp BenchSample
	if err := c.Prepare(); err != nil {
		return smp, err
	}
	d, err := c.dp()
	if err != nil {
		return smp, err
	}
	empty, err := c.suite.Empty()
	if err != nil {
		return smp, err
	}
	ref := func() error {
		if smp.Floor, err = d.BenchFloor(c.frame, c.grow, repeat); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		var v uint32
		if smp.Empty, v, _, err = BenchProgram(empty, c.frame.Data, repeat); err != nil {
			return fmt.Errorf("%s: empty program: %w", c.Name, err)
		}
		if v != XDPPass {
			return fmt.Errorf("%s: empty program: verdict %d", c.Name, v)
		}
		return nil
	}
	ablated := func() error {
		if c.suite.cfg.Ablate == 0 {
			return nil
		}
		a := c.suite.cfg.Ablate
		if floorFirst { // which goes first alternates too
			if smp.Ablated, err = c.runVariant(d, repeat, benchVariant{ablate: a | ablationBuild}); err != nil {
				return err
			}
		}
		if smp.AblationBuild, err = c.runVariant(d, repeat, benchVariant{ablate: ablationBuild}); err != nil {
			return err
		}
		if !floorFirst {
			smp.Ablated, err = c.runVariant(d, repeat, benchVariant{ablate: a | ablationBuild})
		}
		return err
	}
	if floorFirst {
		if err := ref(); err != nil {
			return smp, err
		}
		if err := ablated(); err != nil {
			return smp, err
		}
	}
	versus := func() error {
		if c.suite.cfg.Versus == "" {
			return nil
		}
		smp.Versus, err = c.runVariant(d, repeat, benchVariant{file: c.suite.cfg.Versus})
		return err
	}
	if floorFirst {
		if err := versus(); err != nil {
			return smp, err
		}
	}
	if smp.Case, err = c.run(d, repeat); err != nil {
		return smp, err
	}
	if !floorFirst {
		if err := versus(); err != nil {
			return smp, err
		}
	}
	if b := c.Baseline; b != nil {
		bd, err := b.dp()
		if err == nil {
			err = b.Prepare()
		}
		if err == nil {
			smp.Baseline, err = b.run(bd, repeat)
		}
		if err != nil {
			return smp, fmt.Errorf("%s: baseline: %w", c.Name, err)
		}
	}
	if !floorFirst {
		if err := ablated(); err != nil {
			return smp, err
		}
		if err := ref(); err != nil {
			return smp, err
		}
	}
	return smp, nil
}

// run runs the case over repeat packets and checks the verdict, the output
// of the last packet and the counters.
func (c *BenchCase) run(d *Datapath, repeat int) (time.Duration, error) {
	return c.runVariant(d, repeat, benchVariant{})
}

// benchVariant is a build of the bench wrappers other than this one's: the
// ablation build leaving stages out, or the object of another build.
type benchVariant struct {
	ablate Ablation
	file   string
}

// runVariant is run by another build of the program. What the stages an
// ablation leaves out would change is not checked: the counters without the
// counting stages, the output without the flow hash or the table (another
// backend) or the NAT inserts (no flow).
func (c *BenchCase) runVariant(d *Datapath, repeat int, v benchVariant) (time.Duration, error) {
	ablate := v.ablate
	if c.reset != nil {
		if err := c.reset(d); err != nil {
			return 0, fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	var (
		before  map[string]uint64
		dur     time.Duration
		verdict uint32
		out     []byte
	)
	for attempt := 0; ; attempt++ {
		var err error
		if before, err = benchCounters(d); err != nil {
			return 0, err
		}
		var interrupted bool
		if v.file != "" {
			dur, verdict, out, interrupted, err = d.benchRunFile(v.file, c.frame, repeat)
		} else {
			dur, verdict, out, interrupted, err = d.benchRunAblated(c.frame, repeat, ablate)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", c.Name, err)
		}
		// An interrupted call moved the counters by its packets too: the
		// counters are checked on a run that went through in one call.
		if !interrupted || attempt == 5 {
			break
		}
	}
	if verdict != c.verdict {
		return 0, fmt.Errorf("%s: verdict %d after %d packets, want %d", c.Name, verdict, repeat, c.verdict)
	}
	if ablate&(AblateHash|AblateTable|AblateNATInsert) != 0 {
		return dur, nil
	}
	last := c.frame.Varied(uint32(repeat - 1))
	want, err := c.expect(last)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", c.Name, err)
	}
	if !bytes.Equal(out, want) {
		return 0, fmt.Errorf("%s: output of packet %d of %d:\n got %x\nwant %x", c.Name, repeat, repeat, out, want)
	}
	after, err := benchCounters(d)
	if err != nil {
		return 0, err
	}
	if ablate&AblateStats != 0 {
		return dur, nil
	}
	for name, per := range c.counters {
		if got, want := after[name]-before[name], per*uint64(repeat); got != want {
			return 0, fmt.Errorf("%s: counter %s grew by %d over %d packets, want %d", c.Name, name, got, repeat, want)
		}
	}
	return dur, nil
}

func benchCounters(d *Datapath) (map[string]uint64, error) {
	cs, err := d.Counters()
	if err != nil {
		return nil, err
	}
	m := make(map[string]uint64, len(cs))
	for _, c := range cs {
		m[c.Action+"/"+c.Reason] = c.Value
	}
	return m, nil
}

// Frames. The TCP segments carry the options Linux sends: a SYN has MSS,
// SACK permitted, timestamps and window scale (74-byte frame), an ACK
// timestamps (66 bytes).

const (
	benchOffSaddr = 14 + 12
	benchOffDaddr = 14 + 16
)

var (
	benchSynOptions = []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}
	benchAckOptions = []byte{1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1}
)

// benchTCPFrame is a TCP segment from src to dst, IPv4 or IPv6.
func benchTCPFrame(src, dst netip.AddrPort, syn bool) []byte {
	opts, flags := benchAckOptions, byte(0x10)
	if syn {
		opts, flags = benchSynOptions, 0x02
	}
	tcp := make([]byte, 20+len(opts))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 0x01020304)
	if !syn {
		binary.BigEndian.PutUint32(tcp[8:], 0x0a0b0c0d)
	}
	tcp[12], tcp[13] = byte(len(tcp)/4)<<4, flags
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	copy(tcp[20:], opts)
	return benchIPFrame(src.Addr(), dst.Addr(), TCP, tcp, 16)
}

// benchUDPFrame is a UDP datagram of 40 bytes of payload (a small DNS
// query's size) from src to dst.
func benchUDPFrame(src, dst netip.AddrPort) []byte {
	udp := make([]byte, 8+40)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	for i := range udp[8:] {
		udp[8+i] = byte(i)
	}
	return benchIPFrame(src.Addr(), dst.Addr(), UDP, udp, 6)
}

// benchIPFrame wraps the transport segment l4 (its checksum field at
// offset csum, zero) in an IPv4 (DF, TTL 64) or IPv6 (hop limit 64) header
// and an Ethernet header, and fills in the checksums.
func benchIPFrame(src, dst netip.Addr, proto Proto, l4 []byte, csum int) []byte {
	var ip, pseudo []byte
	if src.Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8], ip[9] = 64, byte(proto)
		s4, d4 := src.As4(), dst.As4()
		copy(ip[12:], s4[:])
		copy(ip[16:], d4[:])
		binary.BigEndian.PutUint16(ip[10:], inetChecksum(0, ip))
		pseudo = append(append(append([]byte{}, s4[:]...), d4[:]...), 0, byte(proto), byte(len(l4)>>8), byte(len(l4)))
	} else {
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6], ip[7] = byte(proto), 64
		s6, d6 := src.As16(), dst.As16()
		copy(ip[8:], s6[:])
		copy(ip[24:], d6[:])
		pseudo = append(append(append([]byte{}, s6[:]...), d6[:]...), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, byte(proto))
	}
	binary.BigEndian.PutUint16(l4[csum:], inetChecksum(onesSum(0, pseudo), l4))
	b := make([]byte, 14, 14+len(ip)+len(l4))
	copy(b[0:6], benchLBMAC)
	copy(b[6:12], benchClientMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	if src.Is6() {
		binary.BigEndian.PutUint16(b[12:], 0x86dd)
	}
	return append(append(b, ip...), l4...)
}

func onesSum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func inetChecksum(sum uint32, b []byte) uint16 {
	sum = onesSum(sum, b)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// benchParse reads the addresses, ports and protocol of a benchmark frame
// (IPv4 or IPv6, TCP or UDP), and whether it is a SYN.
func benchParse(pkt []byte) (src, dst netip.AddrPort, proto Proto, syn bool) {
	l3 := pkt[14:]
	var s, d netip.Addr
	var l4 []byte
	if binary.BigEndian.Uint16(pkt[12:]) == 0x86dd {
		s, d = netip.AddrFrom16([16]byte(l3[8:])), netip.AddrFrom16([16]byte(l3[24:]))
		proto, l4 = Proto(l3[6]), l3[40:]
	} else {
		s, d = netip.AddrFrom4([4]byte(l3[12:])), netip.AddrFrom4([4]byte(l3[16:]))
		proto, l4 = Proto(l3[9]), l3[20:]
	}
	syn = proto == TCP && l4[13]&0x12 == 0x02
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:])), proto, syn
}

// The checks: what the program should make of a packet, from the model
// (model.go) of the state each datapath is in.

// model is the model of the steady datapath, or of the full one.
func (s *BenchSuite) model(full bool) (*ModelState, error) {
	if m := s.models[full]; m != nil {
		return m, nil
	}
	m := &ModelState{VIPs: map[VIPKey]ModelVIP{}, Backends: s.backends}
	for _, v := range s.vips {
		m.VIPs[v.key] = ModelVIP{Key: v.key, Mode: v.mode, Seed: v.seed, Table: v.table}
	}
	// transition: VIP i's table changed from its first to next moments ago.
	transition := func(i int, next []uint32) {
		v := m.VIPs[s.vips[i].key]
		v.Prev, v.Table, v.InTransition, v.HasPins = v.Table, next, true, true
		m.VIPs[v.Key] = v
	}
	if !full {
		remap, err := s.buildTable(s.redeploy(benchVIPRemap))
		if err != nil {
			return nil, err
		}
		drained, err := s.buildTable(s.vips[benchVIPMixed].backends[1:])
		if err != nil {
			return nil, err
		}
		transition(benchVIPRemap, remap)
		transition(benchVIPMixed, drained)
	} else {
		flood, err := s.buildTable(s.redeploy(benchVIPFlood))
		if err != nil {
			return nil, err
		}
		transition(benchVIPFlood, flood)
		// The flow table is full: no pin can be made.
		m.PinFails = true
		// The cold flows are pinned, each to the backend after its slot's.
		for i := range benchColdVIPs {
			v := m.VIPs[s.vips[i].key]
			v.HasPins = true
			m.VIPs[v.Key] = v
		}
		base := binary.BigEndian.Uint32(benchVIPBase.AsSlice())
		m.Pin = func(src, dst netip.AddrPort, proto Proto) (uint32, bool) {
			if src.Addr() != benchColdClient || proto != TCP || dst.Port() != benchPort || !dst.Addr().Is4() {
				return 0, false
			}
			i := binary.BigEndian.Uint32(dst.Addr().AsSlice()) - base
			if i >= benchColdVIPs {
				return 0, false
			}
			return s.coldFlow(i<<16 | uint32(src.Port())).BackendID, true
		}
	}
	s.models[full] = m
	return m, nil
}

// decide is the model's decision for a frame of the benchmark.
func (s *BenchSuite) decide(full bool, pkt []byte) (Decision, *ModelState, error) {
	m, err := s.model(full)
	if err != nil {
		return Decision{}, nil, err
	}
	src, dst, proto, syn := benchParse(pkt)
	return m.Decide(Packet{Src: src, Dst: dst, Proto: proto, SYN: syn}), m, nil
}

// byModel expects a frame to be forwarded where the model of the steady or
// the full datapath sends it.
func (s *BenchSuite) byModel(full bool) func(pkt []byte) ([]byte, error) {
	return func(pkt []byte) ([]byte, error) {
		dec, m, err := s.decide(full, pkt)
		if err != nil {
			return nil, err
		}
		if !dec.Forwarded() {
			return nil, fmt.Errorf("the model does not forward the frame: %s", dec.Rule)
		}
		return s.forward(m.VIPs[dec.VIP].Mode, dec.Hash, pkt, dec.BackendID)
	}
}

// forward is the frame pkt, of a flow of the given hash, becomes when sent
// to backend id in the given mode.
func (s *BenchSuite) forward(mode Mode, hash uint32, pkt []byte, id uint32) ([]byte, error) {
	b, ok := s.backends[id]
	if !ok {
		return nil, fmt.Errorf("no backend %d", id)
	}
	if mode == ModeDSRL2 {
		out := slices.Clone(pkt)
		copy(out[0:6], b.NextHopMAC)
		copy(out[6:12], b.SrcMAC)
		return out, nil
	}
	// IPIP: a new outer IPv4 header; the outer source's host bits carry
	// the flow hash.
	// The inner packet is routed: its TTL or hop limit is one lower.
	inner := slices.Clone(pkt[14:])
	innerProto := byte(4)
	if inner[0]>>4 == 6 {
		inner[7]--
		innerProto = 41
	} else {
		inner[8]--
		binary.BigEndian.PutUint16(inner[10:], 0)
		binary.BigEndian.PutUint16(inner[10:], inetChecksum(0, inner[:20]))
	}
	out := make([]byte, 14+20+len(inner))
	copy(out[0:6], b.NextHopMAC)
	copy(out[6:12], b.SrcMAC)
	binary.BigEndian.PutUint16(out[12:], 0x0800)
	o := out[14:34]
	tos := inner[1]
	if innerProto == 41 {
		tos = inner[0]<<4 | inner[1]>>4
	}
	o[0], o[1] = 0x45, tos
	binary.BigEndian.PutUint16(o[2:], uint16(20+len(inner)))
	binary.BigEndian.PutUint16(o[6:], 0x4000)
	o[8], o[9] = 64, innerProto
	es := benchEncapSrc.Addr().As4()
	bits := 32 - benchEncapSrc.Bits()
	mask := uint32(1)<<bits - 1
	binary.BigEndian.PutUint32(o[12:], binary.BigEndian.Uint32(es[:])&^mask|hash&mask)
	ba := b.Addr.As4()
	copy(o[16:], ba[:])
	binary.BigEndian.PutUint16(o[10:], inetChecksum(0, o))
	copy(out[34:], inner)
	return out, nil
}

func (s *BenchSuite) newCases() []*BenchCase {
	est := s.vips[benchVIPEstablished].key
	ipip := s.vips[benchVIPIPIP].key
	client := netip.AddrPortFrom(benchClient, benchSrcPort)
	vipPort := func(k VIPKey) netip.AddrPort { return netip.AddrPortFrom(k.Addr, k.Port) }
	steady := func() (*Datapath, error) { return s.steadyDP() }
	full := func() (*Datapath, error) { return s.fullDP() }
	unchanged := func(pkt []byte) ([]byte, error) { return slices.Clone(pkt), nil }

	// The flood frames: every source address of 198.18.0.0/15.
	flood := func(syn bool) BenchFrame {
		f := benchTCPFrame(netip.AddrPortFrom(benchFloodBase, benchSrcPort), vipPort(s.vips[benchVIPFlood].key), syn)
		return BenchFrame{Data: f, VaryOffset: benchOffSaddr, VaryCount: benchFloodSrcs}
	}
	// The cold frames: the 32-bit field at offset 32 is the low half of
	// the destination address and the source port: adding 0..2^20-1 walks
	// source ports 0-65535 to VIPs 0, 1, ... 15.
	cold := BenchFrame{
		Data:       benchTCPFrame(netip.AddrPortFrom(benchColdClient, 0), vipPort(s.vips[0].key), false),
		VaryOffset: benchOffDaddr + 2, VaryCount: benchColdFlows,
	}
	remap := func(vip int) BenchFrame {
		f := benchTCPFrame(netip.AddrPortFrom(benchRemapBase, benchSrcPort), vipPort(s.vips[vip].key), false)
		return BenchFrame{Data: f, VaryOffset: benchOffSaddr, VaryCount: benchRemapFlows}
	}
	// The model of each datapath says where each frame goes: the flood VIP
	// and the remap VIP moved every slot to new backends while the old ones
	// stay up, so a non-SYN goes to the old backend (pinned or not), a SYN
	// to the new one when it can be pinned there, else (the full datapath)
	// to the old one too; the cold flows of the full datapath follow their
	// pins.
	steadyModel, fullModel := s.byModel(false), s.byModel(true)
	// pinAll runs every flow of a case once, so that those whose slot
	// moved are pinned, and checks how many were.
	pinAll := func(c *BenchCase, want func(d *Datapath) (int, error)) func(d *Datapath) error {
		return func(d *Datapath) error {
			before, err := benchCounters(d)
			if err != nil {
				return err
			}
			if _, verdict, _, err := d.BenchRun(c.frame, int(c.frame.VaryCount)); err != nil {
				return err
			} else if verdict != c.verdict {
				return fmt.Errorf("pinning: verdict %d, want %d", verdict, c.verdict)
			}
			after, err := benchCounters(d)
			if err != nil {
				return err
			}
			n, err := want(d)
			if err != nil {
				return err
			}
			if got := after["event/pin_created"] - before["event/pin_created"]; got != uint64(n) {
				return fmt.Errorf("pinning: %d flows pinned, want %d", got, n)
			}
			return nil
		}
	}

	nonVIP := &BenchCase{
		Name:   "non_vip",
		About:  "TCP ACK to an address that is no VIP: parse, VIP prefilter, XDP_PASS",
		Budget: 5 * time.Nanosecond, OverFloor: true,
		dp: steady, frame: BenchFrame{Data: benchTCPFrame(client, netip.AddrPortFrom(benchNonVIP, benchPort), false)},
		verdict: XDPPass, expect: unchanged,
		counters: map[string]uint64{"pass/not_vip": 1},
	}
	l2 := &BenchCase{
		Name:   "established_l2",
		About:  "TCP ACK of one flow to a DSR L2 VIP without pins: service lookup, hash, Maglev slot, MAC rewrite, XDP_TX",
		Budget: 35 * time.Nanosecond,
		dp:     steady, frame: BenchFrame{Data: benchTCPFrame(client, vipPort(est), false)},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_hit": 0},
	}
	ipipCase := &BenchCase{
		Name:   "established_ipip",
		About:  "the same to a DSR IPIP VIP: IPv4 outer header (source spread by flow hash), XDP_TX",
		Budget: 42 * time.Nanosecond,
		dp:     steady, frame: BenchFrame{Data: benchTCPFrame(client, vipPort(ipip), false)},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_ipip": 1},
	}
	syn := &BenchCase{
		Name:   "new_flow_syn",
		About:  "TCP SYN to a DSR L2 VIP without pins (no transition): no state is created, the table decides",
		Budget: 35 * time.Nanosecond,
		dp:     steady, frame: BenchFrame{Data: benchTCPFrame(client, vipPort(est), true)},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/tcp_syn": 1, "event/pin_created": 0},
	}
	floodCase := &BenchCase{
		Name: "new_flow_flood",
		About: "TCP ACKs from 131072 sources (all of 198.18.0.0/15) to a VIP in transition whose every slot moved, flow state full (1M pins): " +
			"flow lookup misses, both tables, pin attempt fails, sent to the old backend",
		Budget: 150 * time.Nanosecond,
		dp:     full, frame: flood(false),
		verdict: XDPTx, expect: fullModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_table_full": 1, "event/pin_created": 0},
	}
	coldCase := &BenchCase{
		Name:   "established_cold_1m",
		About:  "TCP ACKs of 1M flows round robin (65536 source ports to each of 16 VIPs without pins): no flow lookup, 16 tables",
		Budget: 150 * time.Nanosecond,
		dp:     steady, frame: cold,
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_hit": 0},
	}
	remapCase := &BenchCase{
		Name: "transition_remap",
		About: "TCP ACKs of 10k flows round robin to a VIP whose backends were all replaced moments ago (every slot moved, old backends up), " +
			"each flow pinned by its first packet: flow lookup hits",
		Budget: 200 * time.Nanosecond,
		dp:     steady, frame: remap(benchVIPRemap),
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_hit": 1, "event/pin_created": 0},
	}
	remapCase.prepare = pinAll(remapCase, func(*Datapath) (int, error) { return benchRemapFlows, nil })
	mixed := &BenchCase{
		Name: "transition_mixed",
		About: "TCP ACKs of 10k flows to a VIP that drained one backend moments ago: the few flows whose slot moved follow their pins, " +
			"the others miss the flow lookup and read both tables",
		dp: steady, frame: remap(benchVIPMixed),
		verdict:  XDPTx,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_created": 0},
	}
	// The drained backend is still up, so every flow stays where it was:
	// pinned there if its slot moved, by the old table's choice if not.
	mixed.expect = steadyModel
	mixed.prepare = pinAll(mixed, func(*Datapath) (int, error) {
		n := 0
		for i := range uint32(benchRemapFlows) {
			dec, _, err := s.decide(false, mixed.frame.Varied(i))
			if err != nil {
				return 0, err
			}
			if dec.Pin == "create" {
				n++
			}
		}
		return n, nil
	})
	floodSyn := &BenchCase{
		Name:   "new_flow_flood_syn",
		About:  "new_flow_flood with SYNs: their pin attempts to the new backend fail too, so they go to the old one, as their flows' next packets will",
		Budget: 150 * time.Nanosecond,
		dp:     full, frame: flood(true),
		verdict: XDPTx, expect: fullModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/tcp_syn": 1, "event/pin_table_full": 1, "event/pin_created": 0},
	}
	coldPinned := &BenchCase{
		Name:   "established_cold_1m_pinned",
		About:  "established_cold_1m with every one of the 1M flows pinned (flow state full, VIPs have pins): flow lookup hits over 1M entries",
		Budget: 220 * time.Nanosecond,
		dp:     full, frame: cold,
		verdict: XDPTx, expect: fullModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_hit": 1},
	}
	client6 := netip.AddrPortFrom(benchClient6, benchSrcPort)
	l2v6 := &BenchCase{
		Name:   "established_l2_ipv6",
		About:  "established_l2 over IPv6: a TCP ACK to a DSR L2 IPv6 VIP (budget: established_l2's + 5, run beside it)",
		Budget: 5 * time.Nanosecond, Baseline: l2,
		dp: steady, frame: BenchFrame{Data: benchTCPFrame(client6, vipPort(s.vips[s.vip6L2].key), false)},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1, "event/pin_hit": 0},
	}
	ipipV6 := &BenchCase{
		Name:   "established_ipip_ipv6",
		About:  "established_ipip over IPv6: a TCP ACK to a DSR IPIP IPv6 VIP, encapsulated in IPv4 to its backend (6in4; budget: established_ipip's + 5, run beside it)",
		Budget: 5 * time.Nanosecond, Baseline: ipipCase,
		dp: steady, frame: BenchFrame{Data: benchTCPFrame(client6, vipPort(s.vips[s.vip6IPIP].key), false)},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_ipip": 1},
	}
	udp := &BenchCase{
		Name:   "established_udp",
		About:  "a UDP datagram (48 bytes) to a DSR L2 VIP, no pins: as established_l2 (budget: established_l2's, run beside it)",
		Budget: 0, Baseline: l2,
		dp: steady, frame: BenchFrame{Data: benchUDPFrame(client, vipPort(s.vips[s.vipUDP].key))},
		verdict: XDPTx, expect: steadyModel,
		counters: map[string]uint64{"tx/dsr_l2": 1},
	}
	cs := []*BenchCase{nonVIP, l2, ipipCase, syn, floodCase, remapCase, coldCase, floodSyn, coldPinned, mixed, l2v6, ipipV6, udp}
	for _, c := range cs {
		c.suite = s
	}
	return append(cs, s.natCases()...)
}
