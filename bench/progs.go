package main

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

// Offsets in struct xdp_md.
const (
	mdData    = 0
	mdDataEnd = 4
)

// The frames the benchmarks send are IPv4 UDP without options: the source
// port sits at byte 34 of the frame, the destination port at 36.
const (
	frameSportOffset = 34
	frameDportOffset = 36
	// genRestore is how many bytes of the frame the generator writes back
	// from its template on every run (Ethernet, IPv4 and UDP headers and the
	// first payload bytes).
	genRestore = 48
)

// xdpMd is struct xdp_md, the context of an XDP BPF_PROG_TEST_RUN.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

func newXDP(name string, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("loading XDP program %s: %w", name, err)
	}
	return p, nil
}

// generatorProgram is run with BPF_F_TEST_XDP_LIVE_FRAMES on the sender's
// interface: it writes the first genRestore bytes of tmpl over the frame
// (the live-frames page pool hands the program pages as the last user left
// them: xdplb's rewritten MACs, or the outer header IPIP wrote over the
// Ethernet header), sets a pseudo-random UDP source port among flows from
// basePort (the UDP checksum is 0, so nothing else changes), and returns
// XDP_TX, which a live-frames run turns into a transmission out of the
// interface.
func generatorProgram(tmpl []byte, flows int, basePort uint16) (*ebpf.Program, error) {
	if len(tmpl) < genRestore {
		return nil, fmt.Errorf("generator template of %d bytes, want at least %d", len(tmpl), genRestore)
	}
	if flows < 1 || flows&(flows-1) != 0 || int(basePort)+flows > 65536 {
		return nil, fmt.Errorf("generator: %d flows from port %d: want a power of two that fits", flows, basePort)
	}
	bounds := func() asm.Instructions {
		return asm.Instructions{
			asm.LoadMem(asm.R2, asm.R6, mdData, asm.Word),
			asm.LoadMem(asm.R3, asm.R6, mdDataEnd, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, genRestore),
			asm.JGT.Reg(asm.R4, asm.R3, "drop"),
		}
	}
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	insns = append(insns, bounds()...)
	for off := 0; off < genRestore; off += 8 {
		insns = append(insns,
			asm.LoadImm(asm.R5, int64(binary.NativeEndian.Uint64(tmpl[off:])), asm.DWord),
			asm.StoreMem(asm.R2, int16(off), asm.R5, asm.DWord))
	}
	if flows > 1 {
		insns = append(insns,
			asm.FnGetPrandomU32.Call(),
			asm.And.Imm(asm.R0, int32(flows-1)),
			asm.Add.Imm(asm.R0, int32(basePort)),
			asm.HostTo(asm.BE, asm.R0, asm.Half),
		)
		insns = append(insns, bounds()...) // the call clobbered the packet pointers
		insns = append(insns, asm.StoreMem(asm.R2, frameSportOffset, asm.R0, asm.Half))
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, xdpTX),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
		asm.Return(),
	)
	return newXDP("bench_gen", insns)
}

// sinkProgram counts in counts (a per-CPU array, key 0) the IPv4 frames that
// are IPIP or UDP (to udpPort if it is not 0) and returns verdict for them;
// everything else (ARP, TCP, …) passes, so the namespace's stack keeps
// working.
func sinkProgram(counts *ebpf.Map, udpPort uint16, verdict int32) (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, mdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, mdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, frameDportOffset+2),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, int32(htons(unix.ETH_P_IP)), "pass"),
		asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte), // IPv4 protocol
		asm.JEq.Imm(asm.R5, unix.IPPROTO_IPIP, "count"),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_UDP, "pass"),
	}
	if udpPort != 0 {
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte), // version and IHL: no options
			asm.JNE.Imm(asm.R5, 0x45, "pass"),
			asm.LoadMem(asm.R5, asm.R2, frameDportOffset, asm.Half),
			asm.JNE.Imm(asm.R5, int32(htons(udpPort)), "pass"),
		)
	}
	insns = append(insns,
		asm.StoreImm(asm.RFP, -4, 0, asm.Word).WithSymbol("count"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "verdict"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, verdict).WithSymbol("verdict"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	)
	return newXDP("bench_sink", insns)
}

// hairpinProgram is the trivial XDP_TX: the frame goes back out of the
// interface it came in on, untouched.
func hairpinProgram() (*ebpf.Program, error) {
	return newXDP("bench_hairpin", asm.Instructions{asm.Mov.Imm(asm.R0, xdpTX), asm.Return()})
}

// swapProgram is the hairpin that touches the frame: it reads the Ethernet
// header and sends the frame back with its MACs swapped (what xdp-bench's
// tx mode does by default); a frame shorter than that header passes.
func swapProgram() (*ebpf.Program, error) {
	return newXDP("bench_swap", asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpPass),
		asm.LoadMem(asm.R2, asm.R1, mdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, mdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 12),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, 4, asm.Half),
		asm.LoadMem(asm.R6, asm.R2, 6, asm.Word),
		asm.LoadMem(asm.R7, asm.R2, 10, asm.Half),
		asm.StoreMem(asm.R2, 0, asm.R6, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R7, asm.Half),
		asm.StoreMem(asm.R2, 6, asm.R4, asm.Word),
		asm.StoreMem(asm.R2, 10, asm.R5, asm.Half),
		asm.Mov.Imm(asm.R0, xdpTX),
		asm.Return().WithSymbol("out"),
	})
}

// passProgram passes every frame; on a veth it makes the device receive in
// NAPI (see internal/testnet).
func passProgram() (*ebpf.Program, error) {
	return newXDP("bench_pass", asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()})
}

// redirectProgram is the trivial XDP_REDIRECT: every frame, untouched, to
// ifindex through a device map, as xdplb redirects through its tx ports.
func redirectProgram(devmap *ebpf.Map, ifindex int) (*ebpf.Program, error) {
	return newXDP("bench_redirect", asm.Instructions{
		asm.LoadMapPtr(asm.R1, devmap.FD()),
		asm.Mov.Imm(asm.R2, int32(ifindex)),
		asm.Mov.Imm(asm.R3, xdpDrop),
		asm.FnRedirectMap.Call(),
		asm.Return(),
	})
}

// newDevmap makes a device map holding ifindex. A device map resolves an
// ifindex in the network namespace of the thread that writes it: call it
// inside NS.Do, in the device's namespace.
func newDevmap(ifindex int) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_tx", Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		return nil, fmt.Errorf("creating device map: %w", err)
	}
	if err := m.Put(uint32(ifindex), uint32(ifindex)); err != nil {
		m.Close()
		return nil, fmt.Errorf("adding ifindex %d to the device map: %w", ifindex, err)
	}
	return m, nil
}

func newCounter() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating counter map: %w", err)
	}
	return m, nil
}

// readCounter sums the per-CPU counter of a sink.
func readCounter(m *ebpf.Map) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
