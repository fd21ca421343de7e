package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

// DefaultConcurrency is the number of checks that run at once when
// Options.Concurrency is 0.
const DefaultConcurrency = 64

// Target is a backend to check.
type Target struct {
	// Key names the backend as the reconciler does.
	Key lb.BackendKey
	// Addr is the address and port the check connects to.
	Addr netip.AddrPort
	// Check is how to check it. Targets of type none (or "") are not
	// checked: they count as healthy.
	Check config.HealthCheck
	// Dial, if set, opens the check's connections instead of a net.Dialer;
	// tests use it to check from another network namespace. It is not part
	// of the target's identity.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// same reports whether t and o are the same check of the same backend.
func (t *Target) same(o *Target) bool {
	return t.Key == o.Key && t.Addr == o.Addr && t.Check.Equal(o.Check)
}

// ProbeFunc runs one check of t and returns nil if it passed. It must return
// soon after ctx is done; the Checker cancels ctx when the check's timeout
// is over.
type ProbeFunc func(ctx context.Context, t Target) error

// Result is the outcome of a check.
type Result string

// The results of a check.
const (
	ResultNone    Result = ""        // not checked yet
	ResultOK      Result = "ok"      // passed
	ResultFailed  Result = "failed"  // failed before its timeout
	ResultTimeout Result = "timeout" // did not end within its timeout
)

// State is the health of one backend, as [Checker.Snapshot] reports it.
type State struct {
	Key  lb.BackendKey
	Addr netip.AddrPort
	Type config.HealthCheckType
	// Up says whether the backend gets new flows.
	Up bool
	// Pending is set until the first check of a new backend, or the first
	// check after its check changed: that one result decides Up.
	Pending bool
	// Since is when Up last changed, or when the backend was first seen.
	Since time.Time
	// LastCheck is when the last check ended, LastDuration how long it took.
	LastCheck    time.Time
	LastDuration time.Duration
	LastResult   Result
	// LastError says why the last check failed; empty when it passed.
	LastError string
	// Successes and Failures are the consecutive successes and failures
	// up to the last check; one of them is 0.
	Successes, Failures int
}

// Transitions counts the changes of backends' Up since the Checker was made,
// for xdplb_backend_health_transitions_total{to}.
type Transitions struct {
	ToUp, ToDown uint64
}

// Options configure a [Checker]. The zero Options are the production ones.
type Options struct {
	// Concurrency bounds the checks running at once. Default
	// DefaultConcurrency. A check that is due while every worker is busy
	// waits; a backend whose previous check still runs skips its turn.
	Concurrency int
	// Probe runs a check. Default [Probe].
	Probe ProbeFunc
	// Clock is the time source. Default SystemClock.
	Clock Clock
	// Rand draws the jitter of the checks' start times. Default: the
	// randomly seeded generator of math/rand/v2.
	Rand *rand.Rand
	// Logger gets one line per change of a backend's state. Default
	// slog.Default().
	Logger *slog.Logger
	// OnChange, if set, is called after a backend went up or down, from
	// the Checker's goroutines, one call at a time per backend. It may call
	// the Checker's methods; the next check of that backend waits for it.
	OnChange func(key lb.BackendKey, up bool)
}

// Checker checks backends. Make one with [New], give it its targets with
// [Checker.SetTargets] (and its saved states with [Checker.Load]), and run
// it with [Checker.Run]. Its methods are safe for concurrent use.
type Checker struct {
	opts Options
	wake chan struct{} // SetTargets changed the schedule

	mu       sync.Mutex
	targets  map[lb.BackendKey]*target
	queue    dueQueue
	restored map[lb.BackendKey]savedState // from Load, for the next SetTargets
	trans    Transitions
	started  bool
	inflight int // checks dispatched and not yet recorded
	// sleeping is set while Run waits for the next check, and sleeps counts
	// its waits: tests use them to know that the Checker is idle.
	sleeping bool
	sleeps   uint64
}

// target is a Target with its state and schedule.
type target struct {
	Target
	st State
	// slot is the start of its current turn, without jitter; due is when
	// its next check starts.
	slot, due time.Time
	index     int  // in the queue; -1 when not in it
	busy      bool // a check of it runs
	removed   bool // no longer a target: results are dropped
	// fresh is set until the first result of a backend never checked
	// before: its first failure is logged although Up does not change.
	fresh bool
}

// New returns a Checker with no targets.
func New(opts Options) *Checker {
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Probe == nil {
		opts.Probe = Probe
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Checker{opts: opts, wake: make(chan struct{}, 1), targets: map[lb.BackendKey]*target{}}
}

// SetTargets replaces the targets. A target whose key, address and check
// are unchanged keeps its state and schedule; one whose address or check
// changed keeps Up but restarts its counts and is pending; a new one is
// pending and down, unless [Checker.Load] restored its state. Targets of
// type none are dropped: they count as healthy, like unknown keys. Keys are
// unique; of two targets with the same key, the later wins.
func (c *Checker) SetTargets(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Clock.Now()
	last := make(map[lb.BackendKey]int, len(targets))
	for i, t := range targets {
		last[t.Key] = i
	}
	next := make(map[lb.BackendKey]*target, len(targets))
	for i := range targets {
		t := targets[i]
		if last[t.Key] != i || t.Check.Type == config.HealthCheckNone || t.Check.Type == "" {
			continue
		}
		t.Check = withDefaults(t.Check)
		old := c.targets[t.Key]
		if old != nil && old.same(&t) {
			old.Dial = t.Dial
			next[t.Key] = old
			continue
		}
		nt := &target{Target: t, index: -1}
		nt.st = State{Key: t.Key, Addr: t.Addr, Type: t.Check.Type, Pending: true, Since: now}
		switch saved, ok := c.restored[t.Key]; {
		case old != nil:
			nt.st.Up, nt.st.Since = old.st.Up, old.st.Since
		case ok:
			nt.st = saved.state(&t)
			nt.fresh = nt.st.Pending && !nt.st.Up && nt.st.LastResult == ResultNone
		default:
			nt.fresh = true
		}
		c.schedule(nt, now)
		next[t.Key] = nt
	}
	for k, old := range c.targets {
		if next[k] != old {
			old.removed = true
			c.queue.remove(old)
		}
	}
	c.targets = next
	c.restored = nil
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// PlannedHealth is the health backends would have right after
// SetTargets(targets), for a plan; nothing changes. Like SetTargets: a
// target already checked keeps whether it is up, a new one is down until
// its check passes, a backend without a check is healthy.
//
// With pendingUp, backends whose check has not decided yet (new ones) count
// as up: the table once their checks pass.
func (c *Checker) PlannedHealth(targets []Target, pendingUp bool) lb.Health {
	c.mu.Lock()
	defer c.mu.Unlock()
	up := make(map[lb.BackendKey]bool, len(targets))
	for _, t := range targets {
		if t.Check.Type == config.HealthCheckNone || t.Check.Type == "" {
			delete(up, t.Key)
			continue
		}
		switch saved, ok := c.restored[t.Key]; {
		case c.targets[t.Key] != nil:
			up[t.Key] = c.targets[t.Key].st.Up
		case ok:
			up[t.Key] = saved.state(&t).Up
		default:
			up[t.Key] = pendingUp
		}
	}
	return func(k lb.BackendKey) bool {
		v, ok := up[k]
		return !ok || v
	}
}

// withDefaults fills in the timing a check built by hand may lack, as the
// configuration would.
func withDefaults(h config.HealthCheck) config.HealthCheck {
	if h.Interval <= 0 {
		h.Interval = config.DefaultHealthInterval
	}
	if h.Timeout <= 0 || h.Timeout >= h.Interval {
		h.Timeout = min(config.DefaultHealthTimeout, h.Interval/2)
	}
	if h.Rise <= 0 {
		h.Rise = config.DefaultHealthRise
	}
	if h.Fall <= 0 {
		h.Fall = config.DefaultHealthFall
	}
	return h
}

// Healthy reports whether the backend gets new flows: it is up, or it has
// no check. It has the type of lb.Health.
func (c *Checker) Healthy(key lb.BackendKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.targets[key]
	return t == nil || t.st.Up
}

// Snapshot returns the state of every checked backend, sorted by service,
// then backend.
func (c *Checker) Snapshot() []State {
	c.mu.Lock()
	out := make([]State, 0, len(c.targets))
	for _, t := range c.targets {
		out = append(out, t.st)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b State) int { return compareKeys(a.Key, b.Key) })
	return out
}

// Transitions returns the changes counted so far.
func (c *Checker) Transitions() Transitions {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trans
}

// ErrRunning is returned by a second call of [Checker.Run].
var ErrRunning = errors.New("health checker already running")

// Run checks the targets until ctx is done, then waits for its checks to
// stop and returns nil. It is the Checker's only long-lived goroutine and
// the owner of its workers; call it once.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return ErrRunning
	}
	c.started = true
	c.mu.Unlock()

	jobs := make(chan job)
	var wg sync.WaitGroup
	defer wg.Wait()
	for range c.opts.Concurrency {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-jobs:
					c.check(ctx, j)
				}
			}
		})
	}

	for {
		due, wait := c.takeDue()
		for i, j := range due {
			select {
			case jobs <- j:
			case <-ctx.Done():
				c.drop(due[i:])
				return nil
			}
		}
		if len(due) > 0 {
			continue // dispatching took time: more may be due
		}
		var timer Timer
		var fired <-chan time.Time
		if wait >= 0 {
			timer = c.opts.Clock.NewTimer(wait)
			fired = timer.C()
		}
		c.setSleeping(true)
		select {
		case <-ctx.Done():
		case <-fired:
		case <-c.wake:
		}
		c.setSleeping(false)
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *Checker) setSleeping(s bool) {
	c.mu.Lock()
	c.sleeping = s
	if s {
		c.sleeps++
	}
	c.mu.Unlock()
}

// job is one check to run.
type job struct {
	t    *target
	spec Target // t.Target when dispatched
}

// takeDue takes the targets whose check is due, schedules their next turn,
// and returns them with the time until the next check is due (-1: none is
// scheduled).
func (c *Checker) takeDue() ([]job, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Clock.Now()
	var due []job
	for len(c.queue) > 0 && !c.queue[0].due.After(now) {
		t := c.queue.pop()
		c.reschedule(t, now)
		if t.busy {
			continue // the previous check still runs: skip this turn
		}
		t.busy = true
		c.inflight++
		due = append(due, job{t: t, spec: t.Target})
	}
	if len(c.queue) == 0 {
		return due, -1
	}
	return due, c.queue[0].due.Sub(now)
}

// drop gives back jobs that were taken but never run.
func (c *Checker) drop(jobs []job) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range jobs {
		j.t.busy = false
		c.inflight--
	}
}

// errTimeout is the cause of a check's context when its timeout is over.
var errTimeout = errors.New("check timed out")

// check runs one check and records its result.
func (c *Checker) check(ctx context.Context, j job) {
	clock := c.opts.Clock
	timeout := j.spec.Check.Timeout
	start := clock.Now()
	pctx, cancel := context.WithCancelCause(ctx)
	timer := clock.AfterFunc(timeout, func() { cancel(errTimeout) })
	err := c.opts.Probe(pctx, j.spec)
	timer.Stop()
	timedOut := errors.Is(context.Cause(pctx), errTimeout)
	cancel(nil)
	end := clock.Now()

	if ctx.Err() != nil {
		// Shutting down: the check was cut short, not failed.
		c.drop([]job{j})
		return
	}
	res, msg := ResultOK, ""
	switch {
	case err == nil:
	case timedOut:
		res, msg = ResultTimeout, fmt.Sprintf("no answer within %s", timeout)
	default:
		res, msg = ResultFailed, err.Error()
	}
	c.record(j, res, msg, end, end.Sub(start))
}

// record applies a check's result to its target's state.
func (c *Checker) record(j job, res Result, msg string, end time.Time, took time.Duration) {
	c.mu.Lock()
	t := j.t
	if t.removed {
		t.busy = false
		c.inflight--
		c.mu.Unlock()
		return
	}
	st := &t.st
	ok := res == ResultOK
	st.LastCheck, st.LastDuration, st.LastResult, st.LastError = end, took, res, msg
	if ok {
		st.Successes++
		st.Failures = 0
	} else {
		st.Failures++
		st.Successes = 0
	}
	wasUp, fresh := st.Up, t.fresh
	t.fresh = false
	switch {
	case st.Pending:
		st.Pending = false
		st.Up = ok
	case st.Up && !ok && st.Failures >= t.Check.Fall:
		st.Up = false
	case !st.Up && ok && st.Successes >= t.Check.Rise:
		st.Up = true
	}
	changed := st.Up != wasUp
	if changed {
		st.Since = end
		if st.Up {
			c.trans.ToUp++
		} else {
			c.trans.ToDown++
		}
	}
	snap := *st
	c.mu.Unlock()

	// Once per change; a new backend's first failure is news too.
	if changed || fresh {
		c.logChange(snap, fresh)
	}
	if changed && c.opts.OnChange != nil {
		c.opts.OnChange(t.Key, snap.Up)
	}
	c.mu.Lock()
	t.busy = false
	c.inflight--
	c.mu.Unlock()
}

func (c *Checker) logChange(st State, first bool) {
	args := []any{
		"service", st.Key.Service, "backend", backendString(st.Key.Backend),
		"check", string(st.Type) + " " + st.Addr.String(),
	}
	switch {
	case st.Up && first:
		c.opts.Logger.Info("backend up: first check passed", args...)
	case st.Up:
		c.opts.Logger.Info("backend up", append(args, "successes", st.Successes)...)
	case first:
		c.opts.Logger.Warn("backend down: first check failed", append(args, "result", string(st.LastResult), "error", st.LastError)...)
	default:
		c.opts.Logger.Warn("backend down", append(args, "failures", st.Failures, "result", string(st.LastResult), "error", st.LastError)...)
	}
}

// backendString formats a backend as the CLI and metrics do: ADDR, or
// ADDR:PORT when it has a port.
func backendString(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ap.Addr().String()
	}
	return ap.String()
}

func compareKeys(a, b lb.BackendKey) int {
	if a.Service != b.Service {
		if a.Service < b.Service {
			return -1
		}
		return 1
	}
	return a.Backend.Compare(b.Backend)
}
