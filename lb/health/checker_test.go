package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

var cmpNetip = cmpopts.EquateComparable(netip.AddrPort{})

func key(service, backend string) lb.BackendKey {
	return lb.BackendKey{Service: service, Backend: netip.MustParseAddrPort(backend)}
}

// tcpCheck is a check with the default timing.
func tcpCheck() config.HealthCheck {
	return config.HealthCheck{Type: config.HealthCheckTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
}

func targetOf(k lb.BackendKey, check config.HealthCheck) Target {
	return Target{Key: k, Addr: netip.AddrPortFrom(k.Backend.Addr(), 80), Check: check}
}

// lockedBuffer collects log lines from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSuffix(l.b.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// harness runs a Checker on a fake clock and records what it reports.
type harness struct {
	t    *testing.T
	clk  *fakeClock
	c    *Checker
	logs *lockedBuffer

	mu      sync.Mutex
	changes []string
}

func newHarness(t *testing.T, probe ProbeFunc, opts Options) *harness {
	t.Helper()
	h := &harness{t: t, clk: newFakeClock(), logs: &lockedBuffer{}}
	opts.Clock = h.clk
	opts.Probe = probe
	opts.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	opts.OnChange = func(k lb.BackendKey, up bool) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.changes = append(h.changes, fmt.Sprintf("%s %s up=%v", k.Service, backendString(k.Backend), up))
	}
	if opts.Rand == nil {
		opts.Rand = rand.New(rand.NewPCG(1, 2))
	}
	h.c = New(opts)
	return h
}

// run starts the Checker; the test's cleanup stops it and checks that Run
// returned.
func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			h.t.Error("Run did not return after its context was cancelled")
		}
	})
	h.settle(0)
}

func (h *harness) sleeps() uint64 {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return h.c.sleeps
}

// settle waits until the Checker has gone to sleep more than after times,
// sleeps, and has no check running. The state must hold still for a few
// milliseconds: the loop takes a wake-up from its channel a moment before it
// marks itself awake, and in that moment it looks asleep.
func (h *harness) settle(after uint64) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	idle := func() (bool, uint64) {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return h.c.sleeps > after && h.c.sleeping && h.c.inflight == 0 && len(h.c.wake) == 0, h.c.sleeps
	}
	for {
		if ok, n := idle(); ok {
			time.Sleep(5 * time.Millisecond)
			if ok2, n2 := idle(); ok2 && n2 == n {
				return
			}
			continue
		}
		if time.Now().After(deadline) {
			h.t.Fatal("the checker did not settle")
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// step advances the clock to the Checker's next wake-up and waits until it
// is idle again. It returns how far the clock moved.
func (h *harness) step() time.Duration {
	h.t.Helper()
	n := h.sleeps()
	d, ok := h.clk.untilNext()
	if !ok {
		h.t.Fatal("no timer set: nothing scheduled")
	}
	h.clk.Advance(d)
	h.settle(n)
	return d
}

// setTargets sets the targets of the running Checker and waits until it
// has rescheduled.
func (h *harness) setTargets(ts ...Target) {
	h.t.Helper()
	n := h.sleeps()
	h.c.SetTargets(ts)
	h.settle(n)
}

func (h *harness) takeChanges() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.changes
	h.changes = nil
	return c
}

// scripted is a probe that answers from a list of results per key, then
// passes.
type scripted struct {
	mu      sync.Mutex
	results map[lb.BackendKey][]error
	calls   map[lb.BackendKey]int
}

func newScripted() *scripted {
	return &scripted{results: map[lb.BackendKey][]error{}, calls: map[lb.BackendKey]int{}}
}

func (s *scripted) set(k lb.BackendKey, results ...error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results[k] = results
}

func (s *scripted) probe(_ context.Context, t Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[t.Key]++
	r := s.results[t.Key]
	if len(r) == 0 {
		return nil
	}
	s.results[t.Key] = r[1:]
	return r[0]
}

var errRefused = errors.New("connection refused")

func TestRiseFall(t *testing.T) {
	pass, fail := error(nil), errRefused
	type check struct {
		result    error
		wantUp    bool
		wantS     int
		wantF     int
		wantEvent string // OnChange call, if any
	}
	for _, tc := range []struct {
		name      string
		checks    []check
		wantTrans Transitions
		wantLogs  []string
	}{
		{
			name: "new backend up at its first success, down after fall, up after rise",
			checks: []check{
				{pass, true, 1, 0, "up=true"}, // pending: one result decides
				{fail, true, 0, 1, ""},
				{fail, true, 0, 2, ""},
				{pass, true, 1, 0, ""}, // a success resets the failures
				{fail, true, 0, 1, ""},
				{fail, true, 0, 2, ""},
				{fail, false, 0, 3, "up=false"}, // fall 3
				{pass, false, 1, 0, ""},
				{fail, false, 0, 1, ""}, // a failure resets the successes
				{pass, false, 1, 0, ""},
				{pass, true, 2, 0, "up=true"}, // rise 2
				{pass, true, 3, 0, ""},
			},
			wantTrans: Transitions{ToUp: 2, ToDown: 1},
			wantLogs: []string{
				`level=INFO msg="backend up: first check passed" service=web backend=198.18.1.11 check="tcp 198.18.1.11:80"`,
				`level=WARN msg="backend down" service=web backend=198.18.1.11 check="tcp 198.18.1.11:80" failures=3 result=failed error="connection refused"`,
				`level=INFO msg="backend up" service=web backend=198.18.1.11 check="tcp 198.18.1.11:80" successes=2`,
			},
		},
		{
			name: "new backend down at its first failure",
			checks: []check{
				{fail, false, 0, 1, ""},
				{fail, false, 0, 2, ""},
				{pass, false, 1, 0, ""},
				{pass, true, 2, 0, "up=true"},
			},
			wantTrans: Transitions{ToUp: 1},
			wantLogs: []string{
				`level=WARN msg="backend down: first check failed" service=web backend=198.18.1.11 check="tcp 198.18.1.11:80" result=failed error="connection refused"`,
				`level=INFO msg="backend up" service=web backend=198.18.1.11 check="tcp 198.18.1.11:80" successes=2`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := key("web", "198.18.1.11:0")
			probe := newScripted()
			var results []error
			for _, c := range tc.checks {
				results = append(results, c.result)
			}
			probe.set(k, results...)
			h := newHarness(t, probe.probe, Options{})
			h.c.SetTargets([]Target{targetOf(k, tcpCheck())})
			if h.c.Healthy(k) {
				t.Error("a new backend is healthy before its first check")
			}
			h.run()
			for i, c := range tc.checks {
				d := h.step()
				if i > 0 && (d < 2*time.Second-100*time.Millisecond || d >= 2*time.Second+100*time.Millisecond) {
					t.Errorf("check %d came %v after the previous one, want 2s ± 100ms", i, d)
				}
				st := h.c.Snapshot()[0]
				wantResult, wantErr := ResultOK, ""
				if c.result != nil {
					wantResult, wantErr = ResultFailed, c.result.Error()
				}
				got := fmt.Sprintf("up=%v healthy=%v s=%d f=%d %s %q pending=%v", st.Up, h.c.Healthy(k), st.Successes, st.Failures, st.LastResult, st.LastError, st.Pending)
				want := fmt.Sprintf("up=%v healthy=%v s=%d f=%d %s %q pending=false", c.wantUp, c.wantUp, c.wantS, c.wantF, wantResult, wantErr)
				if got != want {
					t.Errorf("after check %d: %s, want %s", i, got, want)
				}
				var wantEvents []string
				if c.wantEvent != "" {
					wantEvents = []string{"web 198.18.1.11 " + c.wantEvent}
				}
				if diff := cmp.Diff(wantEvents, h.takeChanges()); diff != "" {
					t.Errorf("OnChange after check %d (-want +got):\n%s", i, diff)
				}
			}
			if got := probe.calls[k]; got != len(tc.checks) {
				t.Errorf("%d probes, want %d", got, len(tc.checks))
			}
			if diff := cmp.Diff(tc.wantTrans, h.c.Transitions()); diff != "" {
				t.Errorf("Transitions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantLogs, h.logs.lines()); diff != "" {
				t.Errorf("logs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTimeout checks that a probe that hangs fails when its timeout is
// over, on the Checker's clock.
func TestTimeout(t *testing.T) {
	called := make(chan struct{}, 1)
	hang := func(ctx context.Context, _ Target) error {
		called <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, hang, Options{})
	k := key("web", "198.18.1.11:0")
	check := tcpCheck()
	check.Timeout = 700 * time.Millisecond
	h.c.SetTargets([]Target{targetOf(k, check)})
	h.run()

	n := h.sleeps()
	d, _ := h.clk.untilNext()
	h.clk.Advance(d)
	<-called
	h.clk.Advance(699 * time.Millisecond)
	if st := h.c.Snapshot()[0]; st.LastResult != ResultNone {
		t.Fatalf("a check ended before its timeout: %+v", st)
	}
	h.clk.Advance(time.Millisecond)
	h.settle(n)

	st := h.c.Snapshot()[0]
	got := fmt.Sprintf("%s %q took=%v f=%d up=%v", st.LastResult, st.LastError, st.LastDuration, st.Failures, st.Up)
	if want := `timeout "no answer within 700ms" took=700ms f=1 up=false`; got != want {
		t.Errorf("after the timeout: %s, want %s", got, want)
	}
}

// TestSpread checks that the first checks of 1000 targets are spread over
// the interval: no 100 ms window holds more than 2.5 times the average.
func TestSpread(t *testing.T) {
	const n = 1000
	var mu sync.Mutex
	first := map[lb.BackendKey]time.Time{}
	var h *harness
	record := func(_ context.Context, t Target) error {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := first[t.Key]; !ok {
			first[t.Key] = h.clk.Now()
		}
		return nil
	}
	h = newHarness(t, record, Options{})
	var ts []Target
	for i := range n {
		k := key("svc"+fmt.Sprint(i%7), fmt.Sprintf("198.18.%d.%d:0", 1+i/250, 1+i%250))
		ts = append(ts, targetOf(k, tcpCheck()))
	}
	start := h.clk.Now()
	h.c.SetTargets(ts)
	h.run()
	for len(first) < n {
		h.step()
		if h.clk.Now().Sub(start) > 3*time.Second {
			t.Fatalf("after 3s, only %d of %d targets were checked", len(first), n)
		}
	}
	var times []time.Duration
	for _, at := range first {
		times = append(times, at.Sub(start))
	}
	slices.Sort(times)
	if last := times[len(times)-1]; last >= 2*time.Second+100*time.Millisecond {
		t.Errorf("the last first check came %v after the start, want within 2s + 100ms jitter", last)
	}
	const window = 100 * time.Millisecond
	avg := float64(n) * float64(window) / float64(2*time.Second)
	most, at := 0, time.Duration(0)
	for i := range times {
		j, _ := slices.BinarySearch(times, times[i]+window)
		if j-i > most {
			most, at = j-i, times[i]
		}
	}
	if float64(most) > 2.5*avg {
		t.Errorf("%d checks start in the 100ms from %v; the average is %.0f", most, at, avg)
	}
	t.Logf("busiest 100ms window: %d checks (average %.0f)", most, avg)
}

// TestConcurrencyBound checks that no more checks run at once than
// Options.Concurrency, even when all are due together.
func TestConcurrencyBound(t *testing.T) {
	const n, limit = 1000, 8
	var cur, most, calls atomic.Int64
	release := make(chan struct{})
	block := func(ctx context.Context, _ Target) error {
		calls.Add(1)
		c := cur.Add(1)
		defer cur.Add(-1)
		for {
			m := most.Load()
			if c <= m || most.CompareAndSwap(m, c) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	h := newHarness(t, block, Options{Concurrency: limit})
	var ts []Target
	for i := range n {
		ts = append(ts, targetOf(key("web", fmt.Sprintf("198.18.%d.%d:0", 1+i/250, 1+i%250)), tcpCheck()))
	}
	h.c.SetTargets(ts)
	h.run()
	n0 := h.sleeps()
	h.clk.Advance(2*time.Second + 100*time.Millisecond) // every first check is due
	deadline := time.Now().Add(10 * time.Second)
	for cur.Load() < limit && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for a wrong extra worker
	if got := cur.Load(); got != limit {
		t.Errorf("%d checks running while all are due, want %d", got, limit)
	}
	close(release)
	h.settle(n0)
	if got := calls.Load(); got != n {
		t.Errorf("%d checks ran, want %d", got, n)
	}
	if got := most.Load(); got != limit {
		t.Errorf("at most %d checks ran at once, want %d", got, limit)
	}
}

// TestReload checks that SetTargets keeps the state of unchanged targets,
// restarts the counts of changed ones (keeping Up), starts new ones pending
// and forgets removed ones, without logging or counting anything.
func TestReload(t *testing.T) {
	probe := newScripted()
	same, changed, gone, added := key("web", "198.18.1.1:0"), key("web", "198.18.1.2:0"), key("web", "198.18.1.3:0"), key("dns", "198.18.2.1:53")
	probe.set(changed, errRefused, errRefused, errRefused, errRefused)
	h := newHarness(t, probe.probe, Options{})
	h.c.SetTargets([]Target{targetOf(same, tcpCheck()), targetOf(changed, tcpCheck()), targetOf(gone, tcpCheck())})
	h.run()
	for h.clk.Now().Before(newFakeClock().Now().Add(5 * time.Second)) {
		h.step()
	}
	before := byKey(h.c)
	if !before[same].Up || before[changed].Up || !before[gone].Up || before[same].Successes < 2 || before[changed].Failures < 2 {
		t.Fatalf("before the reload: %+v", before)
	}
	logs, trans := len(h.logs.lines()), h.c.Transitions()
	h.takeChanges()

	newCheck := tcpCheck()
	newCheck.Port = 8080
	moved := targetOf(changed, newCheck)
	moved.Addr = netip.AddrPortFrom(changed.Backend.Addr(), 8080)
	dnsCheck := tcpCheck()
	dnsCheck.Type = config.HealthCheckUDP
	h.setTargets(targetOf(same, tcpCheck()), moved, targetOf(added, dnsCheck))

	after := byKey(h.c)
	want := map[lb.BackendKey]State{
		same: before[same],
		changed: {
			Key: changed, Addr: moved.Addr, Type: config.HealthCheckTCP,
			Up: false, Pending: true, Since: before[changed].Since,
		},
		added: {
			Key: added, Addr: netip.MustParseAddrPort("198.18.2.1:80"), Type: config.HealthCheckUDP,
			Up: false, Pending: true, Since: h.clk.Now(),
		},
	}
	if diff := cmp.Diff(want, after, cmpNetip); diff != "" {
		t.Errorf("states after the reload (-want +got):\n%s", diff)
	}
	if !h.c.Healthy(gone) {
		t.Error("a removed backend is not healthy (unknown keys are)")
	}
	if got := len(h.logs.lines()); got != logs {
		t.Errorf("the reload logged: %q", h.logs.lines()[logs:])
	}
	if h.c.Transitions() != trans || len(h.takeChanges()) > 0 {
		t.Error("the reload counted or reported a transition")
	}

	// The changed backend's first check under its new settings decides.
	probe.set(changed)
	for byKey(h.c)[changed].Pending || byKey(h.c)[added].Pending {
		h.step()
	}
	if st := byKey(h.c)[changed]; !h.c.Healthy(changed) || st.Successes != 1 {
		t.Errorf("after one passed check under the new settings: %+v", st)
	}
	if diff := cmp.Diff([]string{"dns 198.18.2.1:53 up=true", "web 198.18.1.2 up=true"}, sorted(h.takeChanges())); diff != "" {
		t.Errorf("OnChange (-want +got):\n%s", diff)
	}
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}

// TestNoCheck checks that unknown backends and backends whose check is none
// are healthy and not checked.
func TestNoCheck(t *testing.T) {
	probe := newScripted()
	h := newHarness(t, probe.probe, Options{})
	k := key("web", "198.18.1.1:0")
	none := tcpCheck()
	none.Type = config.HealthCheckNone
	h.c.SetTargets([]Target{targetOf(k, none)})
	if !h.c.Healthy(k) || !h.c.Healthy(key("other", "198.18.9.9:0")) {
		t.Error("a backend without a check is not healthy")
	}
	if s := h.c.Snapshot(); len(s) != 0 {
		t.Errorf("Snapshot = %+v, want nothing", s)
	}
	h.run()
	if _, ok := h.clk.untilNext(); ok {
		t.Error("a check is scheduled although none is configured")
	}
}

// TestRestore checks the restart path: the states saved by one Checker are
// those of the next, without a check, a log line or a transition, and the
// checks resume with the saved counts.
func TestRestore(t *testing.T) {
	up, down := key("web", "198.18.1.1:0"), key("web", "[2001:db8::2]:0")
	other := key("web", "198.18.1.3:0")
	targets := []Target{targetOf(up, tcpCheck()), targetOf(down, tcpCheck()), targetOf(other, tcpCheck())}

	probe := newScripted()
	probe.set(down, append([]error{nil}, slices.Repeat([]error{errRefused}, 20)...)...)
	h := newHarness(t, probe.probe, Options{})
	h.c.SetTargets(targets)
	h.run()
	for range 20 {
		h.step()
	}
	saved := byKey(h.c)
	if !saved[up].Up || saved[down].Up || saved[down].Failures < 3 {
		t.Fatalf("before the restart: %+v", saved)
	}
	path := t.TempDir() + "/state/" + StateFile
	if err := h.c.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("saved file: %v, %v; want mode 0600", fi.Mode(), err)
	}

	// The next daemon: Load, then SetTargets with one check changed and a
	// backend added.
	probe2 := newScripted()
	h2 := newHarness(t, probe2.probe, Options{})
	if err := h2.c.Load(path); err != nil {
		t.Fatal(err)
	}
	changed := targetOf(other, tcpCheck())
	changed.Check.Rise = 5
	added := key("web", "198.18.1.4:0")
	h2.c.SetTargets([]Target{targets[0], targets[1], changed, targetOf(added, tcpCheck())})
	want := map[lb.BackendKey]State{
		up:    saved[up],
		down:  saved[down],
		other: {Key: other, Addr: changed.Addr, Type: config.HealthCheckTCP, Up: true, Pending: true, Since: saved[other].Since},
		added: {Key: added, Addr: netip.MustParseAddrPort("198.18.1.4:80"), Type: config.HealthCheckTCP, Pending: true, Since: h2.clk.Now()},
	}
	if diff := cmp.Diff(want, byKey(h2.c), cmpNetip); diff != "" {
		t.Errorf("restored states (-want +got):\n%s", diff)
	}
	if !h2.c.Healthy(up) || h2.c.Healthy(down) || !h2.c.Healthy(other) || h2.c.Healthy(added) {
		t.Error("Healthy does not follow the restored states")
	}
	h2.run()
	if lines := h2.logs.lines(); len(lines) > 0 || h2.c.Transitions() != (Transitions{}) {
		t.Errorf("restoring logged %q and counted %+v", lines, h2.c.Transitions())
	}

	// The down backend now passes: it needs rise (2) successes, not one as
	// a pending backend would.
	for byKey(h2.c)[down].Successes < 1 {
		h2.step()
	}
	if h2.c.Healthy(down) {
		t.Error("a restored down backend came up after one success")
	}
	for byKey(h2.c)[down].Successes < 2 {
		h2.step()
	}
	if !h2.c.Healthy(down) {
		t.Error("a restored down backend is not up after rise successes")
	}
	if diff := cmp.Diff([]string{"web 198.18.1.4 up=true", "web 2001:db8::2 up=true"}, sorted(h2.takeChanges())); diff != "" {
		t.Errorf("OnChange (-want +got):\n%s", diff)
	}
}

// byKey returns c's states by key.
func byKey(c *Checker) map[lb.BackendKey]State {
	m := map[lb.BackendKey]State{}
	for _, st := range c.Snapshot() {
		m[st.Key] = st
	}
	return m
}

func writeFile(path, data string) error { return os.WriteFile(path, []byte(data), 0o600) }

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	c := New(Options{})
	err := c.Load(dir + "/none.json")
	if err == nil || !strings.HasPrefix(err.Error(), "reading health state: open ") {
		t.Errorf("Load of a missing file: %v", err)
	}
	write := func(name, data string) string {
		t.Helper()
		p := dir + "/" + name
		if err := writeFile(p, data); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("v2.json", `{"version": 2, "backends": []}`)
	if err := c.Load(p); !errors.Is(err, ErrStateVersion) || err.Error() != "unknown health state version 2 in "+p+", want 1" {
		t.Errorf("Load of version 2: %v", err)
	}
	p = write("bad.json", `{"version": 1, "backends": [{"backend": "198.18.1.300:80"}]}`)
	if err := c.Load(p); err == nil || !regexp.MustCompile(`^decoding health state .*bad.json: .*198.18.1.300`).MatchString(err.Error()) {
		t.Errorf("Load of a bad address: %v", err)
	}
}

// TestRemovedDuringCheck checks that the result of a check whose target was
// removed while it ran is dropped.
func TestRemovedDuringCheck(t *testing.T) {
	called, release := make(chan struct{}, 1), make(chan struct{})
	wait := func(context.Context, Target) error {
		called <- struct{}{}
		<-release
		return nil
	}
	h := newHarness(t, wait, Options{})
	k := key("web", "198.18.1.1:0")
	h.c.SetTargets([]Target{targetOf(k, tcpCheck())})
	h.run()
	n := h.sleeps()
	d, _ := h.clk.untilNext()
	h.clk.Advance(d)
	<-called
	h.c.SetTargets(nil)
	close(release)
	h.settle(n)
	if s := h.c.Snapshot(); len(s) != 0 || h.c.Transitions() != (Transitions{}) || len(h.takeChanges()) > 0 || len(h.logs.lines()) > 0 {
		t.Errorf("a removed target's result was recorded: %+v", s)
	}
	if _, ok := h.clk.untilNext(); ok {
		t.Error("a removed target is still scheduled")
	}
}
