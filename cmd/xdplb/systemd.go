package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The systemd notification protocol is a datagram to $NOTIFY_SOCKET; a few
// lines, so no library for it.

// notify sends state lines to systemd; without NOTIFY_SOCKET it does nothing.
func notify(state ...string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(strings.Join(state, "\n")))
}

// monotonicUsec is the MONOTONIC_USEC line systemd wants with RELOADING=1.
func monotonicUsec() string {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return "MONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}

// startWatchdog pings systemd's watchdog at half its interval while ctx
// lasts; it returns a function that waits for the pinger to stop.
func startWatchdog(ctx context.Context) func() {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return func() {}
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Duration(usec) * time.Microsecond / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				notify("WATCHDOG=1")
			}
		}
	}()
	return func() { <-done }
}

func netInterfaceName(ifindex int) (string, error) {
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return "", err
	}
	return ifi.Name, nil
}
