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
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintln(os.Stderr, "xdplb:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "xdplb:", err)
		os.Exit(1)
	}
}
