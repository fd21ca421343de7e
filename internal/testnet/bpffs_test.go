package testnet

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func TestMountBPFFS(t *testing.T) {
	var dir string
	t.Run("mount", func(t *testing.T) {
		dir = MountBPFFS(t)
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			t.Fatalf("statfs(%s): type %#x, %v; want bpffs", dir, st.Type, err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Pinning: ebpf.PinNone})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, "m")); err != nil {
			t.Fatalf("pinning: %v", err)
		}
	})
	// The subtest's cleanup unmounted it.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		t.Errorf("%s is still a bpffs after the test", dir)
	}
}
