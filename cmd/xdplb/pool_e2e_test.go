package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestDaemonPools runs the daemon with services that take their VIP from a
// pool of two addresses: the first two get one each, the third reports the
// exhausted pool in `xdplb status` while the others are served; a restart
// gives the same addresses back, and removing a service frees its address
// for the one that had none.
func TestDaemonPools(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 1})
	dir := t.TempDir()
	bpf := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	socket := filepath.Join(dir, "xdplb.sock")
	config := func(services ...string) string {
		body := "pools:\n  - name: two\n    blocks:\n      - {start: 198.18.100.10, stop: 198.18.100.11}\nservices:\n"
		for _, s := range services {
			body += fmt.Sprintf("  - {name: %s, pool: two, protocol: tcp, ports: [80], mode: dsr, backends: [{address: %s}]}\n", s, topo.Backends[0].IPv4)
		}
		return applianceYAML(testFiles{Socket: socket, State: dir + "/state", BPF: bpf, Metrics: "127.0.0.1:9651"}, "198.18.0.2", "2001:db8::2", body)
	}
	writeAtomically(t, cfgPath, config("a", "b", "c"))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", bpf); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
	})
	addrs := func() map[string]string {
		var vips []VIPInfo
		if err := controlplane.Call(context.Background(), socket, Request{Command: "vips"}, &vips); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, v := range vips {
			out[v.Service] = v.VIP
		}
		return out
	}
	first := addrs()
	got := []string{first["a"], first["b"]}
	slices.Sort(got)
	if want := []string{"198.18.100.10:80/tcp", "198.18.100.11:80/tcp"}; !slices.Equal(got, want) || first["c"] != "" {
		t.Fatalf("VIPs from the pool = %v, want a and b on %v and none for c", first, want)
	}
	var st StatusInfo
	if err := controlplane.Call(context.Background(), socket, Request{Command: "status"}, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Apply.Errors) != 1 || st.Apply.Errors[0] != `c: no address: no free address in pool "two"` {
		t.Errorf("status errors = %q, want c's exhausted pool", st.Apply.Errors)
	}

	// A restart keeps the addresses (kept under paths.state).
	d.stop(t)
	d = startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	if again := addrs(); again["a"] != first["a"] || again["b"] != first["b"] {
		t.Errorf("after a restart: %v, before: %v", again, first)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "pools.json")); err != nil {
		t.Errorf("pool state not saved: %v", err)
	}

	// Removing a frees its address for c; b keeps its own.
	writeAtomically(t, cfgPath, config("b", "c"))
	if out, err := cli(t, bin, "reload", "--socket", socket); err != nil {
		t.Fatalf("xdplb reload: %v\n%s", err, out)
	}
	after := addrs()
	if after["b"] != first["b"] || after["c"] != first["a"] || after["a"] != "" {
		t.Errorf("after removing a: %v; want b on %s and c on a's %s", after, first["b"], first["a"])
	}

	// b removed while the daemon is down: the restarted daemon takes over
	// c's entries and removes b's VIP and entries from the datapath.
	d.stop(t)
	writeAtomically(t, cfgPath, config("c"))
	d = startTestDaemon(t, bin, topo.LB.NS, cfgPath, socket)
	if got := addrs(); len(got) != 1 || got["c"] != first["a"] {
		t.Errorf("after a restart without b: %v", got)
	}
	out, err := cli(t, bin, "explain", "--socket", socket, "--from", "198.18.0.10:40000", "--to", first["b"])
	if err == nil || !strings.Contains(out, "is no VIP") {
		t.Errorf("b's VIP %s is still in the datapath after the restart: %v\n%s", first["b"], err, out)
	}
	var bs []BackendInfo
	if err := controlplane.Call(context.Background(), socket, Request{Command: "backends"}, &bs); err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 {
		t.Errorf("backends after the restart: %+v, want c's one", bs)
	}
}
