package testnet

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// xdpPass is the XDP_PASS verdict.
const xdpPass = 2

// newPassProgram loads an XDP program that passes every packet. Attached to
// the peer of a veth, it makes XDP_TX and redirects onto that veth arrive (see
// NewTopology).
func newPassProgram() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "testnet_pass",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, xdpPass),
			asm.Return(),
		},
	})
}
