// Command kube-env runs a Kubernetes API server and etcd for a person, as the
// tests do: it starts both (building them first when the cache has none, see
// package kubetest), writes DIR/kubeconfig with admin credentials, prints
// "ready" on a line of its own once the API answers and the namespace
// "default" exists, and stops both on SIGTERM or Ctrl-C.
//
//	go build -o /tmp/kube-env ./internal/kubetest/cmd/kube-env
//	/tmp/kube-env -dir /tmp/k8s &
//	kubectl --kubeconfig /tmp/k8s/kubeconfig get ns
//
// With -build it only fills the binary cache (what `make test` runs first).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/xdplb/xdplb/internal/kubetest"
)

func main() {
	dir := flag.String("dir", "", "directory for etcd's data, certificates and DIR/kubeconfig (created)")
	addr := flag.String("address", "127.0.0.1", "address the API server listens on")
	build := flag.Bool("build", false, "only find or build the binaries, print their paths and exit")
	verbose := flag.Bool("v", false, "copy the programs' output to stderr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *dir, *addr, *build, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "kube-env:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, addr string, build, verbose bool) error {
	if build {
		bins, err := kubetest.FindOrBuild(ctx, os.Stderr)
		if err != nil {
			return err
		}
		fmt.Println(bins.APIServer)
		fmt.Println(bins.Etcd)
		return nil
	}
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("-address: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.Create(dir + "/kube.log")
	if err != nil {
		return err
	}
	defer logf.Close()
	opts := kubetest.Options{Dir: dir, Address: a, Log: logf}
	if verbose {
		opts.Log = multi{logf, os.Stderr}
	}
	// The build's progress goes to stderr as well, so a cold start says why it waits.
	if _, err := kubetest.FindOrBuild(ctx, os.Stderr); err != nil {
		return err
	}
	env, err := kubetest.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer env.Close()
	fmt.Fprintf(os.Stderr, "kube-env: API server %s, kubeconfig %s\n", env.Server, env.Kubeconfig)
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "kube-env: stopping")
	return env.Close()
}

type multi []interface{ Write([]byte) (int, error) }

func (m multi) Write(b []byte) (int, error) {
	for _, w := range m {
		w.Write(b)
	}
	return len(b), nil
}
