package testnet

import (
	"errors"
	"fmt"
	"testing"
)

// fakeTB records what gate does with a test; Skipf and Fatalf return instead
// of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}

func TestGate(t *testing.T) {
	reason := fmt.Errorf("%w: running as uid 1000, not root", ErrNotPrivileged)
	tests := []struct {
		name        string
		env         string
		probe       error
		wantSkipped bool
		wantFailed  bool
		wantMsg     string
	}{
		{name: "privileged", probe: nil},
		{name: "privileged and required", env: "1", probe: nil},
		{
			name: "unprivileged skips", probe: reason, wantSkipped: true,
			wantMsg: "privileged tests cannot run: running as uid 1000, not root (set XDPLB_REQUIRE_PRIVILEGED=1 to fail instead of skipping)",
		},
		{
			name: "unprivileged fails when required", env: "1", probe: reason, wantFailed: true,
			wantMsg: "privileged tests cannot run: running as uid 1000, not root (XDPLB_REQUIRE_PRIVILEGED=1, so this fails instead of skipping)",
		},
		{name: "only 1 requires", env: "true", probe: reason, wantSkipped: true,
			wantMsg: "privileged tests cannot run: running as uid 1000, not root (set XDPLB_REQUIRE_PRIVILEGED=1 to fail instead of skipping)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			getenv := func(k string) string {
				if k != EnvRequirePrivileged {
					t.Errorf("getenv(%q), want only %s", k, EnvRequirePrivileged)
				}
				return tt.env
			}
			gate(f, getenv, func() error { return tt.probe })
			if f.skipped != tt.wantSkipped || f.failed != tt.wantFailed || f.msg != tt.wantMsg {
				t.Errorf("gate: skipped=%v failed=%v msg=%q, want skipped=%v failed=%v msg=%q",
					f.skipped, f.failed, f.msg, tt.wantSkipped, tt.wantFailed, tt.wantMsg)
			}
		})
	}
}

func TestCheckPrivilegesNotRoot(t *testing.T) {
	err := checkPrivileges(1000)
	if !errors.Is(err, ErrNotPrivileged) || err.Error() != "privileged tests cannot run: running as uid 1000, not root" {
		t.Errorf("checkPrivileges(1000) = %v", err)
	}
}

func TestCheckPrivilegesRoot(t *testing.T) {
	RequirePrivileged(t)
	// RequirePrivileged passed, so the probe found everything; run it
	// again, uncached, to see that it cleans up after itself.
	before := netnsNames(t)
	if err := checkPrivileges(0); err != nil {
		t.Fatalf("checkPrivileges(0) = %v", err)
	}
	if after := netnsNames(t); len(after) != len(before) {
		t.Errorf("namespaces before the probe %v, after %v", before, after)
	}
}

func TestHasFilesystem(t *testing.T) {
	const fs = "nodev\tsysfs\nnodev\tbpf\n\text4\nnodev\tbpffoo\n"
	for name, want := range map[string]bool{"bpf": true, "ext4": true, "sysfs": true, "bp": false, "xfs": false} {
		if got := hasFilesystem(fs, name); got != want {
			t.Errorf("hasFilesystem(%q) = %v, want %v", name, got, want)
		}
	}
}
