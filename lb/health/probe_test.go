package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

// The probes against servers on 127.0.0.1, with the system clock.

func probeTarget(t *testing.T, addr string, check config.HealthCheck) Target {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	if check.Timeout == 0 {
		check.Timeout = 2 * time.Second
	}
	return Target{Key: lb.BackendKey{Service: "test", Backend: ap}, Addr: ap, Check: check}
}

// probe runs Probe with the check's timeout.
func probe(t Target) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.Check.Timeout)
	defer cancel()
	return Probe(ctx, t)
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := c.LocalAddr().String()
		c.Close()
		return addr
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestProbeTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	})
	check := config.HealthCheck{Type: config.HealthCheckTCP}
	if err := probe(probeTarget(t, l.Addr().String(), check)); err != nil {
		t.Errorf("TCP check of a listening port: %v", err)
	}

	closed := closedPort(t, "tcp")
	err = probe(probeTarget(t, closed, check))
	if !errors.Is(err, syscall.ECONNREFUSED) || err.Error() != "dial tcp "+closed+": connect: connection refused" {
		t.Errorf("TCP check of a closed port: %v, want connection refused", err)
	}
	// The check's connection may still wait in the accept queue: give the
	// accept loop time to take it before closing the listener.
	for deadline := time.Now().Add(5 * time.Second); accepted.Load() < 1 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	l.Close()
	wg.Wait()
	if accepted.Load() != 1 {
		t.Errorf("the listener accepted %d connections, want 1", accepted.Load())
	}
}

// statusHandler answers /NNN with status NNN, and /host with 200 if the
// Host header and TLS server name are www.example.com.
func statusHandler(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("User-Agent") != userAgent {
		http.Error(w, "wrong user agent", http.StatusBadRequest)
		return
	}
	if r.URL.Path == "/host" {
		if r.Host != "www.example.com:8443" || (r.TLS != nil && r.TLS.ServerName != "www.example.com") {
			http.Error(w, "wrong host", http.StatusMisdirectedRequest)
		}
		return
	}
	var code int
	if _, err := fmt.Sscanf(r.URL.Path, "/%d", &code); err != nil {
		http.NotFound(w, r)
		return
	}
	if code == http.StatusFound {
		http.Redirect(w, r, "/500", code) // not followed
		return
	}
	w.WriteHeader(code)
}

func TestProbeHTTP(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(statusHandler))
	defer plain.Close()
	tls := httptest.NewTLSServer(http.HandlerFunc(statusHandler))
	defer tls.Close()
	servers := map[config.HealthCheckType]string{
		config.HealthCheckHTTP:  strings.TrimPrefix(plain.URL, "http://"),
		config.HealthCheckHTTPS: strings.TrimPrefix(tls.URL, "https://"),
	}
	for _, tc := range []struct {
		path, expect, host string
		want               string // the error, or "" for a pass
	}{
		{"/200", "200-399", "", ""},
		{"/302", "200-399", "", ""},
		{"/404", "200-399", "", "status 404, want 200-399"},
		{"/500", "200-399", "", "status 500, want 200-399"},
		{"/200", "200,204", "", ""},
		{"/204", "200,204", "", ""},
		{"/302", "200,204", "", "status 302, want 200,204"},
		{"/404", "", "", "status 404, want 200-399"}, // the default
		{"/host", "200", "www.example.com:8443", ""},
		{"/host", "200", "", "status 421, want 200"},
	} {
		for typ, addr := range servers {
			t.Run(fmt.Sprintf("%s%s_%s_%s", typ, tc.path, tc.expect, tc.host), func(t *testing.T) {
				check := config.HealthCheck{Type: typ, Path: tc.path, Host: tc.host}
				if tc.expect != "" {
					check.ExpectStatus = parseExpect(t, tc.expect)
				}
				err := probe(probeTarget(t, addr, check))
				if got := errString(err); got != tc.want {
					t.Errorf("%s check of %s: %q, want %q", typ, tc.path, got, tc.want)
				}
			})
		}
	}

	// A closed port fails, with the reason.
	err := probe(probeTarget(t, closedPort(t, "tcp"), config.HealthCheck{Type: config.HealthCheckHTTP}))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("HTTP check of a closed port: %v, want connection refused", err)
	}
	// A server that does not answer in time fails at the timeout.
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer stuck.Close()
	start := time.Now()
	err = probe(probeTarget(t, strings.TrimPrefix(stuck.URL, "http://"), config.HealthCheck{Type: config.HealthCheckHTTP, Timeout: 200 * time.Millisecond}))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("HTTP check of a stuck server: %v after %v, want the deadline", err, time.Since(start))
	}
}

// parseExpect parses expectStatus as the configuration does.
func parseExpect(t *testing.T, s string) config.StatusRanges {
	t.Helper()
	file := "interfaces: [{name: eth0}]\nmaglev: {seed: 7sVbCXnvcRBFqlPEkQJsHQ==}\nservices:\n" +
		"  - {name: s, address: 198.18.10.10, protocol: tcp, ports: [80], mode: dsr, healthCheck: {type: http, expectStatus: \"" + s + "\"}}\n"
	c, err := config.Parse("x.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	return c.ServiceSpecs[0].HealthCheck.ExpectStatus
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// udpServer answers every datagram with reply(datagram), or not at all
// when reply returns nil. It stops with the test.
func udpServer(t *testing.T, reply func([]byte) []byte) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n]); r != nil {
				c.WriteTo(r, from)
			}
		}
	})
	return c.LocalAddr().String()
}

func TestProbeUDP(t *testing.T) {
	echo := udpServer(t, func(b []byte) []byte { return append([]byte("echo: "), b...) })
	silent := udpServer(t, func([]byte) []byte { return nil })
	closed := closedPort(t, "udp")
	for _, tc := range []struct {
		name, addr, send, expect string
		want                     string
	}{
		{"expected reply", echo, "ping", "echo: ping", ""},
		{"part of the reply", echo, "ping", "ping", ""},
		{"any reply", echo, "ping", "", ""},
		{"wrong reply", echo, "ping", "pong", `reply "echo: ping" does not hold "pong"`},
		{"long wrong reply", echo, strings.Repeat("a", 100), "pong", `reply "echo: ` + strings.Repeat("a", 58) + `…" does not hold "pong"`},
		{"no reply", silent, "ping", "pong", "no reply: context deadline exceeded"},
		{"port unreachable", closed, "ping", "pong", "reading reply: read udp 127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := config.HealthCheck{Type: config.HealthCheckUDP, Send: tc.send, Expect: tc.expect, Timeout: 300 * time.Millisecond}
			got := errString(probe(probeTarget(t, tc.addr, check)))
			if got != tc.want && (tc.want == "" || !strings.HasPrefix(got, tc.want)) {
				t.Errorf("UDP check: %q, want %q", got, tc.want)
			}
		})
	}
	// The port unreachable fails at once, not at the timeout.
	start := time.Now()
	err := probe(probeTarget(t, closed, config.HealthCheck{Type: config.HealthCheckUDP, Send: "x", Timeout: 5 * time.Second}))
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
		t.Errorf("UDP check of a closed port: %v after %v, want connection refused at once", err, time.Since(start))
	}
}

// TestProbeDial checks that a target's Dial opens its connections.
func TestProbeDial(t *testing.T) {
	echo := udpServer(t, func(b []byte) []byte { return b })
	var dialed []string
	tgt := probeTarget(t, "198.18.0.1:7", config.HealthCheck{Type: config.HealthCheckUDP, Send: "hi", Expect: "hi"})
	tgt.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, network+" "+addr)
		var d net.Dialer
		return d.DialContext(ctx, network, echo)
	}
	if err := probe(tgt); err != nil {
		t.Fatal(err)
	}
	if len(dialed) != 1 || dialed[0] != "udp 198.18.0.1:7" {
		t.Errorf("dialed %q, want [udp 198.18.0.1:7]", dialed)
	}
	tgt.Check.Type = "icmp"
	if err := probe(tgt); !errors.Is(err, ErrUnknownType) {
		t.Errorf("check of type icmp: %v", err)
	}
}

// TestCheckerSystemClock runs a Checker with the real probe and clock
// against a TCP listener that stops and starts again.
func TestCheckerSystemClock(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	serve := func(l net.Listener) func() {
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		})
		return func() { l.Close(); wg.Wait() }
	}
	stop := serve(l)
	defer func() { stop() }()

	changes := make(chan bool, 10)
	c := New(Options{Logger: slog.New(slog.DiscardHandler), OnChange: func(_ lb.BackendKey, up bool) { changes <- up }})
	check := config.HealthCheck{Type: config.HealthCheckTCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}
	c.SetTargets([]Target{probeTarget(t, addr, check)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	wait := func(want bool) time.Duration {
		t.Helper()
		start := time.Now()
		select {
		case up := <-changes:
			if up != want {
				t.Fatalf("went up=%v, want up=%v", up, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("did not go up=%v within 5s", want)
		}
		return time.Since(start)
	}
	wait(true)
	stop()
	t.Logf("down %v after the listener stopped (fall 2 × 100ms)", wait(false))
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	stop = serve(l)
	t.Logf("up %v after it started again (rise 2 × 100ms)", wait(true))
	if got := c.Transitions(); got != (Transitions{ToUp: 2, ToDown: 1}) {
		t.Errorf("Transitions = %+v, want 2 up, 1 down", got)
	}

	// A second Run is refused.
	if err := c.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: %v, want ErrRunning", err)
	}
}

// TestRunStops checks that Run returns once its context is done, with the
// checks it started stopped.
func TestRunStops(t *testing.T) {
	var running atomic.Int64
	started := make(chan struct{}, 100)
	hang := func(ctx context.Context, _ Target) error {
		running.Add(1)
		defer running.Add(-1)
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	c := New(Options{Probe: hang, Concurrency: 4})
	var ts []Target
	for i := range 10 {
		check := config.HealthCheck{Type: config.HealthCheckTCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond}
		ts = append(ts, probeTarget(t, fmt.Sprintf("198.18.0.%d:80", i+1), check))
	}
	c.SetTargets(ts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-started
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := running.Load(); n != 0 {
		t.Errorf("%d checks still running after Run returned", n)
	}
}
