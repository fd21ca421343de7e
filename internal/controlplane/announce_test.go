package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// announceConfig is a test configuration with web on 198.18.10.10, L2
// announcements on eth0 in mode l2Mode, and a BGP speaker whose peer never
// answers (its routes stay in its RIB), with the given communities.
func announceConfig(t *testing.T, path, l2Mode, communities string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if i := strings.Index(s, "announce:\n"); i >= 0 {
		s = s[:i]
	}
	s += "announce:\n  l2:\n    interfaces: [eth0]\n    mode: " + l2Mode + "\n" +
		"  bgp:\n    localASN: 65010\n    routerID: 198.18.0.1\n    listenPort: -1\n" +
		"    peers: [{address: 198.18.0.254, asn: 65000}]\n    communities: [" + communities + "]\n" +
		"    gracefulRestart: {enabled: false}\n"
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runPlane starts a plane on path; stop stops it and waits.
func runPlane(t *testing.T, path string) (p *Plane, stop func()) {
	t.Helper()
	logs := &syncBuffer{}
	p, err := New(context.Background(), Options{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(logs, nil)), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	}
	t.Cleanup(stop)
	return p, stop
}

// announced returns what the status lists for each announcer, as
// "NAME STATE VIPS".
func announced(p *Plane) []string {
	var out []string
	for _, a := range p.Status().Announced {
		out = append(out, a.Interface+" "+a.State+" "+strings.Join(a.VIPs, ","))
	}
	slices.Sort(out)
	return out
}

func waitAnnounced(t *testing.T, p *Plane, want ...string) {
	t.Helper()
	waitFor(t, "announced "+strings.Join(want, "; "), func() bool { return cmp.Equal(announced(p), want) })
}

// TestAnnounceStates checks what the plane hands its announcers: a service
// with announce: false goes to none of them; in
// external mode the L2 announcer starts on standby with nothing and gets
// the VIP when told active; a drain takes the BGP route away and an undrain
// brings it back; both states survive a restart of the plane; a reload that
// changes announce.bgp is refused and keeps the running configuration; and
// telling an always-mode plane anything is an error.
func TestAnnounceStates(t *testing.T) {
	dir, bpf := testFiles(t)
	// quiet has announce: false: it is announced neither on eth0 nor by BGP.
	quiet := strings.ReplaceAll(strings.ReplaceAll(webService, "name: web", "name: quiet"), "198.18.10.10", "198.18.10.11") + "    announce: false\n"
	path := writeConfig(t, dir, bpf, testSeed, webService+quiet)
	announceConfig(t, path, "external", `"65010:100"`)
	p, stop := runPlane(t, path)
	waitAnnounced(t, p, "bgp  198.18.10.10", "eth0 standby ")
	if st := p.Status(); st.Counts.VIPs != 2 || len(st.Apply.Errors) != 0 {
		t.Fatalf("status: %d VIPs, errors %q; want both services applied", st.Counts.VIPs, st.Apply.Errors)
	}

	l2, err := p.SetL2Active(true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(L2StateInfo{Mode: "external", State: "active", VIPs: []string{"198.18.10.10"}}, l2); diff != "" {
		t.Errorf("SetL2Active(true) (-want +got):\n%s", diff)
	}
	waitAnnounced(t, p, "bgp  198.18.10.10", "eth0 active 198.18.10.10")

	d, err := p.SetDrained(true)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Drained || d.Mode != "withdraw" {
		t.Errorf("SetDrained(true) = %+v, want drained, mode withdraw", d)
	}
	waitAnnounced(t, p, "bgp drained ", "eth0 active 198.18.10.10")

	// A reload that changes announce.bgp is refused.
	announceConfig(t, path, "external", `"65010:200"`)
	info := p.Reload(context.Background(), "test")
	want := "announce.bgp changed: the BGP speaker takes its settings at start; restart xdplb to apply them (graceful restart keeps the routes meanwhile)"
	if info.Result != "failure" || len(info.Errors) != 1 || info.Errors[0] != want {
		t.Errorf("reload with announce.bgp changed: %+v, want the failure %q", info, want)
	}
	if got := p.Config().Announce.BGP.Communities; !slices.Equal(got, []string{"65010:100"}) {
		t.Errorf("after the refused reload the running communities are %q", got)
	}

	// A restart keeps both states.
	stop()
	p, _ = runPlane(t, path)
	waitAnnounced(t, p, "bgp drained ", "eth0 active 198.18.10.10")
	for _, f := range []string{drainFileName, l2ActiveFileName} {
		if _, err := os.Stat(filepath.Join(dir, "state", f)); err != nil {
			t.Errorf("state file %s: %v", f, err)
		}
	}
	if _, err := p.SetDrained(false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SetL2Active(false); err != nil {
		t.Fatal(err)
	}
	waitAnnounced(t, p, "bgp  198.18.10.10", "eth0 standby ")

	// Always mode answers always and cannot be told.
	announceConfig(t, path, "always", `"65010:200"`)
	if info := p.Reload(context.Background(), "test"); info.Result != "success" {
		t.Fatalf("reload to always mode: %+v", info)
	}
	waitAnnounced(t, p, "bgp  198.18.10.10", "eth0  198.18.10.10")
	if _, err := p.SetL2Active(false); !errors.Is(err, ErrNotExternal) {
		t.Errorf("SetL2Active in always mode: %v, want %v", err, ErrNotExternal)
	}
}
