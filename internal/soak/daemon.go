package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/internal/controlplane"
	"github.com/xdplb/xdplb/internal/testnet"
)

// daemon is `xdplb run` in the load balancer's namespace, and the CLI that
// talks to it.
type daemon struct {
	bin, cfg, socket, logPath, metrics string
	ns                                 *testnet.NS

	cmd       *exec.Cmd
	done      chan error
	logOffset int64 // where the log of the current instance begins
}

// start starts the daemon and waits until it answers `xdplb status`.
func (d *daemon) start(ctx context.Context) error {
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	if fi, err := logf.Stat(); err == nil {
		d.logOffset = fi.Size()
	}
	// Not CommandContext: the soak stops it with SIGTERM, as systemd does.
	cmd := d.ns.Command(context.Background(), d.bin, "run", "--config", d.cfg, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a Ctrl-C of the soak does not reach
	// it before the soak stops it; and it dies with the soak.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting xdplb run: %w", err)
	}
	d.cmd, d.done = cmd, make(chan error, 1)
	go func() { d.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st controlplane.StatusInfo
		if err := d.json(ctx, &st, "status"); err == nil {
			return nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			return fmt.Errorf("xdplb run exited: %v\n%s", err, d.log())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("xdplb run not ready after 30 s:\n%s", d.log())
		}
	}
}

// stop sends SIGTERM and waits for the daemon to exit.
func (d *daemon) stop() error {
	if d.cmd == nil {
		return nil
	}
	cmd := d.cmd
	d.cmd = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			return fmt.Errorf("xdplb run: %w", err)
		}
		return nil
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-d.done
		return errors.New("xdplb run did not stop on SIGTERM within 20 s")
	}
}

// exited reports whether the daemon ended on its own, and how.
func (d *daemon) exited() (bool, error) {
	if d.cmd == nil {
		return false, nil
	}
	select {
	case err := <-d.done:
		d.done <- err
		return true, err
	default:
		return false, nil
	}
}

// log returns the log of the current instance (its last 4 KiB).
func (d *daemon) log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil || int64(len(b)) < d.logOffset {
		return ""
	}
	b = b[d.logOffset:]
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// logContains reports whether the current instance logged s.
func (d *daemon) logContains(s string) bool {
	f, err := os.Open(d.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(d.logOffset, io.SeekStart); err != nil {
		return false
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return true
		}
	}
	return false
}

// cli runs the xdplb CLI against the daemon's socket.
func (d *daemon) cli(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args = append(args, "--socket", d.socket)
	out, err := exec.CommandContext(ctx, d.bin, args...).CombinedOutput()
	return string(out), err
}

// call sends req to the daemon's control socket and decodes the answer's
// data into out. The soak asks its questions (status, backends, explain)
// here rather than through the CLI: a CLI process costs 50-70 ms of CPU to
// start, and a removal breaks dozens of connections at once, each of which
// asks where its flow goes now. Forked all at once, those processes took
// the soak's own servers and clients off the CPU for seconds on a loaded
// 2-vCPU host, long enough for the servers' idle timeout to close
// connections the datapath had kept (bench.md, "The soak's own stall").
// Changes go through the CLI (cli), as an operator makes them.
func (d *daemon) call(ctx context.Context, req controlplane.Request, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := controlplane.Call(ctx, d.socket, req, out); err != nil {
		return fmt.Errorf("xdplb %s: %w", req.Command, err)
	}
	return nil
}

// json asks the daemon for command's answer (status, backends) into v.
func (d *daemon) json(ctx context.Context, v any, command string) error {
	return d.call(ctx, controlplane.Request{Command: command}, v)
}

// counters scrapes the datapath's drop reasons and events from /metrics,
// keyed "drop/REASON" and "event/EVENT".
func (d *daemon) counters(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: d.ns.Dial, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping /metrics: %s", resp.Status)
	}
	return parseCounters(resp.Body)
}

// parseCounters reads xdplb_datapath_packets_total{action="drop"} and
// xdplb_datapath_events_total from a Prometheus text exposition.
func parseCounters(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		var key string
		switch {
		case strings.HasPrefix(l, "xdplb_datapath_packets_total{") && strings.Contains(l, `action="drop"`):
			key = "drop/" + label(l, "reason")
		case strings.HasPrefix(l, "xdplb_datapath_events_total{"):
			key = "event/" + label(l, "event")
		default:
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", l, err)
		}
		m[key] = v
	}
	return m, sc.Err()
}

func label(line, name string) string {
	_, rest, ok := strings.Cut(line, name+`="`)
	if !ok {
		return "?"
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
