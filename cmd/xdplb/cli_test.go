package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata")

// checkGolden compares got with testdata/NAME.golden, or rewrites the file
// with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run 'go test ./cmd/xdplb -run %s -update' to create it)", err, t.Name())
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s\n(if the change is intended, run 'go test ./cmd/xdplb -run %s -update')", path, diff, t.Name())
	}
}

// setCLIClock makes the CLI measure ages against fakeNow until t ends.
func setCLIClock(t *testing.T) {
	old := cliNow
	cliNow = func() time.Time { return fakeNow }
	t.Cleanup(func() { cliNow = old })
}

// runCLI runs the command the way main does (through the commands map) and
// returns what it printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	c, ok := commands[args[0]]
	if !ok {
		t.Fatalf("no command %q in the commands map", args[0])
	}
	var out bytes.Buffer
	err := c.run(context.Background(), args[1:], &out)
	return out.String(), err
}

// sortedBGP is the fake's BGP answer as the CLI sorts it.
func sortedBGP() BGPInfo {
	b := newFakeAPI().bgp
	b.Peers = []BGPPeerInfo{b.Peers[1], b.Peers[0]}
	return b
}

func TestCLIGolden(t *testing.T) {
	setCLIClock(t)
	api := newFakeAPI()
	sock := startControl(t, api)

	// The answers the JSON output must hold: the fake's data, sorted.
	sortedVIPs := func() []VIPInfo {
		v := newFakeAPI().vips
		dns, empty, web80, web443 := v[1], v[3], v[2], v[0]
		empty.Backends = []VIPBackendInfo{}
		web80.Backends = []VIPBackendInfo{web80.Backends[1], web80.Backends[0], web80.Backends[2]}
		web443.Backends = []VIPBackendInfo{web443.Backends[1], web443.Backends[0]}
		return []VIPInfo{dns, empty, web80, web443}
	}
	b := newFakeAPI().backends
	f := newFakeAPI().flows
	m := newFakeAPI().maglev[fakeVIP]
	m.Backends = []SlotsShare{m.Backends[1], m.Backends[2], m.Backends[0]}
	st := newFakeAPI().status
	st.Interfaces = []InterfaceInfo{st.Interfaces[1], st.Interfaces[0]}
	ex := newFakeAPI().explain

	tests := []struct {
		golden    string
		args      []string
		json      any // a pointer to decode the JSON output into
		want      any
		wantCalls []string
	}{
		{"status", []string{"status"}, new(StatusInfo), &st, []string{"Status()"}},
		{"vips", []string{"vips"}, new([]VIPInfo), ptrTo(sortedVIPs()), []string{"VIPs()"}},
		{"backends", []string{"backends"}, new([]BackendInfo), &[]BackendInfo{b[1], b[2], b[0], b[4], b[3]}, []string{"Backends()"}},
		{"conntrack", []string{"conntrack"}, new([]FlowInfo), &[]FlowInfo{f[2], f[0], f[3], f[1], f[4]}, []string{`Flows("")`}},
		{"conntrack_vip", []string{"conntrack", "--vip", "198.18.10.10:80/TCP"}, new([]FlowInfo), &[]FlowInfo{f[2], f[0]},
			[]string{`Flows("198.18.10.10:80/tcp")`}},
		{"maglev", []string{"maglev", fakeVIP}, new(MaglevInfo), &m, []string{`Maglev("198.18.10.10:80/tcp")`}},
		{"explain_table", []string{"explain", "--from", "198.18.0.10:40000", "--to", fakeVIP}, new(ExplainInfo),
			ptrTo(ex["198.18.0.10:40000 "+fakeVIP]), []string{`Explain("198.18.0.10:40000", "198.18.10.10:80/tcp", false)`}},
		{"explain_transition", []string{"explain", "--to", fakeVIP, "--from", "198.18.0.10:40001"}, new(ExplainInfo),
			ptrTo(ex["198.18.0.10:40001 "+fakeVIP]), []string{`Explain("198.18.0.10:40001", "198.18.10.10:80/tcp", false)`}},
		{"explain_pinned", []string{"explain", "--from", "[2001:db8::10]:40001", "--to", "[2001:db8:10::1]:53/udp"}, new(ExplainInfo),
			ptrTo(ex["[2001:db8::10]:40001 [2001:db8:10::1]:53/udp"]), []string{`Explain("[2001:db8::10]:40001", "[2001:db8:10::1]:53/udp", false)`}},
		{"reload", []string{"reload"}, new(ReloadInfo), ptrTo(newFakeAPI().reload), []string{"Reload()", "Status()"}},
		{"bgp", []string{"bgp"}, new(BGPInfo), ptrTo(sortedBGP()), []string{"BGP()"}},
		{"drain", []string{"drain", "--no-wait"}, new(DrainInfo), &DrainInfo{Drained: true, Mode: "withdraw", Routes: []string{}}, []string{"SetDrained(true)"}},
		{"undrain", []string{"undrain"}, new(DrainInfo), &DrainInfo{Mode: "withdraw", Routes: newFakeAPI().bgp.Routes}, []string{"SetDrained(false)"}},
		{"announce", []string{"announce"}, new(L2StateInfo), ptrTo(newFakeAPI().l2), []string{`L2State("")`}},
		{"announce_standby", []string{"announce", "--state", "standby"}, new(L2StateInfo), &L2StateInfo{Mode: "external", State: "standby", VIPs: []string{}}, []string{`L2State("standby")`}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			before := len(api.recorded())
			got, err := runCLI(t, append(tt.args, "--socket", sock)...)
			if err != nil {
				t.Fatalf("xdplb %s: %v", strings.Join(tt.args, " "), err)
			}
			checkGolden(t, tt.golden, []byte(got))
			if diff := cmp.Diff(tt.wantCalls, api.recorded()[before:]); diff != "" {
				t.Errorf("daemon calls (-want +got):\n%s", diff)
			}

			got, err = runCLI(t, append(tt.args, "--socket", sock, "-o", "json")...)
			if err != nil {
				t.Fatalf("xdplb %s -o json: %v", strings.Join(tt.args, " "), err)
			}
			if err := json.Unmarshal([]byte(got), tt.json); err != nil {
				t.Fatalf("xdplb %s -o json printed what is not JSON: %v\n%s", strings.Join(tt.args, " "), err, got)
			}
			if diff := cmp.Diff(tt.want, tt.json); diff != "" {
				t.Errorf("xdplb %s -o json (-want +got):\n%s", strings.Join(tt.args, " "), diff)
			}
		})
	}
}

// TestCLIDrainWaits: drain waits until the new-flow counters stop, and
// exits 1 when they do not stop within --timeout.
func TestCLIDrainWaits(t *testing.T) {
	api := newFakeAPI()
	var mu sync.Mutex
	calls, stopAfter := 0, 4
	api.newFlows = func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return uint64(min(calls, stopAfter)) * 10
	}
	sock := startControl(t, api)
	out, err := runCLI(t, "drain", "--socket", sock, "--quiet", "1s")
	if err != nil {
		t.Fatalf("xdplb drain: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "drained: every route withdrawn\nno new flows for 1s: drained ") || !strings.HasSuffix(out, " after the drain (30 new flows meanwhile)\n") {
		t.Errorf("xdplb drain printed %q", out)
	}

	mu.Lock()
	calls, stopAfter = 0, 1<<30
	mu.Unlock()
	out, err = runCLI(t, "drain", "--socket", sock, "--quiet", "1s", "--timeout", "1500ms")
	if err == nil || err.Error() != "drain: new flows still arrive after 1.5s" {
		t.Errorf("xdplb drain with flows that never stop: %v, want the timeout error\n%s", err, out)
	}
	if !strings.HasPrefix(out, "drained: every route withdrawn\nnew flows still arrive after ") {
		t.Errorf("xdplb drain with flows that never stop printed %q", out)
	}
}

// TestCLIExplainDisagreement: when the program and its model disagree,
// explain says so first, in capitals, and exits with status 1.
func TestCLIExplainDisagreement(t *testing.T) {
	setCLIClock(t)
	sock := startControl(t, newFakeAPI())
	got, err := runCLI(t, "explain", "--from", "198.18.0.10:40002", "--to", fakeVIP, "--socket", sock)
	const want = "explain: the datapath program and its model disagree; this is a bug, please report it with the output of -o json"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	var u usageError
	if errors.As(err, &u) {
		t.Errorf("a disagreement is no usage error (exit status 1, not 2)")
	}
	checkGolden(t, "explain_disagree", []byte(got))
}

// TestCLIExplainSYN: --syn asks for a SYN.
func TestCLIExplainSYN(t *testing.T) {
	api := newFakeAPI()
	sock := startControl(t, api)
	if _, err := runCLI(t, "explain", "--from", "198.18.0.10:40000", "--to", fakeVIP, "--syn", "--socket", sock); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{`Explain("198.18.0.10:40000", "198.18.10.10:80/tcp", true)`}, api.recorded()); diff != "" {
		t.Errorf("daemon calls (-want +got):\n%s", diff)
	}
}

func TestCLIStatusQuiet(t *testing.T) {
	// A daemon that has just started: no reload but the first, nothing
	// applied yet, no interfaces; no maglev.seed in its file.
	setCLIClock(t)
	api := &fakeAPI{status: StatusInfo{
		Version: "v0.3.0", Started: fakeNow.Add(-42 * time.Second),
		Config: ConfigInfo{File: "/etc/xdplb/xdplb.yaml", SHA256: "abc", LoadedAt: fakeNow.Add(-41 * time.Second),
			SeedFile: "/var/lib/xdplb/maglev-seed"},
		LastReload: ReloadInfo{At: fakeNow.Add(-41 * time.Second), Trigger: "start", Result: "success"},
		Apply:      ApplyInfo{Errors: nil},
	}}
	sock := startControl(t, api)
	got, err := runCLI(t, "status", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status_quiet", []byte(got))
}

func TestCLIEmptyListings(t *testing.T) {
	sock := startControl(t, &fakeAPI{})
	for _, cmd := range []string{"vips", "backends", "conntrack"} {
		t.Run(cmd, func(t *testing.T) {
			got, err := runCLI(t, cmd, "--socket", sock, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			if got != "[]\n" {
				t.Errorf("xdplb %s -o json with nothing to list printed %q, want %q", cmd, got, "[]\n")
			}
			got, err = runCLI(t, cmd, "--socket", sock)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(got, "\n") != 1 {
				t.Errorf("xdplb %s with nothing to list printed %q, want the header alone", cmd, got)
			}
		})
	}
}

func TestCLIReloadFailure(t *testing.T) {
	api := newFakeAPI()
	api.reload = ReloadInfo{At: fakeNow, Trigger: "socket", Result: "failure", Errors: []string{
		`services[0].backends[1].address: "198.18.1.300" is not an IP address (line 31, column 18)`,
		`services[1].ports[0]: 70000 is not a port (line 40, column 13)`,
	}}
	sock := startControl(t, api)
	wantErr := "reload failed; the running configuration is unchanged:\n" +
		`  services[0].backends[1].address: "198.18.1.300" is not an IP address (line 31, column 18)` + "\n" +
		`  services[1].ports[0]: 70000 is not a port (line 40, column 13)`

	got, err := runCLI(t, "reload", "--socket", sock)
	if err == nil || err.Error() != wantErr {
		t.Errorf("xdplb reload of a bad file: error %v, want %q", err, wantErr)
	}
	if errors.As(err, new(usageError)) {
		t.Errorf("xdplb reload of a bad file: a usage error (exit 2), want exit 1")
	}
	if got != "" {
		t.Errorf("xdplb reload of a bad file printed %q on stdout, want nothing", got)
	}

	got, err = runCLI(t, "reload", "--socket", sock, "-o", "json")
	if err == nil || err.Error() != wantErr {
		t.Errorf("xdplb reload -o json of a bad file: error %v, want %q", err, wantErr)
	}
	var r ReloadInfo
	if err := json.Unmarshal([]byte(got), &r); err != nil {
		t.Fatalf("xdplb reload -o json: %v\n%s", err, got)
	}
	if diff := cmp.Diff(api.reload, r); diff != "" {
		t.Errorf("xdplb reload -o json (-want +got):\n%s", diff)
	}
}

func TestCLIErrors(t *testing.T) {
	api := newFakeAPI()
	sock := startControl(t, api)
	missing := filepath.Join(t.TempDir(), "xdplb.sock")
	notRunning := "xdplb is not running (no control socket at " + missing + "); start it with 'systemctl start xdplb' or 'xdplb run'"

	tests := []struct {
		args      []string
		want      string
		wantUsage bool // exit status 2
	}{
		// Usage errors: the daemon is not asked.
		{[]string{"explain", "--to", fakeVIP}, "explain: --from is required", true},
		{[]string{"explain", "--from", "198.18.0.10:40000"}, "explain: --to is required", true},
		{[]string{"explain", "--from", "198.18.0.10", "--to", fakeVIP}, `explain: --from "198.18.0.10": want IP:PORT`, true},
		{[]string{"explain", "--from", "198.18.0.10:1", "--to", "198.18.10.10:80"},
			`explain: --to "198.18.10.10:80": want ADDRESS:PORT/PROTOCOL`, true},
		{[]string{"explain", "--from", "198.18.0.10:1", "--to", "198.18.10.10:80/sctp"},
			`explain: --to "198.18.10.10:80/sctp": protocol "sctp" is neither tcp nor udp`, true},
		{[]string{"explain", "--from", "198.18.0.10:1", "--to", fakeVIP, "extra"}, `explain: unexpected argument "extra"`, true},
		{[]string{"maglev"}, "maglev: want one argument, VIP:PORT/PROTO (see 'xdplb maglev -h')", true},
		{[]string{"maglev", fakeVIP, "198.18.10.10:443/tcp"}, "maglev: want one argument, VIP:PORT/PROTO (see 'xdplb maglev -h')", true},
		{[]string{"maglev", "web"}, `maglev: "web": want ADDRESS:PORT/PROTOCOL`, true},
		{[]string{"conntrack", "--vip", "198.18.10.10"}, `conntrack: --vip "198.18.10.10": want ADDRESS:PORT/PROTOCOL`, true},
		{[]string{"vips", "-o", "yaml"}, `vips: -o "yaml": want table or json`, true},
		{[]string{"vips", "web"}, `vips: unexpected argument "web"`, true},
		{[]string{"status", "--verbose"}, "status: flag provided but not defined: -verbose (see 'xdplb status -h')", true},
		{[]string{"backends", "-o"}, "backends: flag needs an argument: -o (see 'xdplb backends -h')", true},
		{[]string{"reload", "now"}, `reload: unexpected argument "now"`, true},
		// Errors from the daemon, as it words them.
		{[]string{"maglev", "198.18.10.99:80/tcp"}, "no VIP 198.18.10.99:80/tcp", false},
		{[]string{"explain", "--from", "198.18.0.10:1", "--to", "198.18.10.99:80/tcp"},
			"198.18.10.99:80/tcp is no VIP: the datapath passes such packets to the host's stack", false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			before := len(api.recorded())
			args := append([]string{tt.args[0], "--socket", sock}, tt.args[1:]...)
			got, err := runCLI(t, args...)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if isUsage := errors.As(err, new(usageError)); isUsage != tt.wantUsage {
				t.Errorf("usage error (exit status 2): %v, want %v", isUsage, tt.wantUsage)
			}
			if got != "" {
				t.Errorf("printed %q on stdout, want nothing", got)
			}
			if tt.wantUsage && len(api.recorded()) != before {
				t.Errorf("a usage error asked the daemon: %v", api.recorded()[before:])
			}
		})
	}

	// Not running: every command says so the same way (exit status 1).
	for _, args := range [][]string{
		{"status"}, {"vips"}, {"backends"}, {"conntrack"}, {"maglev", fakeVIP},
		{"explain", "--from", "198.18.0.10:1", "--to", fakeVIP}, {"reload"},
	} {
		t.Run(args[0]+" not running", func(t *testing.T) {
			_, err := runCLI(t, append(args, "--socket", missing)...)
			if err == nil || err.Error() != notRunning {
				t.Errorf("error %v, want %q", err, notRunning)
			}
			if errors.As(err, new(usageError)) {
				t.Errorf("a usage error (exit status 2), want exit status 1")
			}
		})
	}
}

func TestCLIHelp(t *testing.T) {
	for _, cmd := range []string{"status", "vips", "backends", "conntrack", "maglev", "explain", "reload", "plan", "monitor", "top", "bgp", "drain", "undrain", "announce"} {
		t.Run(cmd, func(t *testing.T) {
			got, err := runCLI(t, cmd, "-h")
			if err != nil {
				t.Fatalf("xdplb %s -h: %v, want exit status 0", cmd, err)
			}
			if !strings.HasPrefix(got, "usage: xdplb "+cmd+" ") || !strings.Contains(got, "-socket string") {
				t.Errorf("xdplb %s -h printed:\n%s", cmd, got)
			}
			checkGolden(t, "help_"+cmd, []byte(got))
		})
	}
}

func TestCLIFlagsAfterArguments(t *testing.T) {
	setCLIClock(t)
	sock := startControl(t, newFakeAPI())
	a, err := runCLI(t, "maglev", fakeVIP, "--socket", sock, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := runCLI(t, "maglev", "--socket", sock, "-o", "json", "--", fakeVIP)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || !strings.HasPrefix(a, "{") {
		t.Errorf("flags after the VIP printed %q; before it %q", a, b)
	}
}

func TestAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{59*time.Second + 999*time.Millisecond, "59s"},
		{time.Minute, "1m00s"},
		{5*time.Minute + 3*time.Second, "5m03s"},
		{2*time.Hour + 5*time.Minute + 59*time.Second, "2h05m"},
		{3*24*time.Hour + 4*time.Hour + 30*time.Minute, "3d04h"},
	}
	for _, tt := range tests {
		if got := age(fakeNow, fakeNow.Add(-tt.d)); got != tt.want {
			t.Errorf("age(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestCLIDocumented checks that docs/cli.md shows every golden output
// verbatim and names every CLI command.
func TestCLIDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	goldens, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldens {
		if strings.HasPrefix(filepath.Base(g), "help_") {
			continue
		}
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(doc, b) {
			t.Errorf("docs/cli.md does not show %s verbatim", g)
		}
	}
	for _, cmd := range []string{"status", "vips", "backends", "conntrack", "maglev", "explain", "reload", "plan", "monitor", "top", "bgp", "drain", "undrain", "announce"} {
		if !bytes.Contains(doc, []byte("## xdplb "+cmd+"\n")) {
			t.Errorf("docs/cli.md has no section for xdplb %s", cmd)
		}
	}
}
