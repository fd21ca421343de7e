package health

import "time"

// Clock is the time source of a [Checker]: the system clock in production,
// a fake one in tests.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer whose channel receives the time once d has
	// passed.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine once d has passed. The
	// returned Timer's channel is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer of a [Clock].
type Timer interface {
	C() <-chan time.Time
	// Stop stops the timer and reports whether it had not fired yet.
	Stop() bool
}

// SystemClock is the [Clock] of package time.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer implements Clock.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

// AfterFunc implements Clock.
func (SystemClock) AfterFunc(d time.Duration, f func()) Timer {
	return sysTimer{time.AfterFunc(d, f)}
}

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }
