package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The ways a generator sends its frames (generator.Kind).
const (
	genLiveFrames   = "live-frames"
	genPacketSocket = "packet-socket"
)

// generator sends the benchmarks' UDP frames out of an interface toward its
// peer: copies of a template that differ only in the UDP source port,
// basePort plus a pseudo-random number below flows.
//
// It prefers the generator program (generatorProgram) in a live-frames run
// (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel transmits each frame out of the
// interface with ndo_xdp_xmit, so the peer receives it as an XDP frame, as
// from a NIC. A kernel that refuses live frames (EPERM: this project's
// Firecracker guest kernel from 2026-12-07 on, as root with every BPF
// capability; EOPNOTSUPP) gets the same frames from a feeder instead: a
// packet socket (sendmmsg, the qdisc bypassed) on one end of a second veth
// in the interface's namespace, whose other end redirects every frame out
// of the interface with XDP (bpf_redirect_map). The peer then receives XDP
// frames through ndo_xdp_xmit as before; the feeder's own costs (the
// socket, veth's copy of each skb into a page for XDP) fall on the sending
// CPU, as the live-frames run's do. Kind says which way a run sent, and the
// results carry it.
type generator struct {
	prog    *ebpf.Program
	tmpl    []byte
	flows   int
	socket  bool            // live frames were refused: feeders send
	feeders map[int]*feeder // per interface index
	frames  []byte          // the feeders' frames: one per flow, back to back
	iovs    []unix.Iovec    // sendmmsg's batch
	msgs    []unix.Mmsghdr
	rnd     uint64
}

// socketBatch is the packet socket's batch: frames per sendmmsg call.
const socketBatch = 64

func newGenerator(tmpl []byte, flows int, basePort uint16) (*generator, error) {
	prog, err := generatorProgram(tmpl, flows, basePort)
	if err != nil {
		return nil, err
	}
	g := &generator{
		prog: prog, tmpl: tmpl, flows: flows, feeders: map[int]*feeder{},
		frames: make([]byte, flows*len(tmpl)),
		iovs:   make([]unix.Iovec, socketBatch),
		msgs:   make([]unix.Mmsghdr, socketBatch),
		rnd:    0x9E3779B97F4A7C15,
	}
	for i := range flows {
		fr := g.frames[i*len(tmpl) : (i+1)*len(tmpl)]
		copy(fr, tmpl)
		binary.BigEndian.PutUint16(fr[frameSportOffset:], basePort+uint16(i))
	}
	for i := range g.msgs {
		g.iovs[i].SetLen(len(tmpl))
		g.msgs[i].Hdr.Iov = &g.iovs[i]
		g.msgs[i].Hdr.SetIovlen(1)
	}
	return g, nil
}

// Kind says how the frames were sent: genLiveFrames, or genPacketSocket
// once the kernel refused live frames.
func (g *generator) Kind() string {
	if g.socket {
		return genPacketSocket
	}
	return genLiveFrames
}

// Close closes the program and removes the feeders.
func (g *generator) Close() error {
	var errs []error
	for _, f := range g.feeders {
		errs = append(errs, f.Close())
	}
	g.feeders = nil
	return errors.Join(append(errs, g.prog.Close())...)
}

// send transmits n frames out of out (from its namespace, on the calling
// thread pinned to cpu).
func (g *generator) send(out *iface, n int, cpu int) error {
	if !g.socket {
		err := out.NS.Do(func() error {
			return onCPU(cpu, func() error {
				_, err := g.prog.Run(&ebpf.RunOptions{
					Data:      g.tmpl,
					Repeat:    uint32(n),
					Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
					BatchSize: genBatch,
					Context:   xdpMd{DataEnd: uint32(len(g.tmpl)), IngressIfindex: uint32(out.Index)},
				})
				return err
			})
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("sending %d frames out of %s with BPF_F_TEST_XDP_LIVE_FRAMES: %w", n, out.Name, err)
		}
		g.socket = true
	}
	return g.sendSocket(out, n, cpu)
}

// sendSocket transmits n frames out of out through its feeder, in batches
// of socketBatch, flows in a pseudo-random order.
func (g *generator) sendSocket(out *iface, n int, cpu int) error {
	f, err := g.feederOf(out, cpu)
	if err != nil {
		return err
	}
	size := len(g.tmpl)
	return onCPU(cpu, func() error {
		for n > 0 {
			k := min(n, socketBatch)
			for i := range k {
				// xorshift64: the flows in an order no cache or
				// predictor learns, as the program's prandom does.
				g.rnd ^= g.rnd << 13
				g.rnd ^= g.rnd >> 7
				g.rnd ^= g.rnd << 17
				flow := int(g.rnd & uint64(g.flows-1))
				g.iovs[i].Base = &g.frames[flow*size]
			}
			sent, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&g.msgs[0])), uintptr(k), 0, 0, 0)
			runtime.KeepAlive(g.msgs)
			runtime.KeepAlive(g.iovs)
			runtime.KeepAlive(g.frames)
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) // to the feeder's NAPI thread
			switch errno {
			case 0:
				n -= int(sent)
			case unix.ENOBUFS:
				// The first frame met a full ring on the way: dropped
				// there (the veth's counters say so), not sent again.
				n--
			case unix.EAGAIN, unix.EINTR:
				// Nothing sent: try again.
			default:
				return fmt.Errorf("sending %d frames out of %s from a packet socket: %w", k, out.Name, errno)
			}
		}
		return nil
	})
}

// feeder sends frames out of an interface (out) without live frames: a
// packet socket on x, one end of a veth whose other end, y, runs a program
// that redirects every frame out of out.
type feeder struct {
	x, y   *iface
	fd     int
	devmap *ebpf.Map
	prog   *ebpf.Program
	link   link.Link
}

// feederOf returns out's feeder, made in out's namespace on first use.
func (g *generator) feederOf(out *iface, cpu int) (*feeder, error) {
	if f, ok := g.feeders[out.Index]; ok {
		return f, nil
	}
	f, err := newFeeder(out, cpu)
	if err != nil {
		return nil, err
	}
	g.feeders[out.Index] = f
	return f, nil
}

func newFeeder(out *iface, cpu int) (f *feeder, err error) {
	mac := func(b byte) net.HardwareAddr {
		return net.HardwareAddr{0x02, 0x78, 0x6c, 0xfe, byte(out.Index), b}
	}
	f = &feeder{
		x:  &iface{NS: out.NS, Name: out.Name + "x", MAC: mac(1)},
		y:  &iface{NS: out.NS, Name: out.Name + "y", MAC: mac(2)},
		fd: -1,
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("feeding %s in %s: %w", out.Name, out.NS.Name, err), f.Close())
		}
	}()
	if err := addVeth(f.x, f.y); err != nil {
		return f, err
	}
	if err := out.NS.Do(func() error {
		var err error
		f.devmap, err = newDevmap(out.Index)
		return err
	}); err != nil {
		return f, err
	}
	if f.prog, err = redirectProgram(f.devmap, out.Index); err != nil {
		return f, err
	}
	if f.link, err = attachXDP(f.y, f.prog); err != nil {
		return f, err
	}
	if err := waitUp(context.Background(), f.x, f.y); err != nil {
		return f, err
	}
	// y's NAPI in a thread beside the sender, at its priority: it takes
	// the frames of a sendmmsg call together when the sender yields, so
	// that they reach out's peer in batches, as live frames' do.
	threads, err := threadedNAPI(out.NS, f.y.Name)
	if err != nil {
		return f, err
	}
	if err := placeThreads(threads, cpu, false); err != nil {
		return f, err
	}
	err = out.NS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: receives nothing
		if err != nil {
			return err
		}
		f.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: f.x.Index})
	})
	if err != nil {
		return f, fmt.Errorf("opening a packet socket on %s: %w", f.x.Name, err)
	}
	return f, nil
}

// Close removes the feeder: its socket, program and veth.
func (f *feeder) Close() error {
	var errs []error
	if f.fd >= 0 {
		errs = append(errs, unix.Close(f.fd))
	}
	if f.link != nil {
		errs = append(errs, f.link.Close())
	}
	if f.prog != nil {
		errs = append(errs, f.prog.Close())
	}
	if f.devmap != nil {
		errs = append(errs, f.devmap.Close())
	}
	if f.x.Index != 0 {
		if l, err := f.x.NS.Netlink().LinkByName(f.x.Name); err == nil {
			errs = append(errs, f.x.NS.Netlink().LinkDel(l))
		}
	}
	return errors.Join(errs...)
}

// generatorName says, for a run's output, how its frames were sent: the
// Kind of its generator, as its results carry it (none: no run).
func generatorName(kind string) string {
	if kind == genPacketSocket {
		return "packet-socket feeder (the kernel refused live frames)"
	}
	return "live-frames generator"
}
