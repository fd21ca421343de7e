package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// NewTest starts an environment for t in a directory of its own and stops it
// in t.Cleanup. The programs' output goes to DIR/kube.log, whose last lines
// the test log shows when the test fails.
//
// When the binaries are not cached yet, the test builds them if
// XDPLB_REQUIRE_PRIVILEGED=1 (as CI runs, after `make kubetest`) and is
// skipped otherwise, saying how to fill the cache: a cold build takes about
// 20 minutes.
func NewTest(t testing.TB, opts Options) *Env {
	t.Helper()
	if _, ok := Cached(); !ok && os.Getenv("XDPLB_REQUIRE_PRIVILEGED") != "1" {
		t.Skipf("kube-apiserver %s is not in the cache %s yet; `make kubetest` builds it (about 20 minutes)", Version, CacheDir())
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	var logPath string
	if opts.Log == nil {
		logPath = filepath.Join(opts.Dir, "kube.log")
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		opts.Log = f
	}
	e, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("starting the API server: %v%s", err, tail(logPath))
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("stopping the API server: %v", err)
		}
		if t.Failed() && logPath != "" {
			t.Logf("the API server's log:%s", tail(logPath))
		}
	})
	return e
}

// tail returns the last lines of a log file, for an error message.
func tail(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "\n" + strings.Join(lines, "\n")
}
