package kubetest

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Version is the Kubernetes release the harness runs: kube-apiserver is built
// from k8s.io/kubernetes at this version. It matches the k8s.io/client-go of
// xdplb's go.mod (v0.X.Y for v1.X.Y); a test keeps them in step.
const Version = "v1.37.2"

// EtcdVersion is the etcd server the harness runs, the one Version's
// go.mod requires.
const EtcdVersion = "v3.7.0"

// The build module. k8s.io/kubernetes can only be built as a dependency with
// a replace directive for every one of its staging modules (k8s.io/api,
// k8s.io/client-go, …) pinned to the v0 release that matches; those replaces
// stay in this separate module so that they never touch xdplb's go.mod. The
// files carry .in suffixes: a directory with a go.mod would be a nested
// module that cannot be embedded.
var (
	//go:embed build/go.mod.in
	buildGoMod []byte
	//go:embed build/go.sum.in
	buildGoSum []byte
	//go:embed build/tools.go.in
	buildTools []byte
)

// CacheEnv names the environment variable that moves the binary cache from
// DefaultCache.
const CacheEnv = "XDPLB_KUBETEST_CACHE"

// DefaultCache is where root keeps the binaries, outside any clone, under a
// directory per Version. Other users keep them under their user cache
// directory (~/.cache/xdplb-kubetest).
const DefaultCache = "/var/cache/xdplb-kubetest"

// Binaries are the paths of the two programs the harness runs.
type Binaries struct {
	APIServer, Etcd string
}

// CacheDir is the directory that holds the binaries of Version.
func CacheDir() string {
	dir := os.Getenv(CacheEnv)
	if dir == "" {
		dir = DefaultCache
		if os.Geteuid() != 0 {
			if home, err := os.UserCacheDir(); err == nil {
				dir = filepath.Join(home, "xdplb-kubetest")
			}
		}
	}
	return filepath.Join(dir, Version)
}

// Cached returns the binaries of Version if the cache holds them.
func Cached() (Binaries, bool) {
	dir := CacheDir()
	bins := Binaries{APIServer: filepath.Join(dir, "kube-apiserver"), Etcd: filepath.Join(dir, "etcd")}
	return bins, have(bins)
}

// FindOrBuild returns the cached binaries of Version, building them first
// when they are missing. A cold build of kube-apiserver takes about 20
// minutes on two cores; it runs under nice 19 and writes its progress to
// log. Concurrent callers (test binaries of several packages) wait for one
// build through a lock file.
func FindOrBuild(ctx context.Context, log io.Writer) (Binaries, error) {
	dir := CacheDir()
	bins := Binaries{APIServer: filepath.Join(dir, "kube-apiserver"), Etcd: filepath.Join(dir, "etcd")}
	if have(bins) {
		return bins, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return bins, fmt.Errorf("kubetest cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return bins, fmt.Errorf("kubetest cache: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return bins, fmt.Errorf("locking the kubetest cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if have(bins) { // another process built them while we waited
		return bins, nil
	}
	tmp, err := os.MkdirTemp("", "xdplb-kubetest-build-")
	if err != nil {
		return bins, err
	}
	defer os.RemoveAll(tmp)
	for name, data := range map[string][]byte{"go.mod": buildGoMod, "go.sum": buildGoSum, "tools.go": buildTools} {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			return bins, err
		}
	}
	for _, b := range []struct{ pkg, out string }{
		{"go.etcd.io/etcd/server/v3", bins.Etcd},
		{"k8s.io/kubernetes/cmd/kube-apiserver", bins.APIServer},
	} {
		if _, err := os.Stat(b.out); err == nil {
			continue
		}
		start := time.Now()
		fmt.Fprintf(log, "kubetest: building %s (%s) into %s; a cold build of kube-apiserver takes about 20 minutes\n", b.pkg, Version, dir)
		part := b.out + ".part"
		cmd := exec.CommandContext(ctx, "nice", "-n", "19", goTool(), "build", "-trimpath", "-mod=readonly", "-o", part, b.pkg)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false", "GOWORK=off")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Run(); err != nil {
			os.Remove(part)
			return bins, fmt.Errorf("building %s: %w", b.pkg, err)
		}
		if err := os.Rename(part, b.out); err != nil {
			return bins, err
		}
		fmt.Fprintf(log, "kubetest: built %s in %s\n", filepath.Base(b.out), time.Since(start).Round(time.Second))
	}
	if !have(bins) {
		return bins, errors.New("kubetest: binaries missing after the build")
	}
	return bins, nil
}

func have(b Binaries) bool {
	for _, p := range []string{b.APIServer, b.Etcd} {
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// goTool is the go command: the one of GOROOT when it is set, else the one
// on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
