package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/config/kubernetes"
	"github.com/xdplb/xdplb/internal/controlplane"
)

const defaultConfig = "/etc/xdplb/xdplb.yaml"

// appliance is the running control plane as the control socket and the
// metrics collector see it.
type appliance struct {
	*controlplane.Plane
	// collectors are the metrics of the sources besides the file.
	collectors []prometheus.Collector
}

// Collectors are the sources' metrics.
func (a appliance) Collectors() []prometheus.Collector { return a.collectors }

// Reload answers `xdplb reload`.
func (a appliance) Reload() ReloadInfo { return a.Plane.Reload(context.Background(), "socket") }

// Plan answers `xdplb plan` and `xdplb reload --plan`.
func (a appliance) Plan(name string, data []byte) (PlanInfo, error) {
	return a.Plane.Plan(context.Background(), name, data)
}

// Monitor answers `xdplb monitor`.
func (a appliance) Monitor(ctx context.Context, f MonitorFilter, send func(MonitorEvent) error) error {
	return a.Plane.Monitor(ctx, f, send)
}

// BGP answers `xdplb bgp`.
func (a appliance) BGP() (BGPInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), controlplane.ControlTimeout/2)
	defer cancel()
	return a.Plane.BGP(ctx)
}

// BGPMetrics is the speaker's status for the metrics, or false without one.
func (a appliance) BGPMetrics() (BGPInfo, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, err := a.Plane.BGP(ctx)
	return b, err == nil
}

// L2StateMetrics is the L2 announcers' state for the metrics.
func (a appliance) L2StateMetrics() L2StateInfo { return a.Plane.L2State() }

// L2State answers `xdplb announce`.
func (a appliance) L2State(state string) (L2StateInfo, error) {
	switch state {
	case "active":
		return a.Plane.SetL2Active(true)
	case "standby":
		return a.Plane.SetL2Active(false)
	}
	return a.Plane.L2State(), nil
}

func runDaemon(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb run [--config FILE]\n\n"+
			"Runs the appliance: attaches the datapath to the configured interfaces, keeps it\n"+
			"in line with the configuration (reloaded on SIGHUP, `xdplb reload` and when the\n"+
			"file changes), serves metrics and the control socket. Stopping leaves the datapath\n"+
			"attached with its state; `xdplb detach` removes it.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError{fmt.Sprintf("run: --log-level: %v", err)}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	path, err := filepath.Abs(*cfgPath)
	if err != nil {
		return err
	}
	// The Kubernetes source, when the file has a kubernetes section (read
	// at start only; a reload passes it new pools).
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var sources []controlplane.Source
	var collectors []prometheus.Collector
	if cfg.Kubernetes != nil {
		src, err := kubernetes.New(cfg, kubernetes.Options{Logger: log})
		if err != nil {
			return err
		}
		sources = append(sources, src)
		collectors = append(collectors, src)
	}
	p, err := controlplane.New(ctx, controlplane.Options{ConfigPath: path, Logger: log, Version: versionString(), Sources: sources})
	if err != nil {
		return err
	}
	return serve(ctx, appliance{p, collectors}, log)
}

// serve runs the control plane, the control socket and metrics until ctx
// ends or one of them fails, and tells systemd how it goes.
func serve(ctx context.Context, a appliance, log *slog.Logger) error {
	cfg := a.Config()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("control socket", func(ctx context.Context) error {
		return serveControl(ctx, cfg.Paths.Socket, 0o600, a, log)
	})
	goRun("metrics", func(ctx context.Context) error {
		return serveMetrics(ctx, cfg.Metrics.Listen, newMetricsHandler(a, a.Ready), log)
	})
	goRun("control plane", a.Run)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	notify(daemon.SdNotifyReady, "STATUS=serving")
	log.Info("xdplb running", "config", cfg.File(), "version", versionString())
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			notify(daemon.SdNotifyReloading, monotonicUsec())
			a.Plane.Reload(ctx, "sighup")
			notify(daemon.SdNotifyReady)
		case err = <-errc:
			break loop
		}
	}
	notify(daemon.SdNotifyStopping)
	cancel()
	wg.Wait()
	log.Info("xdplb stopped; the datapath stays attached")
	return err
}
