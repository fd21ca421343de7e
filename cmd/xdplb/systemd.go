package main

import (
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notify sends state lines to systemd (go-systemd's sd_notify); without
// NOTIFY_SOCKET it does nothing. The watchdog is kicked by the control
// plane's loop itself (internal/controlplane), not from here.
func notify(state ...string) {
	_, _ = daemon.SdNotify(false, strings.Join(state, "\n"))
}

// monotonicUsec is the MONOTONIC_USEC line systemd wants with RELOADING=1.
func monotonicUsec() string {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return "MONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}
