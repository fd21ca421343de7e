// Package health checks the backends of xdplb's services and says which are
// up, so that the reconciler keeps dead backends out of the Maglev tables.
//
// One [Checker] per daemon checks every backend whose service has a
// health check (config.HealthCheck): a TCP connect, an HTTP or HTTPS request
// whose status must be in a set, or a UDP datagram whose reply must hold
// given bytes. Checks of a backend start every interval at an offset derived
// from a hash of the backend's key, plus a small random jitter, so that the
// checks of thousands of backends are spread evenly over the interval instead
// of coming in bursts; a bounded pool of workers runs them, and each check
// has its own timeout. A backend goes down after fall consecutive failures
// and comes back up after rise consecutive successes; each change is logged
// once, counted, and reported through Options.OnChange so that the daemon
// applies it at once.
//
// A backend new to the Checker is pending: it counts as down until its first
// check, whose result alone decides (one success brings it up, one failure
// keeps it down). When a reload keeps a backend and its check, its state is
// kept; when the check changes, its counts restart and it keeps its up or
// down state until the first check under the new settings decides. [Checker.Save]
// and [Checker.Load] keep the states across a daemon restart, so that a
// restart neither takes up backends down nor brings down ones up.
//
// The clock and the probe are Options, so that tests drive the state machine
// and the scheduler deterministically.
package health
