package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gdamore/tcell/v2"
)

// Top answers with the fake's VIPs and backends, their counters grown by
// call: each call is one second later, with every counter n times its
// base (so the rates are the base values per second), and the drops of
// two reasons growing.
func (f *fakeAPI) Top() (TopInfo, error) {
	f.mu.Lock()
	f.topCalls++
	n := uint64(f.topCalls)
	f.mu.Unlock()
	t := TopInfo{At: fakeNow.Add(time.Duration(n) * time.Second)}
	for _, v := range newFakeAPI().vips {
		v.Stats.Packets *= n
		v.Stats.Bytes *= n
		v.Stats.NewFlows *= n
		t.VIPs = append(t.VIPs, v)
	}
	for _, b := range newFakeAPI().backends {
		b.Stats.Packets *= n
		b.Stats.Bytes *= n
		b.Stats.NewFlows *= n
		t.Backends = append(t.Backends, b)
	}
	t.Counters = []CounterInfo{
		{Action: "pass", Reason: "not_vip", Value: 1000 * n},
		{Action: "drop", Reason: "no_backend", Value: 40 * n},
		{Action: "drop", Reason: "no_service", Value: 3 * n},
		{Action: "drop", Reason: "ip_options", Value: 7},
		{Action: "tx", Reason: "dsr_l2", Value: 5000 * n},
	}
	return t, nil
}

func TestCLITopOnce(t *testing.T) {
	api := newFakeAPI()
	sock := startControl(t, api)
	got, err := runCLI(t, "top", "--once", "--interval", "10ms", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "top", []byte(got))
	got, err = runCLI(t, "top", "--once", "--interval", "10ms", "--sort", "vip", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "top_vip", []byte(got))
}

func TestCLITopErrors(t *testing.T) {
	sock := startControl(t, newFakeAPI())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--sort", "rate"}, `top: --sort "rate": want packets, bits, new, drops or vip`},
		{[]string{"--interval", "1ms"}, "top: --interval 1ms: want 10ms or more"},
		{[]string{"-o", "json"}, "top: -o json is not supported; use xdplb vips -o json or the metrics"},
	} {
		_, err := runCLI(t, append([]string{"top", "--socket", sock}, tt.args...)...)
		if err == nil || err.Error() != tt.want || exitCode(err) != 2 {
			t.Errorf("top %v: error %v, want %q (exit status 2)", tt.args, err, tt.want)
		}
	}
}

// screenText is the simulation screen's text, a line per row.
func screenText(s tcell.SimulationScreen) string {
	cells, w, h := s.GetContents()
	var b strings.Builder
	for y := 0; y < h; y++ {
		var line []rune
		for x := 0; x < w; x++ {
			r := ' '
			if c := cells[y*w+x]; len(c.Runes) > 0 {
				r = c.Runes[0]
			}
			line = append(line, r)
		}
		b.WriteString(strings.TrimRight(string(line), " ") + "\n")
	}
	return b.String()
}

// TestTopScreen drives the full-screen view on tcell's simulation screen:
// it refreshes, sorts by the key pressed and quits on q.
func TestTopScreen(t *testing.T) {
	api := newFakeAPI()
	s := tcell.NewSimulationScreen("")
	fetch := func(context.Context) (TopInfo, error) { return api.Top() }
	done := make(chan error, 1)
	drawn := make(chan struct{}, 1)
	// The screen is read on the view's goroutine, right after each drawing
	// (tcell's simulation screen hands out its cells without a copy).
	var mu sync.Mutex
	var last string
	signal := func() {
		text := screenText(s)
		mu.Lock()
		last = text
		mu.Unlock()
		select {
		case drawn <- struct{}{}:
		default:
		}
	}
	go func() {
		done <- topScreen(context.Background(), s, fetch, 20*time.Millisecond, "packets", "/run/xdplb/xdplb.sock", signal)
	}()
	// The screen is read only once it has been drawn (after its Init).
	select {
	case <-drawn:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing drawn in 5 s")
	}
	waitScreen := func(what string, cond func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			text := last
			mu.Unlock()
			if cond(text) {
				return text
			}
			if time.Now().After(deadline) {
				t.Fatalf("5 s without %s; the screen:\n%s", what, text)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitScreen("the table", func(s string) bool { return strings.Contains(s, "SERVICE") && strings.Contains(s, "sort: packets") })
	s.InjectKey(tcell.KeyRune, 'v', tcell.ModNone)
	text := waitScreen("sort by VIP", func(s string) bool { return strings.Contains(s, "sort: vip") })
	if !(strings.Index(text, "198.18.10.10:443/tcp") < strings.Index(text, "198.18.10.11:0/tcp") && strings.Index(text, "198.18.10.11:0/tcp") < strings.Index(text, "2001:db8:10::1")) {
		t.Errorf("sorted by VIP, the VIPs are out of order:\n%s", text)
	}
	s.InjectKey(tcell.KeyRune, 'q', tcell.ModNone)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("q did not quit")
	}
}
