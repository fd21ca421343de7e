// Command xdplb is the xdplb load-balancer appliance and its CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		if !errors.As(err, new(exitStatus)) {
			fmt.Fprintln(os.Stderr, "xdplb:", err)
		}
		var u usageError
		var x exitStatus
		if errors.As(err, &x) {
			if x.msg != "" {
				fmt.Fprintln(os.Stderr, "xdplb:", x.msg)
			}
			os.Exit(x.code)
		}
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
