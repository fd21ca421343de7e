package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/xdplb/xdplb/config"
)

// maxReply is the largest UDP reply read; the rest of a longer one is cut.
const maxReply = 2048

// userAgent is the User-Agent of HTTP and HTTPS checks.
const userAgent = "xdplb-health-check/1"

// ErrUnknownType is returned by [Probe] for a check type it does not know.
var ErrUnknownType = errors.New("unknown health check type")

// Probe runs one check of t over the network and returns nil if it passed.
// It is the default ProbeFunc. ctx bounds it.
//
//   - tcp: a connection to t.Addr is opened and closed.
//   - http, https: a GET of t.Check.Path, with Host t.Check.Host when set;
//     the status must be in t.Check.ExpectStatus. Redirects are not followed,
//     connections are not reused, proxies from the environment are ignored.
//     HTTPS does not verify the backend's certificate: the check asks whether
//     the backend serves, not who it is. Host is also the TLS server name.
//   - udp: t.Check.Send is sent in one datagram and the first reply must
//     contain t.Check.Expect (any reply when Expect is empty). An ICMP port
//     unreachable fails the check at once.
func Probe(ctx context.Context, t Target) error {
	dial := t.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	switch t.Check.Type {
	case config.HealthCheckTCP:
		conn, err := dial(ctx, "tcp", t.Addr.String())
		if err != nil {
			return err
		}
		return conn.Close()
	case config.HealthCheckHTTP, config.HealthCheckHTTPS:
		return probeHTTP(ctx, t, dial)
	case config.HealthCheckUDP:
		return probeUDP(ctx, t, dial)
	}
	return fmt.Errorf("%w %q", ErrUnknownType, t.Check.Type)
}

func probeHTTP(ctx context.Context, t Target, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	path := t.Check.Path
	if path == "" {
		path = config.DefaultHealthPath
	}
	expect := t.Check.ExpectStatus
	if len(expect) == 0 {
		expect = config.DefaultExpectStatus
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dial,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if t.Check.Type == config.HealthCheckHTTPS {
		name := t.Check.Host
		if h, _, err := net.SplitHostPort(name); err == nil {
			name = h
		}
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, ServerName: name}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, string(t.Check.Type)+"://"+t.Addr.String()+path, nil)
	if err != nil {
		return err
	}
	if t.Check.Host != "" {
		req.Host = t.Check.Host
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if !expect.Contains(resp.StatusCode) {
		return fmt.Errorf("status %d, want %s", resp.StatusCode, expect)
	}
	return nil
}

func probeUDP(ctx context.Context, t Target, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	conn, err := dial(ctx, "udp", t.Addr.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	// A context cancelled without a deadline (the Checker's timeout) ends
	// the read too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write([]byte(t.Check.Send)); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	buf := make([]byte, maxReply)
	n, err := conn.Read(buf)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return fmt.Errorf("no reply: %w", context.Cause(ctx))
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline of ctx, a hair before ctx says so.
		return fmt.Errorf("no reply: %w", context.DeadlineExceeded)
	default:
		return fmt.Errorf("reading reply: %w", err)
	}
	if !bytes.Contains(buf[:n], []byte(t.Check.Expect)) {
		return fmt.Errorf("reply %s does not hold %q", quoteCut(buf[:n], 64), t.Check.Expect)
	}
	return nil
}

// quoteCut quotes b, cut to at most n bytes.
func quoteCut(b []byte, n int) string {
	if len(b) <= n {
		return fmt.Sprintf("%q", b)
	}
	return strings.TrimSuffix(fmt.Sprintf("%q", b[:n]), `"`) + `…"`
}
