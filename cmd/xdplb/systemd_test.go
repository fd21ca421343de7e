package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdUnit checks the unit with systemd-analyze verify (any warning
// fails) and that it has what the daemon relies on.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("systemd/xdplb.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
		"RuntimeDirectory=xdplb", "StateDirectory=xdplb", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"ReadWritePaths=/sys/fs/bpf", "CapabilityBoundingSet=", "ExecStartPre=/usr/local/bin/xdplb check",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("XDPLB_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("systemd-analyze is missing (make deps installs it)")
		}
		t.Skip("systemd-analyze is missing")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	// verify wants the binaries the unit runs to exist.
	path := filepath.Join(t.TempDir(), "xdplb.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/xdplb", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestNotify checks the datagrams sent to systemd.
func TestNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	notify("READY=1", "STATUS=serving")
	buf := make([]byte, 256)
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "READY=1\nSTATUS=serving" {
		t.Errorf("notify sent %q", got)
	}

}
