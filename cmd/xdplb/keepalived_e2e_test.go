package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// keepalivedNotify is the notify script of docs/announce.md, with the
// binary and the socket of a test appliance filled in.
const keepalivedNotify = `#!/bin/sh
# keepalived calls: notify INSTANCE|GROUP NAME MASTER|BACKUP|FAULT|STOP PRIORITY
case "$3" in
MASTER) exec %[1]s announce --state active --socket %[2]s ;;
*)      exec %[1]s announce --state standby --socket %[2]s ;;
esac
`

// keepalived is keepalived's VRRP process running in a host's namespace.
type keepalived struct {
	t   *testing.T
	dir string
	cmd *exec.Cmd
	out *os.File
}

// startKeepalived runs keepalived (VRRP only) in host's namespace with one
// instance on eth0 at priority, whose notify script tells the appliance
// listening on socket whether it is active. It is killed and its files
// removed when the test ends.
func startKeepalived(t *testing.T, bin string, host *testnet.Host, priority int, socket string) *keepalived {
	t.Helper()
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatalf("keepalived is not installed (%v): apt-get install keepalived", err)
	}
	dir, err := os.MkdirTemp("", "xdplb-keepalived")
	if err != nil {
		t.Fatal(err)
	}
	k := &keepalived{t: t, dir: dir}
	t.Cleanup(k.stop)
	notify := filepath.Join(dir, "notify.sh")
	if err := os.WriteFile(notify, []byte(fmt.Sprintf(keepalivedNotify, bin, socket)), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global_defs {
    router_id %[1]s
    script_user root
    enable_script_security
}
vrrp_instance xdplb {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority %[2]d
    advert_int 1
    notify %[3]s
}
`, host.Name, priority, notify)
	cfg := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	k.out, err = os.Create(filepath.Join(dir, "keepalived.log"))
	if err != nil {
		t.Fatal(err)
	}
	k.cmd = host.NS.Command(context.Background(), "keepalived", "--vrrp", "--dont-fork", "--log-console", "--log-detail",
		"--use-file", cfg, "--pid", filepath.Join(dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(dir, "vrrp.pid"))
	k.cmd.Stdout, k.cmd.Stderr = k.out, k.out
	if err := k.cmd.Start(); err != nil {
		t.Fatalf("starting keepalived: %v", err)
	}
	return k
}

// kill stops keepalived at once, as a dying host does: no last advert of
// priority 0.
func (k *keepalived) kill() {
	if k.cmd == nil {
		return
	}
	// keepalived runs its VRRP process as a child: kill the whole group.
	_ = k.cmd.Process.Kill()
	_ = k.cmd.Wait()
	if b, err := os.ReadFile(filepath.Join(k.dir, "vrrp.pid")); err == nil {
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err == nil && pid > 0 {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	}
	k.cmd = nil
}

func (k *keepalived) stop() {
	k.kill()
	if k.t.Failed() {
		if b, err := os.ReadFile(filepath.Join(k.dir, "keepalived.log")); err == nil {
			k.t.Logf("keepalived log:\n%s", lastLines(string(b), 40))
		}
	}
	k.out.Close()
	os.RemoveAll(k.dir)
}

// l2State is `xdplb announce -o json` of the appliance.
func l2State(t *testing.T, bin, socket string) L2StateInfo {
	t.Helper()
	out, err := cli(t, bin, "announce", "--socket", socket, "-o", "json")
	if err != nil {
		t.Fatalf("xdplb announce: %v\n%s", err, out)
	}
	var s L2StateInfo
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("xdplb announce -o json: %v\n%s", err, out)
	}
	return s
}

// TestActiveStandbyKeepalived runs two appliances on the client's LAN with
// announce.l2.mode external and keepalived (VRRP) on both deciding which
// one answers ARP and NDP for the VIPs. The higher-priority one becomes
// active, the other stays silent; the client's 100 held connections go
// through the active one. Then the active appliance dies (its link, its
// keepalived and its daemon): the standby takes over when VRRP says so,
// sends its gratuitous announcements at once, the client's neighbour entries
// move to it, and the held connections continue. It logs the failover time
// and how many connections broke. Before that, the active daemon restarts
// and resumes answering without keepalived telling it again.
func TestActiveStandbyKeepalived(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 5})
	client := topo.Client
	backends, first, second := topo.Backends[:3], topo.Backends[3], topo.Backends[4]
	startNameServers(t, backends...)
	addAnnVIPs(t, backends...)
	bpfRoot := testnet.MountBPFFS(t)
	services := annServices(backends, "")
	app1 := startApplianceL2(t, bin, first, bpfRoot, "127.0.0.1:9650", "external", services...)
	app2 := startApplianceL2(t, bin, second, bpfRoot, "127.0.0.1:9651", "external", services...)
	// External mode: both start on standby until keepalived says.
	for _, a := range []*annAppliance{app1, app2} {
		if s := l2State(t, bin, a.socket); s.State != "standby" || s.Mode != "external" {
			t.Fatalf("%s at start: %+v, want standby in external mode", a.host.Name, s)
		}
	}
	checkUnanswered(t, client, time.Second, "with both appliances on standby", annVIPs...)

	ka1 := startKeepalived(t, bin, first, 150, app1.socket)
	startKeepalived(t, bin, second, 100, app2.socket)
	waitFor(t, 30*time.Second, "the first appliance active", func() bool { return l2State(t, bin, app1.socket).State == "active" })
	if s := l2State(t, bin, app2.socket); s.State != "standby" {
		t.Fatalf("the second appliance is %s while the first is active", s.State)
	}
	app1.waitAnnounced(annVIPStrings(annVIPs...), 5*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	const n = 50
	var conns []*heldConn
	for _, v := range annVIPs {
		conns = append(conns, holdConnections(ctx, t, client, v, n, &wg)...)
	}
	checkNeighMAC(t, client, first.MAC, "the active appliance", annVIPs...)
	if t.Failed() {
		t.FailNow()
	}

	// A restart of the active daemon: it resumes the state it was told
	// (keepalived, still master, tells it nothing).
	app1.d.stop(t)
	app1.d = startTestDaemon(t, bin, first.NS, app1.cfgPath, app1.socket)
	if s := l2State(t, bin, app1.socket); s.State != "active" {
		t.Errorf("the active appliance's daemon restarted on %s, want active", s.State)
	}
	app1.waitAnnounced(annVIPStrings(annVIPs...), 5*time.Second)
	time.Sleep(2 * time.Second)
	if nb, why := broken(conns); nb != 0 {
		t.Errorf("the active daemon's restart broke %d of %d held connections: %v", nb, len(conns), why)
	}

	// The active appliance dies: link first (nothing more leaves it),
	// then keepalived and the daemon.
	link, err := first.NS.Netlink().LinkByName(first.Link)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := first.NS.Netlink().LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	ka1.kill()
	_ = app1.d.cmd.Process.Kill()
	<-app1.d.done
	app1.d.done <- nil

	var active, moved time.Duration
	deadline := start.Add(30 * time.Second)
	for (active == 0 || moved == 0) && time.Now().Before(deadline) {
		if active == 0 && l2State(t, bin, app2.socket).State == "active" {
			active = time.Since(start)
		}
		if moved == 0 {
			all := true
			for _, v := range annVIPs {
				nb, ok := testnet.NeighborOf(t, client, v)
				all = all && testnet.UsableMAC(nb, ok) == second.MAC.String()
			}
			if all {
				moved = time.Since(start)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if active == 0 || moved == 0 {
		t.Fatalf("30s after the active appliance died: the second is active after %v, the client's entries moved after %v (0: not yet)", active, moved)
	}
	t.Logf("failover: the second appliance was told active %v after the first died; the client's neighbour entries pointed to it %v after", active.Round(time.Millisecond), moved.Round(time.Millisecond))
	checkNeighMAC(t, client, second.MAC, "the second appliance", annVIPs...)
	time.Sleep(3 * time.Second)
	nb, why := broken(conns)
	t.Logf("failover: %d of %d held connections broken %v", nb, len(conns), why)
	if nb != 0 {
		t.Errorf("failover: %d of %d held connections broke, want 0: %v", nb, len(conns), why)
	}
	for _, v := range annVIPs {
		checkConnections(t, client, v, 30, backends)
	}
}
