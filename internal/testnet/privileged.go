package testnet

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

// EnvRequirePrivileged is the environment variable that turns a skipped
// privileged test into a failed one when set to "1". CI sets it.
const EnvRequirePrivileged = "XDPLB_REQUIRE_PRIVILEGED"

// ErrNotPrivileged is wrapped by the reason RequirePrivileged gives when the
// process cannot run privileged tests.
var ErrNotPrivileged = errors.New("privileged tests cannot run")

// RequirePrivileged skips t with the reason when the process is not root or a
// kernel feature the privileged tests need is missing (network namespaces,
// BPF maps, XDP programs, bpffs), and fails t instead of skipping when
// XDPLB_REQUIRE_PRIVILEGED=1. The probe runs once per process.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	gate(t, os.Getenv, probePrivileged)
}

var probePrivileged = sync.OnceValue(func() error { return checkPrivileges(os.Geteuid()) })

// gate skips or fails t when probe reports a reason. It returns after calling
// Skip or Fatal so that a fake testing.TB can record the call.
func gate(t testing.TB, getenv func(string) string, probe func() error) {
	t.Helper()
	err := probe()
	if err == nil {
		return
	}
	if getenv(EnvRequirePrivileged) == "1" {
		t.Fatalf("%v (%s=1, so this fails instead of skipping)", err, EnvRequirePrivileged)
		return
	}
	t.Skipf("%v (set %s=1 to fail instead of skipping)", err, EnvRequirePrivileged)
}

// checkPrivileges tries what the privileged tests need, cheapest first.
func checkPrivileges(euid int) error {
	if euid != 0 {
		return fmt.Errorf("%w: running as uid %d, not root", ErrNotPrivileged, euid)
	}
	ns, err := NewNS("xprobe")
	if err != nil {
		return fmt.Errorf("%w: creating a network namespace: %v", ErrNotPrivileged, err)
	}
	if err := ns.Close(); err != nil {
		return fmt.Errorf("%w: deleting network namespace %s: %v", ErrNotPrivileged, ns.Name, err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("%w: creating a BPF array map: %v", ErrNotPrivileged, err)
	}
	m.Close()
	prog, err := newPassProgram()
	if err != nil {
		return fmt.Errorf("%w: loading an XDP program: %v", ErrNotPrivileged, err)
	}
	prog.Close()
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotPrivileged, err)
	}
	if !hasFilesystem(string(fs), "bpf") {
		return fmt.Errorf("%w: the kernel has no bpf filesystem", ErrNotPrivileged)
	}
	return nil
}

func hasFilesystem(procFilesystems, name string) bool {
	for _, line := range strings.Split(procFilesystems, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}
