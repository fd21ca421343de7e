package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
)

// The SNAT end-to-end test: the real daemon, one-arm (clients and backends
// on one LAN), backends that are plain servers with no VIP and no route to
// the clients, and the kernel's forwarding off in the appliance's namespace,
// so that every translated packet is the XDP program's work.

const (
	snatWebPort   = 8080 // the backends' own port behind VIP:80
	snatDLPort    = 8081 // behind VIP:81: a 10 s download
	snatDNSPort   = 5353 // UDP, behind VIP:53
	snatHostPort  = 9000 // the appliance's own connection to a backend
	snatVIP4      = "198.18.100.1"
	snatVIP6      = "2001:db8:100::1"
	snatVIP4Far   = "198.18.100.2" // two-arm: its backend is behind another interface
	snatDLChunk   = 32 << 10
	snatDLChunks  = 100 // every 100 ms: 10 s
	snatPortsYAML = "20000-29999"
)

// snatServers are the backends' servers: each answers with its name and the
// address it sees the connection come from.
type snatServers struct {
	mu   sync.Mutex
	lns  []io.Closer
	wg   sync.WaitGroup
	conn map[net.Conn]bool
}

func (s *snatServers) close() {
	s.mu.Lock()
	for _, l := range s.lns {
		l.Close()
	}
	for c := range s.conn {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *snatServers) track(c net.Conn, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.conn[c] = true
	} else {
		delete(s.conn, c)
	}
}

// serve accepts on ln and runs fn on every connection.
func (s *snatServers) serve(ln net.Listener, fn func(net.Conn)) {
	s.mu.Lock()
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.track(c, true)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { c.Close(); s.track(c, false) }()
				fn(c)
			}()
		}
	}()
}

func startSNATServers(t *testing.T, hosts []*testnet.Host) *snatServers {
	t.Helper()
	s := &snatServers{conn: map[net.Conn]bool{}}
	t.Cleanup(s.close)
	for _, h := range hosts {
		name := h.Name
		web, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", snatWebPort))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(web, func(c net.Conn) {
			if _, err := fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr()); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		})
		dl, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", snatDLPort))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(dl, func(c net.Conn) {
			chunk := make([]byte, snatDLChunk)
			for i := range chunk {
				chunk[i] = byte(i)
			}
			for range snatDLChunks {
				if _, err := c.Write(chunk); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
		host, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", snatHostPort))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(host, func(c net.Conn) { fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr()) })
		pc, err := h.ListenPacket("udp", fmt.Sprintf("[::]:%d", snatDNSPort))
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.lns = append(s.lns, pc)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s %s", name, from, buf[:n])), from)
			}
		}()
	}
	return s
}

// snatConfig is the appliance's configuration: SNAT from its own LAN
// addresses, web (TCP 80), dl (TCP 81) and dns (UDP 53) on the IPv4 VIP,
// web6 on the IPv6 VIP, over the backends named.
func snatConfig(f testFiles, topo *testnet.Topology, backends []string, far *testnet.Host) string {
	var b strings.Builder
	fmt.Fprintf(&b, "snat:\n  sources: [%s, %q]\n  ports: %q\n  timeouts: {tcpEstablished: 1h, tcpTransitory: 30s, udp: 30s}\nservices:\n",
		topo.LB.IPv4, topo.LB.IPv6.String(), snatPortsYAML)
	svc := func(name, vip, proto string, port, bport int, v6 bool) {
		fmt.Fprintf(&b, "  - name: %s\n    address: %q\n    protocol: %s\n    ports: [%d]\n    mode: snat\n    backends:\n", name, vip, proto, port)
		for _, h := range topo.Backends {
			if !containsName(backends, h.Name) {
				continue
			}
			a := h.IPv4
			if v6 {
				a = h.IPv6
			}
			fmt.Fprintf(&b, "      - {address: %q, port: %d}\n", a.String(), bport)
		}
	}
	svc("web", snatVIP4, "tcp", 80, snatWebPort, false)
	svc("dl", snatVIP4, "tcp", 81, snatDLPort, false)
	svc("dns", snatVIP4, "udp", 53, snatDNSPort, false)
	svc("web6", snatVIP6, "tcp", 80, snatWebPort, true)
	// Two-arm: a backend behind the appliance's second interface.
	fmt.Fprintf(&b, "  - name: far\n    address: %q\n    protocol: tcp\n    ports: [80]\n    mode: snat\n    backends:\n      - {address: %q, port: %d}\n",
		snatVIP4Far, far.IPv4.String(), snatWebPort)
	y := applianceYAML(f, topo.LB.IPv4.String(), topo.LB.IPv6.String(), b.String())
	return strings.Replace(y, "interfaces:\n  - name: eth0\n", "interfaces:\n  - name: eth0\n  - name: "+far.Port+"\n", 1)
}

func containsName(names []string, n string) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

// snatConn is a connection through a SNAT VIP, with what its backend saw.
type snatConn struct {
	*scenario.Conn
	seen netip.AddrPort // where the backend saw it come from
}

func dialSNAT(ctx context.Context, topo *testnet.Topology, vip string, port int) (*snatConn, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := topo.Client.Dial(dctx, "tcp", net.JoinHostPort(vip, fmt.Sprint(port)))
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the backend's greeting: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	name, from, _ := strings.Cut(strings.TrimSpace(line), " ")
	seen, err := netip.ParseAddrPort(from)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting %q: %w", line, err)
	}
	return &snatConn{Conn: scenario.NewConn(c, r, name), seen: netip.AddrPortFrom(seen.Addr().Unmap(), seen.Port())}, nil
}

func TestSNATEndToEnd(t *testing.T) {
	testnet.RequirePrivileged(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
	far, err := topo.AddRoutedHost("far", topo.LB)
	if err != nil {
		t.Fatal(err)
	}
	// A redirect onto a veth arrives when its peer runs an XDP program.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "snat_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	if err := far.NS.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: far.IfIndex})
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The appliance does not forward: only XDP does (AddRoutedHost turned
	// forwarding on).
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := topo.LB.NS.Sysctl(k, "0"); err != nil {
			t.Fatal(err)
		}
	}
	startSNATServers(t, append([]*testnet.Host{far}, topo.Backends...))

	dir := t.TempDir()
	f := testFiles{Socket: filepath.Join(dir, "xdplb.sock"), State: filepath.Join(dir, "state"),
		BPF: filepath.Join(testnet.MountBPFFS(t), "xdplb"), Metrics: "127.0.0.1:9650"}
	cfgPath := filepath.Join(dir, "xdplb.yaml")
	all := []string{"b1", "b2", "b3"}
	writeAtomically(t, cfgPath, snatConfig(f, topo, all, far))
	d := startTestDaemon(t, bin, topo.LB.NS, cfgPath, f.Socket)
	t.Cleanup(func() {
		d.stop(t)
		if out, err := cli(t, bin, "detach", "--pin-path", f.BPF); err != nil {
			t.Errorf("xdplb detach: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	src4, src6 := topo.LB.IPv4, topo.LB.IPv6

	t.Run("1000 connections spread, each from the SNAT source", func(t *testing.T) {
		counts := map[string]int{}
		var mu sync.Mutex
		var errs []error
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for range 1000 {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := dialSNAT(ctx, topo, snatVIP4, 80)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				defer c.Close()
				if c.seen.Addr() != src4 {
					errs = append(errs, fmt.Errorf("backend %s saw the connection from %s, want the SNAT source %s", c.Backend, c.seen, src4))
				}
				if p := c.seen.Port(); p < 20000 || p > 29999 {
					errs = append(errs, fmt.Errorf("backend %s saw source port %d, outside snat.ports %s", c.Backend, p, snatPortsYAML))
				}
				counts[c.Backend]++
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of 1000 connections failed; the first: %v", len(errs), errs[0])
		}
		t.Logf("connections per backend: %v", counts)
		for _, b := range all {
			if n := counts[b]; n < 250 || n > 417 {
				t.Errorf("backend %s answered %d of 1000 connections, want 333 ±25%%", b, n)
			}
		}
	})

	t.Run("two-arm: a backend behind another interface", func(t *testing.T) {
		for range 50 {
			c, err := dialSNAT(ctx, topo, snatVIP4Far, 80)
			if err != nil {
				t.Fatal(err)
			}
			if c.Backend != "far" || c.seen.Addr() != src4 {
				t.Errorf("answered by %s, which saw the connection from %s; want far, from %s", c.Backend, c.seen, src4)
			}
			if err := c.Echo("across two arms"); err != nil {
				t.Error(err)
			}
			c.Close()
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		for range 20 {
			c, err := dialSNAT(ctx, topo, snatVIP6, 80)
			if err != nil {
				t.Fatal(err)
			}
			if c.seen.Addr() != src6 {
				t.Errorf("backend %s saw the connection from %s, want the SNAT source %s", c.Backend, c.seen, src6)
			}
			if err := c.Echo("hello over IPv6"); err != nil {
				t.Error(err)
			}
			c.Close()
		}
	})

	t.Run("UDP request and response", func(t *testing.T) {
		for i := range 20 {
			c, err := topo.Client.Dial(ctx, "udp", net.JoinHostPort(snatVIP4, "53"))
			if err != nil {
				t.Fatal(err)
			}
			q := fmt.Sprintf("query %d", i)
			var answer string
			for try := 0; try < 3 && answer == ""; try++ {
				if _, err := c.Write([]byte(q)); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 512)
				n, err := c.Read(buf)
				if err == nil {
					answer = string(buf[:n])
				}
			}
			c.Close()
			fields := strings.SplitN(answer, " ", 3)
			if len(fields) != 3 || fields[2] != q {
				t.Fatalf("answer %q to %q", answer, q)
			}
			if from, err := netip.ParseAddrPort(fields[1]); err != nil || from.Addr().Unmap() != src4 {
				t.Errorf("backend %s saw the datagram from %s, want the SNAT source %s", fields[0], fields[1], src4)
			}
		}
	})

	t.Run("the host's own connection from the SNAT address", func(t *testing.T) {
		for _, b := range topo.Backends {
			c, err := topo.LB.Dial(ctx, "tcp", netip.AddrPortFrom(b.IPv4, snatHostPort).String())
			if err != nil {
				t.Fatalf("appliance to %s: %v", b.Name, err)
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil {
				t.Fatalf("appliance to %s: %v", b.Name, err)
			}
			if !strings.HasPrefix(line, b.Name+" "+src4.String()+":") {
				t.Errorf("appliance to %s: got %q, want it from %s", b.Name, line, src4)
			}
		}
	})

	t.Run("conntrack lists the NAT flows", func(t *testing.T) {
		c, err := dialSNAT(ctx, topo, snatVIP4, 80)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		out, err := cli(t, bin, "conntrack", "--socket", f.Socket, "--vip", snatVIP4+":80/tcp", "-o", "json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var fs []FlowInfo
		if err := json.Unmarshal([]byte(out), &fs); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, fl := range fs {
			if fl.Client == c.LocalAddr().String() {
				found = true
				if fl.Source != c.seen.String() || fl.State != "established" {
					t.Errorf("flow %+v: want source %s (what the backend saw), state established", fl, c.seen)
				}
			}
		}
		if !found {
			t.Errorf("no NAT flow of %s in %d flows", c.LocalAddr(), len(fs))
		}
	})

	t.Run("a 10 s download survives a restart", func(t *testing.T) {
		c, err := topo.Client.Dial(ctx, "tcp", net.JoinHostPort(snatVIP4, "81"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make(chan error, 1)
		var n int64
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(40 * time.Second))
			var err error
			n, err = io.Copy(io.Discard, c)
			got <- err
		}()
		time.Sleep(3 * time.Second)
		d.stop(t)
		time.Sleep(500 * time.Millisecond) // no daemon: XDP goes on
		d = startTestDaemon(t, bin, topo.LB.NS, cfgPath, f.Socket)
		if err := <-got; err != nil {
			t.Fatalf("download: %v after %d bytes", err, n)
		}
		if want := int64(snatDLChunk * snatDLChunks); n != want {
			t.Errorf("downloaded %d bytes, want %d", n, want)
		}
	})

	t.Run("a backend removed: its clients get a RST, the others carry on", func(t *testing.T) {
		var held []*snatConn
		for len(held) < 30 {
			c, err := dialSNAT(ctx, topo, snatVIP4, 80)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		writeAtomically(t, cfgPath, snatConfig(f, topo, []string{"b2", "b3"}, far))
		if out, err := cli(t, bin, "reload", "--socket", f.Socket); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		var removed int
		for i, c := range held {
			start := time.Now()
			err := c.Echo(fmt.Sprintf("still there %d", i))
			took := time.Since(start)
			if c.Backend != "b1" {
				if err != nil {
					t.Errorf("connection %d to %s broke: %v", i, c.Backend, err)
				}
				continue
			}
			removed++
			if err == nil {
				t.Errorf("connection %d to the removed b1 still works", i)
				continue
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("connection %d to the removed b1: %v, want a reset", i, err)
			}
			if took > 2*time.Second {
				t.Errorf("connection %d to the removed b1 took %v to fail", i, took)
			}
		}
		if removed == 0 {
			t.Fatal("no held connection went to b1")
		}
		t.Logf("%d of %d held connections were b1's", removed, len(held))
	})

	t.Run("forwarding stays off", func(t *testing.T) {
		for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
			if v, err := topo.LB.NS.ReadSysctl(k); err != nil || v != "0" {
				t.Errorf("%s = %q (%v) in the appliance's namespace, want 0", k, v, err)
			}
		}
	})
}
