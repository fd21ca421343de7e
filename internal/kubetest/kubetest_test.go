package kubetest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
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

// TestVersionMatchesClientGo keeps the API server's release in step with the
// client-go that xdplb is built with (v0.X.Y goes with v1.X.Y), and the build
// module with Version.
func TestVersionMatchesClientGo(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	var clientGo string
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "k8s.io/client-go" {
			clientGo = f[1]
		}
	}
	if want := "v0." + strings.TrimPrefix(Version, "v1."); clientGo != want {
		t.Errorf("k8s.io/client-go is %s; kubetest.Version %s wants %s", clientGo, Version, want)
	}
	mod := string(buildGoMod)
	if !strings.Contains(mod, "k8s.io/kubernetes "+Version+"\n") || !strings.Contains(mod, "go.etcd.io/etcd/server/v3 "+EtcdVersion+"\n") {
		t.Errorf("build/go.mod.in does not require k8s.io/kubernetes %s and etcd %s", Version, EtcdVersion)
	}
	if n := strings.Count(mod, "=> k8s.io/"); n < 20 || strings.Count(mod, "v0."+strings.TrimPrefix(Version, "v1.")+"\n") < n {
		t.Errorf("build/go.mod.in: %d staging replaces, not all at the matching v0 release", n)
	}
}

// TestEnv starts the API server, reads the namespace "default" with the admin
// kubeconfig's token, kills the API server and starts it again: etcd keeps
// what was written.
func TestEnv(t *testing.T) {
	testnet.RequirePrivileged(t) // the binaries are cached under /var/cache
	e := NewTest(t, Options{Users: []string{"nobody"}})
	kc, err := os.ReadFile(e.Kubeconfig)
	if err != nil || !strings.Contains(string(kc), e.Server) {
		t.Fatalf("kubeconfig %s: %v\n%s", e.Kubeconfig, err, kc)
	}
	get := func(user, path string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", e.Server+path, nil)
		req.Header.Set("Authorization", "Bearer "+e.Token(user))
		resp, err := e.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, m := get(AdminUser, "/api/v1/namespaces/default"); code != 200 || m["kind"] != "Namespace" {
		t.Fatalf("GET namespace default as admin: %d %v", code, m)
	}
	if code, _ := get("nobody", "/api/v1/services"); code != 403 {
		t.Errorf("a user without roles lists services: status %d, want 403", code)
	}
	if err := e.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.HTTPClient().Get(e.Server + "/readyz"); err == nil {
		t.Errorf("the API server answers after StopAPIServer")
	}
	if err := e.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(AdminUser, "/api/v1/namespaces/default"); code != 200 {
		t.Fatalf("after a restart: status %d", code)
	}
}

// TestKubeEnvCommand runs the built kube-env as a person would: it prints
// "ready", the kubeconfig works, and SIGTERM stops both programs.
func TestKubeEnvCommand(t *testing.T) {
	testnet.RequirePrivileged(t)
	if _, err := FindOrBuild(context.Background(), io.Discard); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "kube-env")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/kube-env").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "-dir", dir)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("first line %q, want ready", l)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("no ready line")
	}
	if _, err := os.Stat(filepath.Join(dir, "kubeconfig")); err != nil {
		t.Fatal(err)
	}
	pids := children(t, cmd.Process.Pid)
	if len(pids) != 2 {
		t.Errorf("kube-env runs %d programs (%v), want etcd and kube-apiserver", len(pids), pids)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("kube-env after SIGTERM: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("kube-env still runs a minute after SIGTERM")
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			if b, _ := os.ReadFile("/proc/" + itoa(pid) + "/stat"); !strings.Contains(string(b), ") Z ") {
				t.Errorf("process %d still runs after kube-env stopped", pid)
			}
		}
	}
}

// children are the processes whose parent is pid (forked by any of its
// threads).
func children(t *testing.T, pid int) []int {
	tasks, err := filepath.Glob("/proc/" + itoa(pid) + "/task/*/children")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no tasks of %d: %v", pid, err)
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(f)
			if err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }
