package controlplane

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/xdp"
)

// TestPlanAgainstRunning plans candidate files against a running plane:
// nothing is applied by a plan, the slots it says move are those the
// reload then moves, a pin to a removed backend is counted, and the file
// errors are check's.
func TestPlanAgainstRunning(t *testing.T) {
	dir, bpf := testFiles(t)
	path := writeConfig(t, dir, bpf, testSeed, webService)
	p, _, _ := startPlane(t, path)
	ctx := context.Background()
	k := xdp.VIPKey{Addr: netip.MustParseAddr("198.18.10.10"), Port: 80, Proto: xdp.TCP}
	before, err := p.dp.Table(k)
	if err != nil {
		t.Fatal(err)
	}

	// The running file: nothing changes.
	same, err := p.Plan(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if same.Changed || len(same.Errors) > 0 {
		t.Errorf("plan of the running file: %+v, want no change", same)
	}

	// A pinned flow on the backend the candidate removes.
	if err := p.dp.PinFlow(xdp.Flow{Src: netip.MustParseAddrPort("198.18.0.100:40000"), Dst: netip.MustParseAddrPort("198.18.10.10:80"), Proto: xdp.TCP, BackendID: p.rec.Status().VIPs[0].Backends[0].ID}); err != nil {
		t.Fatal(err)
	}
	next := strings.Replace(webService, "{address: 198.18.0.21}", "{address: 198.18.0.22}", 1) + `  - name: dns
    address: 198.18.10.11
    protocol: udp
    ports: [53]
    mode: dsr
    backends:
      - {address: 198.18.0.21}
`
	cand := writeConfig(t, t.TempDir(), bpf, testSeed, next)
	data, err := os.ReadFile(cand)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := p.Plan(ctx, "next.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := p.dp.Table(k); !slicesEqual(before, after) {
		t.Fatal("the plan changed the datapath's table")
	}
	if !plan.Changed {
		t.Errorf("plan: no change")
	}
	var got []string
	for _, v := range plan.VIPs {
		got = append(got, v.Action+" "+v.VIP)
	}
	if diff := cmp.Diff([]string{"change 198.18.10.10:80/tcp", "add 198.18.10.11:53/udp"}, got); diff != "" {
		t.Errorf("VIPs (-want +got):\n%s", diff)
	}
	web := plan.VIPs[0]
	if web.Pins.Pinned != 1 || web.Pins.PinsLost != 1 {
		t.Errorf("pins %+v, want 1 pinned, 1 lost", web.Pins)
	}
	if diff := cmp.Diff([]MoveInfo{{From: "198.18.0.21", To: "198.18.0.22", Slots: web.TableSize, Share: 1}}, web.Moves); diff != "" {
		t.Errorf("moves (-want +got):\n%s", diff)
	}

	// Apply it: the table moves as planned.
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := p.reload(ctx, "test"); r.Result != "success" {
		t.Fatalf("reload: %+v", r)
	}
	after, err := p.dp.Table(k)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range before {
		if before[i] != after[i] {
			moved++
		}
	}
	if moved != web.SlotsMoved {
		t.Errorf("the reload moved %d slots, the plan said %d", moved, web.SlotsMoved)
	}

	// Errors, as check reports them.
	bad, err := p.Plan(ctx, "bad.yaml", []byte("services:\n  - name: x\n    adress: 198.18.10.12\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(bad.Errors) == 0 || !strings.Contains(strings.Join(bad.Errors, "\n"), "adress: unknown key; did you mean address? (line 3, column 5)") {
		t.Errorf("errors %q", bad.Errors)
	}
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
