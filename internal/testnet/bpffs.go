package testnet

import (
	"testing"

	"golang.org/x/sys/unix"
)

// MountBPFFS mounts a fresh bpffs on a temporary directory for t and unmounts
// it in t.Cleanup. Pins made there outlive the process that made them (until
// the unmount), which tests of restart continuity need; a bpffs that `ip netns
// exec` mounts disappears with the command.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	RequirePrivileged(t)
	dir := t.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs on %s: %v", dir, err)
	}
	// Registered after TempDir's cleanup, so it runs before the removal.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting bpffs %s: %v", dir, err)
		}
	})
	return dir
}
