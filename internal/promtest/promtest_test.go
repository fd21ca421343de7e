package promtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/xdplb/xdplb/internal/testnet"
)

func TestParseQueryResponse(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    Vector
		wantErr string
	}{
		{
			name: "vector",
			body: `{"status":"success","data":{"resultType":"vector","result":[` +
				`{"metric":{"__name__":"x_total","vip":"198.18.100.1"},"value":[1700000000.5,"42"]},` +
				`{"metric":{"__name__":"x_total","vip":"2001:db8::1"},"value":[1700000000.5,"+Inf"]}]}}`,
			want: Vector{
				{Metric: map[string]string{"__name__": "x_total", "vip": "198.18.100.1"}, Value: 42},
				{Metric: map[string]string{"__name__": "x_total", "vip": "2001:db8::1"}, Value: math.Inf(1)},
			},
		},
		{
			name: "empty vector",
			body: `{"status":"success","data":{"resultType":"vector","result":[]}}`,
			want: Vector{},
		},
		{
			name: "scalar",
			body: `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"0.25"]}}`,
			want: Vector{{Metric: map[string]string{}, Value: 0.25}},
		},
		{
			name:    "error",
			body:    `{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error"}`,
			wantErr: `prometheus: bad_data: invalid parameter "query": 1:5: parse error`,
		},
		{
			name:    "matrix",
			body:    `{"status":"success","data":{"resultType":"matrix","result":[]}}`,
			wantErr: `result type "matrix": only vector and scalar are supported`,
		},
		{
			name:    "bad value",
			body:    `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"x"]}}`,
			wantErr: `sample value: strconv.ParseFloat: parsing "x": invalid syntax`,
		},
		{
			name:    "not json",
			body:    `<html>`,
			wantErr: `decoding "<html>": invalid character '<' looking for beginning of value`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseQueryResponse([]byte(tt.body))
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Fatalf("error = %q, want %q", gotErr, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestScrapeConfig(t *testing.T) {
	want := `# Written by internal/promtest.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: xdplb
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:9650"]
`
	if diff := cmp.Diff(want, scrapeConfig("127.0.0.1:9650")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestServer runs a real Prometheus against a target serving one gauge and
// reads the gauge back, before and after it changes.
func TestServer(t *testing.T) {
	var value atomic.Int64
	value.Store(42)
	target := httptest.NewServer(valueHandler(&value))
	defer target.Close()

	s := Start(t, target.Listener.Addr().String())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	if _, err := s.WaitFor(ctx, `up{job="xdplb"}`, Equals(1)); err != nil {
		t.Fatalf("%v\n%s", err, s.logTail())
	}
	if _, err := s.WaitFor(ctx, "promtest_value", Equals(42)); err != nil {
		t.Fatal(err)
	}
	value.Store(43)
	changed := time.Now()
	if _, err := s.WaitFor(ctx, "promtest_value", Equals(43)); err != nil {
		t.Fatal(err)
	}
	t.Logf("new value visible after %v", time.Since(changed).Round(10*time.Millisecond))

	got, err := s.Value(ctx, "promtest_value * 2")
	if err != nil || got != 86 {
		t.Errorf("Value(promtest_value * 2) = %v, %v; want 86", got, err)
	}
	if _, err := s.Value(ctx, "promtest_absent"); !errors.Is(err, ErrNoData) {
		t.Errorf("Value(promtest_absent) error = %v, want ErrNoData", err)
	}
	if _, err := s.Query(ctx, "sum("); err == nil || !strings.Contains(err.Error(), "bad_data") {
		t.Errorf("Query(sum() error = %v, want a bad_data error", err)
	}

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err = s.WaitFor(short, "promtest_value", Equals(1))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last result: [map[__name__:promtest_value instance:") {
		t.Errorf("WaitFor(never) error = %v, want a deadline error naming the last result", err)
	}
}

func TestLookBinary(t *testing.T) {
	if _, err := lookBinary("promtest-no-such-binary"); err == nil ||
		err.Error() != "promtest-no-such-binary is not installed: neither /usr/bin/promtest-no-such-binary nor one on $PATH (install the Debian package prometheus: make deps)" {
		t.Errorf("lookBinary(missing) error = %v", err)
	}
	if p, err := lookBinary("sh"); err != nil || p == "" {
		t.Errorf("lookBinary(sh) = %q, %v; want a path", p, err)
	}
}

// TestServerInNamespace runs Prometheus in a network namespace, scraping a
// target on that namespace's loopback, as the daemon end-to-end tests do.
func TestServerInNamespace(t *testing.T) {
	testnet.RequirePrivileged(t)
	Binary(t, "prometheus")
	ns, err := testnet.NewNS("prom")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var value atomic.Int64
	value.Store(7)
	srv := &http.Server{Handler: valueHandler(&value), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	s := StartWith(t, ln.Addr().String(), Options{NS: ns})
	// The server's loopback is the namespace's: not reachable from here.
	if resp, err := http.Get(s.URL + "/-/ready"); err == nil {
		resp.Body.Close()
		t.Errorf("GET %s/-/ready from the test's namespace succeeded; want Prometheus only inside %s", s.URL, ns.Name)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := s.WaitFor(ctx, "promtest_value", Equals(7)); err != nil {
		t.Fatalf("%v\n%s", err, s.logTail())
	}
}

// valueHandler serves one gauge, promtest_value, at /metrics.
func valueHandler(value *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP promtest_value A value.\n# TYPE promtest_value gauge\npromtest_value %d\n", value.Load())
	})
}
