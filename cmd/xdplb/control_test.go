package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// fakeAPI answers the control socket from fixed data. It records the
// arguments it was called with.
type fakeAPI struct {
	status   StatusInfo
	vips     []VIPInfo
	backends []BackendInfo
	flows    []FlowInfo
	maglev   map[string]MaglevInfo
	explain  map[string]ExplainInfo // by "FROM VIP"
	reload   ReloadInfo
	plan     PlanInfo // of a file sent
	planOwn  PlanInfo // of the daemon's own file
	// monitorDone, when set, is closed once Monitor has sent its events.
	monitorDone chan struct{}
	topCalls    int // Top calls so far
	bgp         BGPInfo
	drain       DrainInfo
	l2          L2StateInfo
	// newFlows, when set, makes VIPs answer one VIP with this many new
	// flows (drain's waiting reads them).
	newFlows func() uint64

	mu    sync.Mutex
	calls []string
}

func (f *fakeAPI) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeAPI) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeAPI) Status() StatusInfo { f.record("Status()"); return f.status }
func (f *fakeAPI) VIPs() []VIPInfo {
	f.record("VIPs()")
	if f.newFlows != nil {
		v := VIPInfo{Service: "web", VIP: fakeVIP}
		v.Stats.NewFlows = f.newFlows()
		return []VIPInfo{v}
	}
	return f.vips
}
func (f *fakeAPI) Backends() []BackendInfo { f.record("Backends()"); return f.backends }
func (f *fakeAPI) Reload() ReloadInfo      { f.record("Reload()"); return f.reload }

func (f *fakeAPI) BGP() (BGPInfo, error) { f.record("BGP()"); return f.bgp, nil }

func (f *fakeAPI) SetDrained(drained bool) (DrainInfo, error) {
	f.record(fmt.Sprintf("SetDrained(%v)", drained))
	d := f.drain
	d.Drained = drained
	if !drained {
		d.Routes = f.bgp.Routes
	}
	return d, nil
}

func (f *fakeAPI) L2State(state string) (L2StateInfo, error) {
	f.record(fmt.Sprintf("L2State(%q)", state))
	s := f.l2
	if state != "" {
		s.State = state
	}
	if s.State == "standby" {
		s.VIPs = nil
	}
	return s, nil
}

func (f *fakeAPI) Flows(vip string) ([]FlowInfo, error) {
	f.record(fmt.Sprintf("Flows(%q)", vip))
	if vip == "" {
		return f.flows, nil
	}
	var out []FlowInfo
	for _, fl := range f.flows {
		if fl.VIP == vip {
			out = append(out, fl)
		}
	}
	return out, nil
}

func (f *fakeAPI) Maglev(vip string) (MaglevInfo, error) {
	f.record(fmt.Sprintf("Maglev(%q)", vip))
	m, ok := f.maglev[vip]
	if !ok {
		return MaglevInfo{}, fmt.Errorf("no VIP %s", vip)
	}
	return m, nil
}

func (f *fakeAPI) Explain(from, vip string, syn bool) (ExplainInfo, error) {
	f.record(fmt.Sprintf("Explain(%q, %q, %v)", from, vip, syn))
	e, ok := f.explain[from+" "+vip]
	if !ok {
		return ExplainInfo{}, fmt.Errorf("%s is no VIP: the datapath passes such packets to the host's stack", vip)
	}
	return e, nil
}

var (
	fakeStarted = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	fakeNow     = fakeStarted.Add(2*time.Hour + 5*time.Minute + 7*time.Second)
	fakeVIP     = "198.18.10.10:80/tcp"
)

// newFakeAPI returns a fake with a little of everything, listed out of
// order so that the CLI's sorting shows.
func newFakeAPI() *fakeAPI {
	return &fakeAPI{
		bgp: BGPInfo{
			LocalASN: 65010, RouterID: "198.18.0.1",
			Routes: []string{"198.18.10.10/32", "2001:db8:10::1/128"},
			Peers: []BGPPeerInfo{
				{Address: "2001:db8::fe", ASN: 65000, State: "active"},
				{Address: "198.18.0.254", ASN: 65000, State: "established", Since: fakeNow.Add(-(3*time.Hour + 4*time.Minute)), HoldTime: 9 * time.Second, Sent: 1, Received: 3},
			},
		},
		drain: DrainInfo{Mode: "withdraw", Routes: []string{}},
		l2:    L2StateInfo{Mode: "external", State: "active", VIPs: []string{"198.18.10.10", "2001:db8:10::1"}},
		status: StatusInfo{
			Version: "v0.3.0 1a2b3c4d",
			Started: fakeStarted,
			Interfaces: []InterfaceInfo{
				{Name: "eth1", IfIndex: 3, Mode: "generic", ProgramID: 118},
				{Name: "eth0", IfIndex: 2, Mode: "native", ProgramID: 117},
			},
			Config: ConfigInfo{
				File:     "/etc/xdplb/xdplb.yaml",
				SHA256:   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
				LoadedAt: fakeStarted.Add(2 * time.Hour),
			},
			LastReload: ReloadInfo{
				At: fakeStarted.Add(2*time.Hour + 4*time.Minute), Trigger: "file", Result: "failure",
				Errors: []string{
					`services[0].backends[1].address: "198.18.1.300" is not an IP address (line 31, column 18)`,
					`services[1].ports[0]: 70000 is not a port (line 40, column 13)`,
				},
			},
			Apply:     ApplyInfo{At: fakeStarted.Add(2 * time.Hour), Duration: 1234567 * time.Nanosecond},
			Counts:    Counts{Services: 2, VIPs: 3, Backends: 5, Flows4: 2, Flows6: 1, NATFlows: 12, NATCapacity: 262144},
			Announced: []AnnounceInfo{{Interface: "eth0", VIPs: []string{"198.18.10.10", "2001:db8:10::1"}}},
			Sources: []SourceInfo{
				{Name: "file", Services: 2, Updated: fakeStarted.Add(2 * time.Hour)},
				{Name: "kubernetes", Services: 1, Updated: fakeStarted.Add(2 * time.Hour), Synced: ptrTo(true), LastEvent: fakeStarted.Add(2 * time.Hour), Leader: ptrTo(true), Identity: "lb1-5f3a9c2e"},
			},
			Conflicts: []ConflictInfo{{VIP: "198.18.10.10:443/tcp", Service: "default/web", Source: "kubernetes", HeldBy: "file", Owner: "web", Since: fakeStarted.Add(time.Hour)}},
		},
		vips: []VIPInfo{
			{
				Service: "web", VIP: "198.18.10.10:443/tcp", Mode: "dsr-l2", TableSize: 16381,
				Backends: []VIPBackendInfo{
					{ID: 5, Address: "198.18.1.12", Weight: 1, Healthy: true, Slots: 8190, Share: 8190.0 / 16381},
					{ID: 4, Address: "198.18.1.11", Weight: 1, Healthy: true, Slots: 8191, Share: 8191.0 / 16381},
				},
				Stats: xdp.Stats{Packets: 880, Bytes: 61600, NewFlows: 40},
			},
			{
				Service: "dns", VIP: "[2001:db8:10::1]:53/udp", Mode: "dsr-ipip", TableSize: 251,
				Backends: []VIPBackendInfo{
					{ID: 7, Address: "2001:db8:1::11", Weight: 2, Healthy: true, Slots: 251, Share: 1},
				},
				Stats: xdp.Stats{Packets: 12, Bytes: 1080, NewFlows: 12},
			},
			{
				Service: "web", VIP: fakeVIP, Mode: "dsr-l2", TableSize: 16381,
				Backends: []VIPBackendInfo{
					{ID: 2, Address: "198.18.1.12", Weight: 1, Healthy: false, Slots: 0, Share: 0},
					{ID: 1, Address: "198.18.1.11", Weight: 2, Healthy: true, Slots: 10921, Share: 10921.0 / 16381},
					{ID: 3, Address: "198.18.1.13:8080", Weight: 1, Healthy: true, Slots: 5460, Share: 5460.0 / 16381},
				},
				Stats: xdp.Stats{Packets: 123456, Bytes: 98765432, NewFlows: 3000},
			},
			{Service: "empty", VIP: "198.18.10.11:0/tcp", Mode: "snat", TableSize: 251, Backends: nil},
		},
		backends: []BackendInfo{
			{ID: 3, Service: "web", VIP: fakeVIP, Address: "198.18.1.13:8080", Weight: 1, Healthy: true, Slots: 5460,
				NextHopMAC: "02:00:00:00:01:13", Interface: "eth0", Stats: xdp.Stats{Packets: 40000, Bytes: 32000000}},
			{ID: 1, Service: "web", VIP: fakeVIP, Address: "198.18.1.11", Weight: 2, Healthy: true, Slots: 10921,
				NextHopMAC: "02:00:00:00:01:11", Interface: "eth0", Stats: xdp.Stats{Packets: 83456, Bytes: 66765432},
				Health: &HealthInfo{State: "up", Since: fakeStarted, LastCheck: fakeStarted.Add(time.Hour), LastResult: "ok"}},
			{ID: 2, Service: "web", VIP: fakeVIP, Address: "198.18.1.12", Weight: 1, Healthy: false,
				Error:  "no neighbour entry for 198.18.1.12 on eth0",
				Health: &HealthInfo{State: "down", Since: fakeStarted.Add(30 * time.Minute), LastCheck: fakeStarted.Add(time.Hour), LastResult: "failed", LastError: "connection refused"}},
			{ID: 7, Service: "dns", VIP: "[2001:db8:10::1]:53/udp", Address: "2001:db8:1::11", Weight: 2, Healthy: true, Slots: 251,
				NextHopMAC: "02:00:00:00:02:01", Interface: "eth1", Stats: xdp.Stats{Packets: 12, Bytes: 1080}},
			{ID: 6, Service: "web", VIP: "198.18.10.10:443/tcp", Address: "198.18.1.13", Weight: 0, Healthy: true},
		},
		flows: []FlowInfo{
			{Client: "198.18.0.10:51000", VIP: fakeVIP, BackendID: 1, Backend: "198.18.1.11", IdleSec: 3.25},
			{Client: "[2001:db8::10]:40001", VIP: "[2001:db8:10::1]:53/udp", BackendID: 7, Backend: "2001:db8:1::11", IdleSec: 0.5},
			{Client: "198.18.0.9:60000", VIP: fakeVIP, BackendID: 3, Backend: "198.18.1.13:8080", IdleSec: 125},
			{Client: "198.18.0.11:41000", VIP: "198.18.10.20:5432/tcp", BackendID: 9, Backend: "198.18.1.20:15432", IdleSec: 1.5,
				Source: "198.18.0.1:20123", State: "established", AgeSec: 3700},
			{Client: "[2001:db8::11]:41001", VIP: "[2001:db8:10::2]:53/udp", BackendID: 10, Backend: "[2001:db8:1::20]:53", IdleSec: 4,
				Source: "[2001:db8::1]:31000", State: "udp", AgeSec: 4},
		},
		maglev: map[string]MaglevInfo{
			fakeVIP: {VIP: fakeVIP, TableSize: 16381, Backends: []SlotsShare{
				{ID: 3, Address: "198.18.1.13:8080", Weight: 1, Slots: 5460, Share: 5460.0 / 16381},
				{ID: 1, Address: "198.18.1.11", Weight: 2, Slots: 10921, Share: 10921.0 / 16381},
				{ID: 2, Address: "198.18.1.12", Weight: 1, Slots: 0, Share: 0},
			}},
		},
		explain: map[string]ExplainInfo{
			"198.18.0.10:40000 " + fakeVIP: {
				From: "198.18.0.10:40000", VIP: fakeVIP, Service: "web", Backend: "198.18.1.11", BackendID: 1,
				Reason: "table", Hash: 0x9e3779b9, Slot: 1234, TableSize: 16381, Packet: "TCP ACK",
				Text: "198.18.0.10:40000 -> 198.18.10.10:80/tcp goes to 198.18.1.11 (id 1): Maglev slot 1234 of 16381 (flow hash 0x9e3779b9).",
				Program: &ProgramRun{Verdict: "XDP_TX", Reason: "tx/dsr_l2", BackendID: 1, Backend: "198.18.1.11",
					Output: "eth 02:00:00:00:00:01 > 02:00:00:00:01:11 | ipv4 198.18.0.10 > 198.18.10.10 ttl 64 | tcp 40000 > 80"},
				Agree: true,
			},
			"198.18.0.10:40002 " + fakeVIP: {
				From: "198.18.0.10:40002", VIP: fakeVIP, Service: "web", Backend: "198.18.1.11", BackendID: 1,
				Reason: "table", Hash: 0x12345678, Slot: 1164, TableSize: 16381, Packet: "TCP ACK",
				Text: "198.18.0.10:40002 -> 198.18.10.10:80/tcp goes to 198.18.1.11 (id 1): Maglev slot 1164 of 16381 (flow hash 0x12345678).",
				Program: &ProgramRun{Verdict: "XDP_TX", Reason: "tx/dsr_l2", BackendID: 3, Backend: "198.18.1.13:8080",
					Output: "eth 02:00:00:00:00:01 > 02:00:00:00:01:13 | ipv4 198.18.0.10 > 198.18.10.10 ttl 64 | tcp 40002 > 80"},
				Disagreement: "the model sends it to backend 1 (table); the program counted tx/dsr_l2 with backend 3",
			},
			"198.18.0.10:40001 " + fakeVIP: {
				From: "198.18.0.10:40001", VIP: fakeVIP, Service: "web", Backend: "198.18.1.12", BackendID: 2,
				Reason: "previous", Hash: 0x0badf00d, Slot: 42, TableSize: 16381, Transition: true, Pin: "create", Packet: "TCP ACK",
				Text: "198.18.0.10:40001 -> 198.18.10.10:80/tcp goes to 198.18.1.12 (id 2): the VIP's table changed moments ago (25s of its grace period left) and moved the flow's slot 42 of 16381; " +
					"a packet that is not a SYN stays on the previous table's backend and pins the flow there.",
				Program: &ProgramRun{Verdict: "XDP_TX", Reason: "tx/dsr_l2", BackendID: 2, Backend: "198.18.1.12", Pin: "create",
					Output: "eth 02:00:00:00:00:01 > 02:00:00:00:01:12 | ipv4 198.18.0.10 > 198.18.10.10 ttl 64 | tcp 40001 > 80"},
				Agree: true,
			},
			"[2001:db8::10]:40001 [2001:db8:10::1]:53/udp": {
				From: "[2001:db8::10]:40001", VIP: "[2001:db8:10::1]:53/udp", Service: "dns", Backend: "2001:db8:1::11", BackendID: 7,
				Reason: "pinned", Hash: 0x00c0ffee, Slot: 17, TableSize: 251, Packet: "UDP datagram",
				Text: "[2001:db8::10]:40001 -> [2001:db8:10::1]:53/udp goes to 2001:db8:1::11 (id 7): the flow is pinned to it (a conntrack entry made when the VIP's table changed).",
				Program: &ProgramRun{Verdict: "XDP_TX", Reason: "tx/dsr_ipip", BackendID: 7, Backend: "2001:db8:1::11",
					Output: "eth 02:00:00:00:00:01 > 02:00:00:00:02:11 | ipv6 2001:db8::2 > 2001:db8:1::11 hlim 64 | ipv6 2001:db8::10 > 2001:db8:10::1 hlim 63 | udp 40001 > 53"},
				Agree: true,
			},
		},
		reload: ReloadInfo{At: fakeNow, Trigger: "socket", Result: "success"},
	}
}

// startControl serves api on a socket in a new temporary directory until
// the test ends, and returns the socket's path.
func startControl(t *testing.T, api controlAPI) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "xdplb.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveControl(ctx, path, 0, api, quietLogger()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveControl: %v", err)
		}
	})
	waitForSocket(t, path, done)
	return path
}

// waitForSocket returns once path exists (serveControl puts the socket
// there when it is listening), or fails t when serveControl returns first.
func waitForSocket(t *testing.T, path string, done <-chan error) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("serveControl returned early: %v", err)
		case <-timeout:
			t.Fatalf("no socket at %s after 5s", path)
		case <-tick.C:
		}
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestControlRoundTrip(t *testing.T) {
	api := newFakeAPI()
	path := startControl(t, api)
	ctx := context.Background()

	tests := []struct {
		req       Request
		out       any
		want      any
		wantCalls []string
	}{
		{Request{Command: "status"}, new(StatusInfo), &api.status, []string{"Status()"}},
		{Request{Command: "vips"}, new([]VIPInfo), &api.vips, []string{"VIPs()"}},
		{Request{Command: "backends"}, new([]BackendInfo), &api.backends, []string{"Backends()"}},
		{Request{Command: "conntrack"}, new([]FlowInfo), &api.flows, []string{`Flows("")`}},
		{Request{Command: "conntrack", VIP: "[2001:db8:10::1]:53/udp"}, new([]FlowInfo), &[]FlowInfo{api.flows[1]},
			[]string{`Flows("[2001:db8:10::1]:53/udp")`}},
		{Request{Command: "maglev", VIP: fakeVIP}, new(MaglevInfo), ptrTo(api.maglev[fakeVIP]), []string{`Maglev("198.18.10.10:80/tcp")`}},
		{Request{Command: "explain", From: "198.18.0.10:40000", VIP: fakeVIP}, new(ExplainInfo),
			ptrTo(api.explain["198.18.0.10:40000 "+fakeVIP]), []string{`Explain("198.18.0.10:40000", "198.18.10.10:80/tcp", false)`}},
		{Request{Command: "explain", From: "198.18.0.10:40000", VIP: fakeVIP, SYN: true}, new(ExplainInfo),
			ptrTo(api.explain["198.18.0.10:40000 "+fakeVIP]), []string{`Explain("198.18.0.10:40000", "198.18.10.10:80/tcp", true)`}},
		{Request{Command: "reload"}, new(ReloadInfo), &api.reload, []string{"Reload()"}},
	}
	for _, tt := range tests {
		t.Run(tt.req.Command+tt.req.VIP, func(t *testing.T) {
			before := len(api.recorded())
			if err := controlplane.Call(ctx, path, tt.req, tt.out); err != nil {
				t.Fatalf("controlplane.Call(%+v): %v", tt.req, err)
			}
			if diff := cmp.Diff(tt.want, tt.out); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCalls, api.recorded()[before:]); diff != "" {
				t.Errorf("api calls (-want +got):\n%s", diff)
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestControlErrors(t *testing.T) {
	path := startControl(t, newFakeAPI())
	ctx := context.Background()
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"unknown command", Request{Command: "frobnicate"}, `unknown command "frobnicate"`},
		{"empty command", Request{}, `unknown command ""`},
		{"api error", Request{Command: "maglev", VIP: "198.18.10.99:80/tcp"}, "no VIP 198.18.10.99:80/tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := controlplane.Call(ctx, path, tt.req, nil)
			if err == nil || err.Error() != tt.want {
				t.Errorf("controlplane.Call(%+v) = %v, want %q", tt.req, err, tt.want)
			}
		})
	}

	t.Run("raw answer", func(t *testing.T) {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, `{"command":"status","bogus":1}`+"\n")
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"ok":false,"error":"decoding the request: json: unknown field \"bogus\""}` + "\n"
		if string(got) != want {
			t.Errorf("answer to an unknown field:\n got %s\nwant %s", got, want)
		}
	})
}

func TestControlNotRunning(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	missing := filepath.Join(dir, "missing.sock")
	err := controlplane.Call(ctx, missing, Request{Command: "status"}, nil)
	want := "xdplb is not running (no control socket at " + missing + "); start it with 'systemctl start xdplb' or 'xdplb run'"
	if err == nil || err.Error() != want || !errors.Is(err, controlplane.ErrNotRunning) {
		t.Errorf("no socket file: got %v, want %q (controlplane.ErrNotRunning)", err, want)
	}

	stale := filepath.Join(dir, "stale.sock")
	makeStaleSocket(t, stale)
	err = controlplane.Call(ctx, stale, Request{Command: "status"}, nil)
	want = "xdplb is not running (no control socket at " + stale + "); start it with 'systemctl start xdplb' or 'xdplb run'"
	if err == nil || err.Error() != want || !errors.Is(err, controlplane.ErrNotRunning) {
		t.Errorf("socket nobody listens on: got %v, want %q (controlplane.ErrNotRunning)", err, want)
	}
}

// makeStaleSocket leaves a socket file at path that nobody listens on, as a
// daemon killed with SIGKILL does.
func makeStaleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("stale socket %s: %v, %v", path, fi, err)
	}
}

// envControlClient makes the test binary a control client instead (see
// TestMain).
const envControlClient = "XDPLB_TEST_CONTROL_CLIENT"

// TestMain runs the tests, or, run as another user by
// TestControlPermissionDenied with XDPLB_TEST_CONTROL_CLIENT set, calls the
// socket it names and prints the error.
func TestMain(m *testing.M) {
	if path := os.Getenv(envControlClient); path != "" {
		err := controlplane.Call(context.Background(), path, Request{Command: "status"}, nil)
		fmt.Printf("uid %d: controlplane.ErrControlPermission %v: %v\n", os.Getuid(), errors.Is(err, controlplane.ErrControlPermission), err)
		os.Exit(0)
	}
	code := m.Run()
	if builtBinaryDir != "" {
		os.RemoveAll(builtBinaryDir)
	}
	os.Exit(code)
}

func TestControlPermissionDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		msg := fmt.Sprintf("connecting as another user needs root to switch to uid 65534; running as uid %d", os.Geteuid())
		if os.Getenv(testnet.EnvRequirePrivileged) == "1" {
			t.Fatalf("%s (%s=1, so this fails instead of skipping)", msg, testnet.EnvRequirePrivileged)
		}
		t.Skipf("%s (set %s=1 to fail instead of skipping)", msg, testnet.EnvRequirePrivileged)
	}
	// A directory everybody may enter, so that only the socket's own mode
	// can refuse the other user, holding a copy of this test binary that
	// the other user may run.
	dir, err := os.MkdirTemp("", "xdplb-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "xdplb.test")
	copyExecutable(t, self, bin, 0o755)

	path := filepath.Join(dir, "xdplb.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveControl(ctx, path, 0o600, newFakeAPI(), quietLogger()) }()
	defer func() {
		cancel()
		<-done
	}()
	waitForSocket(t, path, done)

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envControlClient+"="+path)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid 65534: %v\n%s", err, out)
	}
	want := "uid 65534: controlplane.ErrControlPermission true: permission denied on " + path + ": the control socket is root-only; run with sudo"
	if got := firstLineOf(string(out)); got != want {
		t.Errorf("client as uid 65534:\n got %s\nwant %s", got, want)
	}
}

func firstLineOf(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func copyExecutable(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

func TestControlSocketLifecycle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "xdplb") // missing: serveControl creates it
	path := filepath.Join(dir, "xdplb.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serveControl(ctx, path, 0, newFakeAPI(), quietLogger()) }()
	waitForSocket(t, path, done)

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("socket directory: %v, %v; want mode 0755", di.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("socket directory holds %d files, want only the socket", len(entries))
	}

	// A second daemon on the same path refuses to start and leaves the
	// first one serving.
	err = serveControl(context.Background(), path, 0, newFakeAPI(), quietLogger())
	want := "another xdplb is running on " + path
	if err == nil || err.Error() != want || !errors.Is(err, errAnotherRunning) {
		t.Errorf("second serveControl: got %v, want %q (errAnotherRunning)", err, want)
	}
	var s StatusInfo
	if err := controlplane.Call(context.Background(), path, Request{Command: "status"}, &s); err != nil {
		t.Errorf("the first daemon after the second one failed: %v", err)
	}

	// A connection that never sends a request does not keep the daemon
	// from stopping.
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveControl after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serveControl still running 5s after its context was cancelled")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after stop: %v, want it removed", err)
	}
	err = controlplane.Call(context.Background(), path, Request{Command: "status"}, nil)
	if !errors.Is(err, controlplane.ErrNotRunning) {
		t.Errorf("Call after stop: %v, want ErrNotRunning", err)
	}
}

func TestControlReplacesStaleSocket(t *testing.T) {
	stale := filepath.Join(t.TempDir(), "xdplb.sock")
	makeStaleSocket(t, stale)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveControl(ctx, stale, 0, newFakeAPI(), quietLogger()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveControl: %v", err)
		}
	}()
	var s StatusInfo
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := controlplane.Call(context.Background(), stale, Request{Command: "status"}, &s)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serveControl over a stale socket: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("serveControl over a stale socket returned: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if s.Version != newFakeAPI().status.Version {
		t.Errorf("status version %q, want the fake's", s.Version)
	}
}

func TestControlRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xdplb.sock")
	if err := os.WriteFile(path, []byte("not a socket"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := serveControl(context.Background(), path, 0, newFakeAPI(), quietLogger())
	want := "control socket " + path + ": the file exists and is not a socket"
	if err == nil || err.Error() != want {
		t.Errorf("serveControl over a regular file: got %v, want %q", err, want)
	}
	if b, _ := os.ReadFile(path); string(b) != "not a socket" {
		t.Errorf("the regular file was touched: %q", b)
	}
}

func TestControlConcurrent(t *testing.T) {
	api := newFakeAPI()
	path := startControl(t, api)
	const n = 32
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var vs []VIPInfo
			if err := controlplane.Call(context.Background(), path, Request{Command: "vips"}, &vs); err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
				return
			}
			if len(vs) != len(api.vips) {
				errs <- fmt.Errorf("call %d: %d VIPs, want %d", i, len(vs), len(api.vips))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestControlCallCancelled(t *testing.T) {
	// A daemon that accepts but never answers: the client gives up when
	// its context ends.
	path := filepath.Join(t.TempDir(), "xdplb.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = controlplane.Call(ctx, path, Request{Command: "status"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Call to a silent daemon: %v, want context.DeadlineExceeded", err)
	}
}
