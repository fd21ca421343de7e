package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/scenario"
)

// exitOf is the exit status of a command run with exec.
func exitOf(err error) int {
	var x *exec.ExitError
	if errors.As(err, &x) {
		return x.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestOpsCommandsEndToEnd runs the binary's monitor, top and plan against
// the real daemon in the namespace topology: a client's SYN to a port
// without a service shows in the monitor as a drop with its reason and
// flow; top shows the VIPs' traffic; plan of a weight change says slots
// move (exit status 1), and reload --plan of the running file that nothing
// changes (exit status 0).
func TestOpsCommandsEndToEnd(t *testing.T) {
	o := startOpsDaemon(t)
	ctx := context.Background()
	if _, err := o.srv.Connections(ctx, scenario.VIP4, 60, 4); err != nil {
		t.Fatal(err)
	}

	// monitor: a drop, as it happens.
	mctx, stop := context.WithTimeout(ctx, 60*time.Second)
	defer stop()
	mon := exec.CommandContext(mctx, o.bin, "monitor", "--socket", o.socket, "-o", "json", "--type", "drop", "--reason", "no_service")
	out, err := mon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	mon.Stderr = os.Stderr
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stop()
		_ = mon.Wait()
	}()
	lines := bufio.NewScanner(out)
	next := func() MonitorEvent {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("xdplb monitor ended: %v", lines.Err())
		}
		var e MonitorEvent
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			t.Fatalf("xdplb monitor -o json: %q: %v", lines.Text(), err)
		}
		return e
	}
	if e := next(); e.Type != "start" {
		t.Fatalf("first event %+v, want start", e)
	}
	// A SYN to port 81 of the VIP: no service there.
	go func() {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if c, err := o.topo.Client.Dial(dctx, "tcp", netip.AddrPortFrom(scenario.VIP4, 81).String()); err == nil {
			c.Close()
		}
	}()
	e := next()
	client := o.topo.Client.IPv4.String()
	if e.Type != "drop" || e.Reason != "drop/no_service" || !strings.HasPrefix(e.Flow, client+":") || !strings.HasSuffix(e.Flow, " -> 198.18.100.1:81") ||
		!e.SYN || e.Interface != "eth0" || !strings.Contains(e.Headers, "ipv4 "+client+" > 198.18.100.1") || !strings.Contains(e.Headers, "> 81") {
		t.Errorf("monitor event %+v, want the client's SYN to 198.18.100.1:81 dropped, no_service, on eth0", e)
	}

	// top: the VIPs and their backends, with traffic.
	if _, err := o.srv.Connections(ctx, scenario.VIP4, 30, 4); err != nil {
		t.Fatal(err)
	}
	top, err := cli(t, o.bin, "top", "--once", "--socket", o.socket)
	if err != nil {
		t.Fatalf("xdplb top --once: %v\n%s", err, top)
	}
	for _, want := range []string{"web4     198.18.100.1:80/tcp", "web6     [2001:db8:100::1]:80/tcp", o.addrs[0], "Datapath drops/s by reason:"} {
		if !strings.Contains(top, want) {
			t.Errorf("xdplb top --once does not show %q:\n%s", want, top)
		}
	}

	// plan: the running file changes nothing; a weight change moves slots.
	same, err := cli(t, o.bin, "reload", "--plan", "--socket", o.socket)
	if exitOf(err) != 0 || !strings.Contains(same, "Nothing would change.") {
		t.Errorf("xdplb reload --plan of the running file: exit %d\n%s", exitOf(err), same)
	}
	next2 := filepath.Join(t.TempDir(), "next.yaml")
	cfg := strings.Replace(o.config, "{address: "+o.addrs[0]+"}", "{address: "+o.addrs[0]+", weight: 3}", 1)
	if err := os.WriteFile(next2, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	plan, err := cli(t, o.bin, "plan", next2, "--socket", o.socket)
	if exitOf(err) != 1 || !strings.Contains(plan, "VIP 198.18.100.1:80/tcp (service web4): change") ||
		!strings.Contains(plan, "backend "+o.addrs[0]+" weight 1 -> 3") || !strings.Contains(plan, "slots move") {
		t.Errorf("xdplb plan of a weight change: exit %d, want 1\n%s", exitOf(err), plan)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(o.config, "protocol: tcp", "protocol: sctp", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	errs, err := cli(t, o.bin, "plan", bad, "--socket", o.socket)
	check, _ := cli(t, o.bin, "check", bad)
	if exitOf(err) != 2 || !strings.Contains(errs, strings.TrimPrefix(strings.TrimSpace(check), "xdplb: ")) {
		t.Errorf("xdplb plan of a bad file: exit %d, want 2, and check's errors (%q):\n%s", exitOf(err), check, errs)
	}
}
