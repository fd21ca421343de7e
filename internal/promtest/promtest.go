// Package promtest runs a real Prometheus server for tests and reads back
// what it scraped through its HTTP query API.
//
// [Start] launches Debian's prometheus binary on 127.0.0.1 with a random free
// port, storage in a temporary directory and a one-second scrape of one
// target; the test's cleanup stops it and removes its files. [Server.Query]
// runs an instant query, [Server.WaitFor] polls one until its result
// satisfies a predicate. A test that asserts on a counter read back this way
// checks the whole path an operator relies on: exposition format, scrape and
// PromQL. [StartWith] can run the server inside a test network namespace,
// for a daemon that listens on that namespace's loopback.
//
// The binaries come from the Debian package prometheus (`make deps`). When
// one is missing, [Binary] skips the test with the reason, or fails it when
// XDPLB_REQUIRE_PRIVILEGED=1, like every test that needs something from the
// host.
package promtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// Job is the job label Prometheus gives the target's series.
const Job = "xdplb"

// ScrapeInterval is how often the server scrapes its target.
const ScrapeInterval = time.Second

// ErrNoData is returned by [Server.Value] when the query matches nothing.
var ErrNoData = errors.New("query returned no data")

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
	pollInterval = 100 * time.Millisecond
)

// Binary returns the path of the Prometheus program name ("prometheus" or
// "promtool"): /usr/bin/NAME, else NAME on $PATH. When neither exists it
// skips t with the reason, or fails t when XDPLB_REQUIRE_PRIVILEGED=1.
func Binary(t testing.TB, name string) string {
	t.Helper()
	path, err := lookBinary(name)
	if err == nil {
		return path
	}
	if os.Getenv(testnet.EnvRequirePrivileged) == "1" {
		t.Fatalf("%v (%s=1, so this fails instead of skipping)", err, testnet.EnvRequirePrivileged)
	}
	t.Skipf("%v (set %s=1 to fail instead of skipping)", err, testnet.EnvRequirePrivileged)
	return ""
}

func lookBinary(name string) (string, error) {
	p := filepath.Join("/usr/bin", name)
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is not installed: neither /usr/bin/%s nor one on $PATH (install the Debian package prometheus: make deps)", name, name)
}

// Server is a running Prometheus server scraping one target.
type Server struct {
	// URL is the server's base URL, http://127.0.0.1:PORT.
	URL string
	// Target is the host:port it scrapes (path /metrics).
	Target string

	dir    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	client *http.Client
}

// Options change how [StartWith] runs Prometheus.
type Options struct {
	// NS runs Prometheus inside this network namespace, for a target that
	// listens there (on its 127.0.0.1, say); the Server's queries are dialled
	// from inside it too. Nil: the test process's namespace. Needs root
	// (testnet.RequirePrivileged).
	NS *testnet.NS
}

// Start starts Prometheus scraping target (host:port, path /metrics) every
// [ScrapeInterval] under job [Job], and waits until it is ready. It fails t
// if the server does not start; t's cleanup stops it and removes its files.
//
// Prometheus applies new targets on a five-second tick, so the first sample
// arrives up to about 5 s after Start returns; later ones every second. Wait
// for data with [Server.WaitFor] rather than querying once.
func Start(t testing.TB, target string) *Server {
	t.Helper()
	return StartWith(t, target, Options{})
}

// StartWith is [Start] with options.
func StartWith(t testing.TB, target string, opts Options) *Server {
	t.Helper()
	bin := Binary(t, "prometheus")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(scrapeConfig(target)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The port is picked by listening on :0 and closing again; another
	// process may take it in between, so a start that loses that race is
	// retried with a new port.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := start(bin, dir, cfg, target, opts)
		if err == nil {
			t.Cleanup(func() {
				if err := s.stop(); err != nil {
					t.Errorf("stopping prometheus: %v", err)
				}
			})
			return s
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("starting prometheus: %v", lastErr)
	return nil
}

func scrapeConfig(target string) string {
	return fmt.Sprintf(`# Written by internal/promtest.
global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[1]s
scrape_configs:
  - job_name: %[2]s
    metrics_path: /metrics
    static_configs:
      - targets: [%[3]q]
`, ScrapeInterval, Job, target)
}

func start(bin, dir, cfg, target string, opts Options) (*Server, error) {
	port, err := freePort(opts.NS)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	args := []string{
		"--config.file=" + cfg,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr,
		"--log.level=info",
	}
	cmd := exec.Command(bin, args...)
	transport := &http.Transport{}
	if opts.NS != nil {
		// nsenter execs Prometheus in place: the process is Prometheus
		// and takes the signals stop sends.
		cmd = opts.NS.Command(context.Background(), bin, args...)
		transport.DialContext = opts.NS.Dial
	}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	s := &Server{
		URL:    "http://" + addr,
		Target: target,
		dir:    dir,
		cmd:    cmd,
		exited: make(chan struct{}),
		client: &http.Client{Timeout: 5 * time.Second, Transport: transport},
	}
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(); err != nil {
		s.stop()
		return nil, fmt.Errorf("%w\n%s", err, s.logTail())
	}
	return s, nil
}

func freePort(ns *testnet.NS) (int, error) {
	listen := net.Listen
	if ns != nil {
		listen = ns.Listen
	}
	ln, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("picking a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls /-/ready until it answers 200, the process exits or
// startTimeout passes.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := s.client.Get(s.URL + "/-/ready")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/-/ready: %s", resp.Status)
		}
		select {
		case <-s.exited:
			return fmt.Errorf("prometheus exited before it was ready: %v", s.cmd.ProcessState)
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("prometheus not ready after %v: %w", startTimeout, err)
		}
	}
}

// stop ends the server (SIGTERM, then SIGKILL after stopTimeout) and waits
// for it to exit.
func (s *Server) stop() error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.exited:
		s.client.CloseIdleConnections()
		return nil
	case <-time.After(stopTimeout):
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.client.CloseIdleConnections()
	return fmt.Errorf("prometheus did not stop within %v of SIGTERM; killed", stopTimeout)
}

// Logs returns what the server has logged so far.
func (s *Server) Logs() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "prometheus.log"))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func (s *Server) logTail() string {
	l := strings.Split(strings.TrimSpace(s.Logs()), "\n")
	if len(l) > 20 {
		l = l[len(l)-20:]
	}
	return "prometheus log (last lines):\n" + strings.Join(l, "\n")
}

// Sample is one element of a query result.
type Sample struct {
	// Metric is the series' labels, __name__ included; empty for a scalar.
	Metric map[string]string
	Value  float64
}

// Vector is an instant query's result. A scalar result is a Vector of one
// Sample without labels.
type Vector []Sample

func (v Vector) String() string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range v {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%v => %v", s.Metric, s.Value)
	}
	b.WriteByte(']')
	return b.String()
}

// Query runs the instant query expr at the current time through
// /api/v1/query. A vector or scalar result is returned as a Vector; other
// result types, and errors Prometheus reports, are errors.
func (s *Server) Query(ctx context.Context, expr string) (Vector, error) {
	u := s.URL + "/api/v1/query?" + url.Values{"query": {expr}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("query %s: reading the response: %w", expr, err)
	}
	v, err := parseQueryResponse(body)
	if err != nil {
		return nil, fmt.Errorf("query %s: %s: %w", expr, resp.Status, err)
	}
	return v, nil
}

// Value runs expr and returns its single value: the scalar, or the value of
// the only sample. It is ErrNoData when nothing matches and an error when
// several series do.
func (s *Server) Value(ctx context.Context, expr string) (float64, error) {
	v, err := s.Query(ctx, expr)
	if err != nil {
		return 0, err
	}
	switch len(v) {
	case 0:
		return 0, fmt.Errorf("query %s: %w", expr, ErrNoData)
	case 1:
		return v[0].Value, nil
	}
	return 0, fmt.Errorf("query %s: %d series, want one: %v", expr, len(v), v)
}

// WaitFor runs expr every 100 ms until pred accepts its result, and returns
// that result. When ctx ends first, the error says what the query returned
// last.
func (s *Server) WaitFor(ctx context.Context, expr string, pred func(Vector) bool) (Vector, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var (
		last    Vector
		lastErr error
	)
	for {
		v, err := s.Query(ctx, expr)
		if err == nil && pred(v) {
			return v, nil
		}
		if err == nil || ctx.Err() == nil {
			last, lastErr = v, err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("waiting for %s: %w (last error: %v)", expr, ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("waiting for %s: %w (last result: %v)", expr, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Equals is a WaitFor predicate: exactly one sample, of value want.
func Equals(want float64) func(Vector) bool {
	return func(v Vector) bool { return len(v) == 1 && v[0].Value == want }
}

// apiResponse is the envelope of every /api/v1 answer.
type apiResponse struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
}

func parseQueryResponse(body []byte) (Vector, error) {
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("decoding %q: %w", truncate(body), err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s: %s", r.ErrorType, r.Error)
	}
	switch r.Data.ResultType {
	case "vector":
		var samples []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &samples); err != nil {
			return nil, fmt.Errorf("decoding vector: %w", err)
		}
		v := make(Vector, 0, len(samples))
		for _, s := range samples {
			f, err := sampleValue(s.Value)
			if err != nil {
				return nil, err
			}
			v = append(v, Sample{Metric: s.Metric, Value: f})
		}
		return v, nil
	case "scalar":
		var p [2]any
		if err := json.Unmarshal(r.Data.Result, &p); err != nil {
			return nil, fmt.Errorf("decoding scalar: %w", err)
		}
		f, err := sampleValue(p)
		if err != nil {
			return nil, err
		}
		return Vector{{Metric: map[string]string{}, Value: f}}, nil
	}
	return nil, fmt.Errorf("result type %q: only vector and scalar are supported", r.Data.ResultType)
}

// sampleValue decodes a [timestamp, "value"] pair; the value is a string so
// that NaN and ±Inf survive JSON.
func sampleValue(p [2]any) (float64, error) {
	s, ok := p[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", p[1])
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("sample value: %w", err)
	}
	return f, nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
