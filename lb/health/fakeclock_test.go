package health

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when a test advances it. Timers fire
// in order of their deadlines; AfterFunc functions run synchronously in
// Advance, so that what they do is done when Advance returns.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock *fakeClock
	when  time.Time
	ch    chan time.Time
	f     func()
}

func newFakeClock() *fakeClock {
	// An odd start, so that no test depends on round numbers.
	return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	return c.add(&fakeTimer{ch: make(chan time.Time, 1)}, d)
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	return c.add(&fakeTimer{f: f}, d)
}

func (c *fakeClock) add(t *fakeTimer, d time.Duration) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.clock, t.when = c, c.now.Add(d)
	if d <= 0 {
		c.fire(t)
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

// fire fires t; c.mu is held.
func (c *fakeClock) fire(t *fakeTimer) {
	if t.ch != nil {
		t.ch <- c.now
		return
	}
	c.mu.Unlock()
	t.f()
	c.mu.Lock()
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	return true
}

// Advance moves the clock d ahead, firing the timers due on the way.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	end := c.now.Add(d)
	for {
		t := c.next()
		if t == nil || t.when.After(end) {
			break
		}
		c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == t })
		if t.when.After(c.now) {
			c.now = t.when
		}
		c.fire(t)
	}
	c.now = end
}

// next returns the timer that fires first; c.mu is held.
func (c *fakeClock) next() *fakeTimer {
	var first *fakeTimer
	for _, t := range c.timers {
		if first == nil || t.when.Before(first.when) {
			first = t
		}
	}
	return first
}

// untilNext returns the time until the first timer fires, or false if none
// is set.
func (c *fakeClock) untilNext() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.next()
	if t == nil {
		return 0, false
	}
	return t.when.Sub(c.now), true
}

func TestFakeClock(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	var order []string
	a := c.NewTimer(2 * time.Second)
	c.AfterFunc(time.Second, func() { order = append(order, "f@"+c.Now().Sub(start).String()) })
	b := c.NewTimer(3 * time.Second)
	c.Advance(2500 * time.Millisecond)
	select {
	case at := <-a.C():
		order = append(order, "a@"+at.Sub(start).String())
	default:
	}
	select {
	case <-b.C():
		order = append(order, "b fired early")
	default:
	}
	if !b.Stop() || a.Stop() {
		t.Error("Stop: want b pending and a fired")
	}
	if want := []string{"f@1s", "a@2s"}; !slices.Equal(order, want) {
		t.Errorf("fired %v, want %v", order, want)
	}
	if got := c.Now().Sub(start); got != 2500*time.Millisecond {
		t.Errorf("Now moved %v, want 2.5s", got)
	}
}
