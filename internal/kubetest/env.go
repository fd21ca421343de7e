package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure Start.
type Options struct {
	// Dir holds everything of the environment: etcd's data, the API
	// server's certificates, the kubeconfig files. It must exist.
	Dir string
	// NetNS is the path of a network namespace (/run/netns/NAME) to run
	// etcd and the API server in; empty for the caller's.
	NetNS string
	// Address is where the API server listens (127.0.0.1 when invalid).
	// etcd always listens on 127.0.0.1 of the same namespace.
	Address netip.Addr
	// Users are extra users, without any group or role, each given a token
	// and a kubeconfig file DIR/kubeconfig-USER (for RBAC tests).
	Users []string
	// Log receives the output of both programs and of a build (discarded
	// when nil).
	Log io.Writer
}

// Env is a running etcd and kube-apiserver.
type Env struct {
	// Kubeconfig is DIR/kubeconfig: the admin's credentials (group
	// system:masters).
	Kubeconfig string
	// Server is the API server's URL.
	Server string

	opts    Options
	bins    Binaries
	apiPort int
	etcdURL string

	mu        sync.Mutex
	etcd      *proc
	apiserver *proc
}

// AdminUser is the user of DIR/kubeconfig.
const AdminUser = "admin"

// Start starts etcd and the API server (building them first if need be, see
// FindOrBuild), writes the kubeconfig files and returns once the API answers
// and the namespace "default" exists. Close stops both.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if !opts.Address.IsValid() {
		opts.Address = netip.MustParseAddr("127.0.0.1")
	}
	bins, err := FindOrBuild(ctx, opts.Log)
	if err != nil {
		return nil, err
	}
	e := &Env{opts: opts, bins: bins, Kubeconfig: filepath.Join(opts.Dir, "kubeconfig")}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if err := e.writeFiles(); err != nil {
		return nil, err
	}
	ports, err := e.freePorts(3)
	if err != nil {
		return nil, err
	}
	e.apiPort = ports[2]
	e.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	e.Server = "https://" + net.JoinHostPort(opts.Address.String(), strconv.Itoa(e.apiPort))
	if err := e.writeKubeconfigs(); err != nil {
		return nil, err
	}
	e.etcd, err = e.start("etcd", bins.Etcd,
		"--name=kubetest",
		"--data-dir="+filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls="+e.etcdURL,
		"--advertise-client-urls="+e.etcdURL,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubetest="+peer,
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return nil, err
	}
	if err := e.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// StartAPIServer starts the API server (again, after StopAPIServer) on the
// same address and port, and waits until it answers.
func (e *Env) StartAPIServer(ctx context.Context) error {
	e.mu.Lock()
	if e.apiserver != nil {
		e.mu.Unlock()
		return errors.New("the API server is running")
	}
	dir := e.opts.Dir
	p, err := e.start("kube-apiserver", e.bins.APIServer,
		"--etcd-servers="+e.etcdURL,
		"--bind-address="+e.opts.Address.String(),
		"--advertise-address="+e.opts.Address.String(),
		"--secure-port="+strconv.Itoa(e.apiPort),
		"--cert-dir="+filepath.Join(dir, "pki"),
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		// Nothing is ever sent to these: they are addresses to hand out.
		"--service-cluster-ip-range=198.19.0.0/16,2001:db8:1::/112",
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--v=0",
	)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	e.apiserver = p
	e.mu.Unlock()
	return e.waitReady(ctx, p)
}

// StopAPIServer kills the API server (SIGKILL: it goes away as in a crash);
// etcd keeps running.
func (e *Env) StopAPIServer() error {
	e.mu.Lock()
	p := e.apiserver
	e.apiserver = nil
	e.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(syscall.SIGKILL)
}

// Close stops the API server and etcd.
func (e *Env) Close() error {
	e.mu.Lock()
	api, etcd := e.apiserver, e.etcd
	e.apiserver, e.etcd = nil, nil
	e.mu.Unlock()
	var errs []error
	if api != nil {
		errs = append(errs, api.stop(syscall.SIGTERM))
	}
	if etcd != nil {
		errs = append(errs, etcd.stop(syscall.SIGTERM))
	}
	return errors.Join(errs...)
}

// Token is the bearer token of a user (AdminUser or one of Options.Users).
func (e *Env) Token(user string) string { return tokenOf(e.opts.Dir, user) }

// UserKubeconfig is the kubeconfig file of one of Options.Users.
func (e *Env) UserKubeconfig(user string) string {
	return filepath.Join(e.opts.Dir, "kubeconfig-"+user)
}

// tokenOf derives a user's token from the directory: stable for the life of
// the environment, different between environments.
func tokenOf(dir, user string) string {
	b, _ := os.ReadFile(filepath.Join(dir, ".secret"))
	return hex.EncodeToString(b) + "-" + user
}

func (e *Env) writeFiles() error {
	dir := e.opts.Dir
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return err
	}
	secret := make([]byte, 16)
	rand.Read(secret)
	if err := os.WriteFile(filepath.Join(dir, ".secret"), secret, 0o600); err != nil {
		return err
	}
	// token,user,uid,"group1,group2"
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", tokenOf(dir, AdminUser), AdminUser, AdminUser)
	for _, u := range e.opts.Users {
		tokens += fmt.Sprintf("%s,%s,%s\n", tokenOf(dir, u), u, u)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func (e *Env) writeKubeconfigs() error {
	write := func(path, user string) error {
		// The API server's certificate is self-signed (--cert-dir): the
		// client does not verify it. This is a test cluster.
		kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: %s
    namespace: default
current-context: kubetest
`, e.Server, user, tokenOf(e.opts.Dir, user), user)
		return os.WriteFile(path, []byte(kc), 0o600)
	}
	if err := write(e.Kubeconfig, AdminUser); err != nil {
		return err
	}
	for _, u := range e.opts.Users {
		if err := write(e.UserKubeconfig(u), u); err != nil {
			return err
		}
	}
	return nil
}

// freePorts finds n free TCP ports on 127.0.0.1 and the API server's
// address, inside the namespace.
func (e *Env) freePorts(n int) ([]int, error) {
	var ports []int
	err := e.inNS(func() error {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(e.opts.Address.String(), "0"))
			if err != nil {
				return err
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	return ports, err
}

// proc is a running program of the environment.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (e *Env) start(name, bin string, args ...string) (*proc, error) {
	var cmd *exec.Cmd
	if e.opts.NetNS != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + e.opts.NetNS, "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	w := prefixWriter(e.opts.Log, name)
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group, and killed if this process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return nil
}

// waitReady waits until the API server answers /readyz and the namespace
// "default" exists.
func (e *Env) waitReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	client := e.httpClient()
	get := func(path string) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.Server+path, nil)
		req.Header.Set("Authorization", "Bearer "+e.Token(AdminUser))
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var last string
	for {
		code, err := get("/readyz")
		if err == nil && code == 200 {
			code, err = get("/api/v1/namespaces/default")
			if err == nil && code == 200 {
				return nil
			}
		}
		last = fmt.Sprint(code, err)
		select {
		case <-p.done:
			return fmt.Errorf("kube-apiserver exited: %v (see its log)", p.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the API server at %s: %w (last: %s)", e.Server, ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// httpClient talks to the API server, from inside its namespace when it has
// one.
func (e *Env) httpClient() *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	if e.opts.NetNS != "" {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := e.inNS(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// HTTPClient returns a client that reaches the API server (from inside its
// namespace, if it has one); the caller adds the token.
func (e *Env) HTTPClient() *http.Client { return e.httpClient() }

type prefixed struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

// prefixWriter writes whole lines to w, each after the program's name.
func prefixWriter(w io.Writer, name string) io.Writer {
	if w == io.Discard {
		return w
	}
	return &prefixed{w: w, prefix: name + ": "}
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			break
		}
		p.w.Write([]byte(p.prefix + string(p.buf[:i+1])))
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
