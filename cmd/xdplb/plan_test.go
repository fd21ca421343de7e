package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/config"
)

func (f *fakeAPI) Plan(name string, data []byte) (PlanInfo, error) {
	f.record(fmt.Sprintf("Plan(%q, %d bytes)", name, len(data)))
	if data == nil {
		return f.planOwn, nil
	}
	return f.plan, nil
}

// fakePlan is a plan with a bit of everything: a backend added to a
// service (slots move), a service added, one removed, an announcer that
// starts and stops.
func fakePlan() PlanInfo {
	return PlanInfo{
		File: "/etc/xdplb/next.yaml", Running: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Candidate: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", Changed: true,
		Services: []ServicePlan{{Name: "dns", Action: "add"}, {Name: "old", Action: "remove"}, {Name: "web", Action: "change"}},
		VIPs: []VIPPlanInfo{
			{VIP: "198.18.10.10:80/tcp", Service: "web", Action: "change", Changes: []string{"backend 198.18.1.14 added"},
				OldTableSize: 251, TableSize: 251, SlotsMoved: 63, Moved: 0.251,
				Moves: []MoveInfo{
					{From: "198.18.1.11", To: "198.18.1.14", Slots: 22, Share: 0.0876},
					{From: "198.18.1.12", To: "198.18.1.14", Slots: 21, Share: 0.0837},
					{From: "198.18.1.13", To: "198.18.1.14", Slots: 20, Share: 0.0797},
				},
				Pins: PinEstimate{Pinned: 3, PinsLost: 0, NewFlows: 1200, Window: 900, Estimate: 301,
					Basis: "TCP SYNs to the VIP in the last 15m0s (flows younger than conntrack.idleTimeout count as live) × 25.10% of the hash space moving"}},
			{VIP: "198.18.10.11:53/udp", Service: "dns", Action: "add", TableSize: 251, SlotsMoved: 251, Moved: 1},
			{VIP: "198.18.10.12:443/tcp", Service: "old", Action: "remove", OldTableSize: 251, SlotsMoved: 251, Moved: 1,
				Pins: PinEstimate{Pinned: 1, PinsLost: 1, Basis: "the VIP is removed: its flows end"}},
			{VIP: "198.18.10.10:443/tcp", Service: "web", Action: "same", OldTableSize: 251, TableSize: 251},
			{VIP: "198.18.10.10:8443/tcp", Service: "web", Action: "change", Changes: []string{"backend 198.18.1.15 added"},
				OldTableSize: 251, TableSize: 251, Later: &LaterInfo{Pending: []string{"198.18.1.15"}, SlotsMoved: 63, Moved: 0.2498},
				Pins: PinEstimate{Pinned: 0, NewFlows: 400, Window: 900, Estimate: 100,
					Basis: "TCP SYNs to the VIP in the last 15m0s (flows younger than conntrack.idleTimeout count as live) × 24.98% of the hash space moving"}},
		},
		Announce: []AnnouncePlan{{Announcer: "eth0", Start: []string{"198.18.10.11"}, Stop: []string{"198.18.10.12"}}},
		Other:    []string{"service web: health check tcp -> http /healthz (a backend keeps whether it is up until the new check decides)"},
	}
}

func fakePlanSame() PlanInfo {
	return PlanInfo{File: "/etc/xdplb/xdplb.yaml", Running: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Candidate: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", VIPs: []VIPPlanInfo{
			{VIP: "198.18.10.10:80/tcp", Service: "web", Action: "same", OldTableSize: 251, TableSize: 251}}}
}

// exitCode is the status main exits with for err.
func exitCode(err error) int {
	var x exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &x):
		return x.code
	case errors.As(err, new(usageError)):
		return 2
	}
	return 1
}

func TestCLIPlan(t *testing.T) {
	api := newFakeAPI()
	api.plan, api.planOwn = fakePlan(), fakePlanSame()
	sock := startControl(t, api)
	file := filepath.Join("..", "..", "config", "testdata", "example.yaml")
	abs, _ := filepath.Abs(file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	got, err := runCLI(t, "plan", file, "--socket", sock)
	if code := exitCode(err); code != 1 {
		t.Errorf("plan with changes: exit status %d (%v), want 1", code, err)
	}
	checkGolden(t, "plan", []byte(got))
	if diff := cmp.Diff([]string{fmt.Sprintf("Plan(%q, %d bytes)", abs, len(data))}, api.recorded()); diff != "" {
		t.Errorf("daemon calls (-want +got):\n%s", diff)
	}
	got, err = runCLI(t, "plan", file, "--socket", sock, "-o", "json")
	if code := exitCode(err); code != 1 {
		t.Errorf("plan -o json with changes: exit status %d, want 1", code)
	}
	var p PlanInfo
	if err := json.Unmarshal([]byte(got), &p); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fakePlan(), p); diff != "" {
		t.Errorf("plan -o json (-want +got):\n%s", diff)
	}

	got, err = runCLI(t, "reload", "--plan", "--socket", sock)
	if code := exitCode(err); code != 0 {
		t.Errorf("reload --plan with nothing to change: exit status %d (%v), want 0", code, err)
	}
	checkGolden(t, "plan_same", []byte(got))
}

// TestCLIPlanErrors: a file with errors is reported as `xdplb check`
// reports it, exit status 2, and the daemon is not asked.
func TestCLIPlanErrors(t *testing.T) {
	api := newFakeAPI()
	sock := startControl(t, api)
	file := filepath.Join("testdata", "next-bad.yaml")
	got, err := runCLI(t, "plan", file, "--socket", sock)
	if code := exitCode(err); code != 2 {
		t.Errorf("plan of a bad file: exit status %d (%v), want 2", code, err)
	}
	checkErr := config.Check(file)
	if checkErr == nil {
		t.Fatal("the bad file passes check")
	}
	for _, line := range strings.Split(checkErr.Error(), "\n") {
		if !strings.Contains(got, "  "+line+"\n") {
			t.Errorf("plan does not report %q as check does; it printed:\n%s", line, got)
		}
	}
	if calls := api.recorded(); len(calls) > 0 {
		t.Errorf("a bad file asked the daemon: %v", calls)
	}
	checkGolden(t, "plan_errors", []byte(got))

	// The daemon's own file with errors (reload --plan): the same, from the
	// daemon.
	api.planOwn = PlanInfo{File: "/etc/xdplb/xdplb.yaml", Errors: []string{`services[0].ports[1]: 70000 is not a port (line 10, column 19)`}}
	_, err = runCLI(t, "reload", "--plan", "--socket", sock)
	if code := exitCode(err); code != 2 {
		t.Errorf("reload --plan of a bad file: exit status %d, want 2", code)
	}
	// No daemon: trouble too.
	_, err = runCLI(t, "plan", filepath.Join("..", "..", "config", "testdata", "example.yaml"), "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code := exitCode(err); code != 2 || !strings.Contains(err.Error(), "xdplb is not running") {
		t.Errorf("plan without a daemon: exit status %d (%v), want 2", code, err)
	}
}
