package xdp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/testnet"
)

func programNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// TestObjectPrograms checks that the object the daemon loads holds the
// forwarding program and nothing else, and that the benchmark wrappers are
// in an object of their own.
func TestObjectPrograms(t *testing.T) {
	lb, err := loadLb()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := programNames(lb), []string{"xdplb"}; !slices.Equal(got, want) {
		t.Errorf("programs of the lb object: %v, want %v", got, want)
	}
	if _, ok := lb.Maps["bench_frames"]; ok {
		t.Error("the lb object has the map bench_frames")
	}
	bench, err := loadBench()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := programNames(bench), []string{"xdplb_bench", "xdplb_bench_floor", "xdplb_bench_floor_grow"}; !slices.Equal(got, want) {
		t.Errorf("programs of the bench object: %v, want %v", got, want)
	}
	if _, ok := bench.Maps["bench_frames"]; !ok {
		t.Error("the bench object has no map bench_frames")
	}
}

// TestPinnedPrograms opens a datapath with a pin path and checks that the
// only program it pins is the forwarding program, and that no bench map is
// pinned either, after a benchmark run on it.
func TestPinnedPrograms(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	d, err := Open(Options{PinPath: pin, MaxVIPs: 16, MaxBackends: 64, MaxFlows: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f := BenchFrame{Data: benchTCPFrame(netip.AddrPortFrom(benchClient, benchSrcPort), netip.AddrPortFrom(benchNonVIP, benchPort), false)}
	if _, v, _, err := d.BenchRun(f, 1); err != nil || v != XDPPass {
		t.Fatalf("bench run: verdict %d, %v; want XDP_PASS", v, err)
	}
	entries, err := os.ReadDir(pin)
	if err != nil {
		t.Fatal(err)
	}
	var progs []string
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, "bench") {
			t.Errorf("%s is pinned", name)
		}
		id, ok := pinnedProgramID(t, filepath.Join(pin, name))
		if !ok {
			continue // a map or a link
		}
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		progs = append(progs, info.Name)
	}
	if want := []string{"xdplb"}; !slices.Equal(progs, want) {
		t.Errorf("pinned programs: %v, want %v", progs, want)
	}
}

// pinnedProgramID opens a pinned object and, when it is a program, returns
// its id (from the fd's fdinfo, which names maps, programs and links alike).
func pinnedProgramID(t *testing.T, path string) (ebpf.ProgramID, bool) {
	t.Helper()
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		t.Fatal(err)
	}
	attr := struct {
		pathname uint64
		fd       uint32
		flags    uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(p)))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if errno != 0 {
		t.Fatalf("opening %s: %v", path, errno)
	}
	defer unix.Close(int(fd))
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(info), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if _, ok := fields["prog_type"]; !ok { // a link has a prog_id, but no prog_type
		return 0, false
	}
	var id ebpf.ProgramID
	if _, err := fmt.Sscan(fields["prog_id"], &id); err != nil {
		t.Fatalf("%s: fdinfo prog_id %q: %v", path, fields["prog_id"], err)
	}
	return id, true
}
