package controlplane

import (
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// watchdogInterval is how often the loop kicks systemd's watchdog: half its
// timeout, or 0 when the service has no watchdog (WATCHDOG_USEC unset, or
// meant for another process).
func watchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// kickWatchdog tells systemd the loop is alive.
func kickWatchdog() { _, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog) }
