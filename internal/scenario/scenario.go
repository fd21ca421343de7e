// Package scenario runs the datapath as an appliance in a namespace topology
// (internal/testnet): a client, the load balancer with xdplb's program on its
// interface, and backends that hold the VIPs on lo and answer TCP connections
// with their name. The end-to-end tests and `xdplb demo` share it.
package scenario

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/lb"
	"github.com/xdplb/xdplb/xdp"
)

// The VIPs of a scenario, inside testnet's VIP prefixes.
var (
	VIP4 = netip.MustParseAddr("198.18.100.1")
	VIP6 = netip.MustParseAddr("2001:db8:100::1")
)

// Port is the service port of both VIPs.
const Port = 80

// UDPPort is the UDP service of the scenario: the same VIPs, port 53.
const UDPPort = 53

// Options configure Start.
type Options struct {
	// Mode of both VIPs: xdp.ModeDSRL2 or xdp.ModeDSRIPIP (the backends then
	// run xdplb's decap program).
	Mode xdp.Mode
	// TableSize of the Maglev tables (default lb.DefaultTableSize).
	TableSize int
	// PinPath for the datapath (default xdp.NoPin).
	PinPath string
}

// Appliance is a running scenario.
type Appliance struct {
	*Servers
	Topo     *testnet.Topology
	DP       *xdp.Datapath
	Attached *xdp.Attachment
	Rec      *lb.Reconciler
	opts     Options

	mu       sync.Mutex
	backends []*testnet.Host // in the services, in order
}

// Servers are the backends' side of a scenario: the VIPs on lo, a server on
// port 80 of each backend that tells each connection its name and echoes
// what it sends, and (for IPIP) xdplb's decap program.
type Servers struct {
	Topo      *testnet.Topology
	mu        sync.Mutex
	decaps    []*xdp.Decap
	listeners map[string]net.Listener // by backend name
	udp       []net.PacketConn
	accepted  map[net.Conn]bool
	wg        sync.WaitGroup
}

// EncapSources are the outer sources of the appliance's IPIP packets: its
// own addresses.
func EncapSources(topo *testnet.Topology) (v4, v6 netip.Prefix) {
	return netip.PrefixFrom(topo.LB.IPv4, 32), netip.PrefixFrom(topo.LB.IPv6, 128)
}

// StartServers puts VIP4 and VIP6 on every backend's lo and starts the
// servers; with decap, xdplb's decap program runs on each backend's
// interface, trusting the appliance's encap sources only.
func StartServers(topo *testnet.Topology, decap bool) (_ *Servers, err error) {
	s := &Servers{Topo: topo, listeners: map[string]net.Listener{}, accepted: map[net.Conn]bool{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, vip := range []netip.Addr{VIP4, VIP6} {
		if err := topo.AddVIPToBackends(vip); err != nil {
			return nil, err
		}
	}
	for _, h := range topo.Backends {
		if err := s.Listen(h.Name); err != nil {
			return nil, err
		}
		for _, vip := range []netip.Addr{VIP4, VIP6} {
			if err := s.listenUDP(h, vip); err != nil {
				return nil, err
			}
		}
		if decap {
			if err := h.NS.Do(func() error {
				src4, src6 := EncapSources(topo)
				d, err := xdp.OpenDecap(h.Link, xdp.DecapOptions{PinPath: xdp.NoPin, Allow: []netip.Prefix{src4, src6}})
				if err != nil {
					return err
				}
				s.decaps = append(s.decaps, d)
				return nil
			}); err != nil {
				return nil, fmt.Errorf("decap on %s: %w", h.Name, err)
			}
		}
	}
	return s, nil
}

// NextHops resolves next hops inside a namespace, as the daemon does in its
// own (an lb.NextHops for a reconciler driven from outside it).
type NextHops struct{ NS *testnet.NS }

func (n NextHops) Resolve(ctx context.Context, addr netip.Addr) (nh xdp.NextHop, err error) {
	err = n.NS.Do(func() error {
		nh, err = xdp.ResolveNextHop(ctx, addr)
		return err
	})
	return nh, err
}

// Keys are the services of a scenario: VIP4 and VIP6, TCP port 80.
func Keys() []xdp.VIPKey {
	return []xdp.VIPKey{{Addr: VIP4, Port: Port, Proto: xdp.TCP}, {Addr: VIP6, Port: Port, Proto: xdp.TCP}}
}

// Start attaches the datapath to the load balancer's interface and configures
// both VIPs over every backend of topo, with servers on the backends.
func Start(ctx context.Context, topo *testnet.Topology, opts Options) (_ *Appliance, err error) {
	if opts.TableSize == 0 {
		opts.TableSize = lb.DefaultTableSize
	}
	if opts.PinPath == "" {
		opts.PinPath = xdp.NoPin
	}
	a := &Appliance{Topo: topo, opts: opts}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.DP, err = xdp.Open(xdp.Options{PinPath: opts.PinPath, MaxVIPs: 64, MaxBackends: 1024, MaxFlows: 1 << 16, TransitionGrace: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	a.Rec = lb.NewReconciler(a.DP, NextHops{topo.LB.NS}, lb.Options{MaxBackends: 1024})
	if err := topo.LB.NS.Do(func() error {
		a.Attached, err = a.DP.Attach(topo.LB.Link, xdp.AttachAuto)
		return err
	}); err != nil {
		return nil, err
	}
	src4, src6 := EncapSources(topo)
	if err := a.DP.SetEncapSource(src4, src6); err != nil {
		return nil, err
	}
	if a.Servers, err = StartServers(topo, opts.Mode == xdp.ModeDSRIPIP); err != nil {
		return nil, err
	}
	a.backends = append(a.backends, topo.Backends...)
	return a, a.Reconcile(ctx)
}

// Listen starts (again) the server of the backend named name on [::]:80 in
// its namespace: every connection is told the backend's name, then whatever
// it sends is echoed back.
func (s *Servers) Listen(name string) error {
	i := slices.IndexFunc(s.Topo.Backends, func(h *testnet.Host) bool { return h.Name == name })
	if i < 0 {
		return fmt.Errorf("no backend %q", name)
	}
	h := s.Topo.Backends[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listeners[name] != nil {
		return fmt.Errorf("%s: already listening", name)
	}
	ln, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", Port))
	if err != nil {
		return fmt.Errorf("listening on %s: %w", h.Name, err)
	}
	s.listeners[name] = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.accepted, c)
					s.mu.Unlock()
				}()
				if _, err := fmt.Fprintf(c, "%s\n", h.Name); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return nil
}

// listenUDP answers every datagram to vip:UDPPort on backend h with
// "NAME LENGTH SHA256" of what it received (reassembled, when it came in
// fragments): a short answer that proves the whole datagram arrived.
func (s *Servers) listenUDP(h *testnet.Host, vip netip.Addr) error {
	pc, err := h.ListenPacket("udp", netip.AddrPortFrom(vip, UDPPort).String())
	if err != nil {
		return fmt.Errorf("listening on %s udp %s: %w", h.Name, vip, err)
	}
	s.mu.Lock()
	s.udp = append(s.udp, pc)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			sum := sha256.Sum256(buf[:n])
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %d %x", h.Name, n, sum[:8])), from)
		}
	}()
	return nil
}

// UDPExchange sends payload from the client to vip:UDPPort in one datagram
// (fragmented by the client's stack when it exceeds its MTU) and returns the
// backend that received all of it. A datagram or answer lost is sent again,
// three times at most.
func (s *Servers) UDPExchange(ctx context.Context, vip netip.Addr, payload []byte) (string, error) {
	c, err := s.Topo.Client.Dial(ctx, "udp", netip.AddrPortFrom(vip, UDPPort).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	sum := sha256.Sum256(payload)
	want := fmt.Sprintf("%d %x", len(payload), sum[:8])
	buf := make([]byte, 256)
	var last error
	for try := 0; try < 3; try++ {
		if _, err := c.Write(payload); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			last = err
			continue
		}
		name, got, _ := strings.Cut(string(buf[:n]), " ")
		if got != want {
			return name, fmt.Errorf("backend %s received %q, want %q", name, got, want)
		}
		return name, nil
	}
	return "", fmt.Errorf("no answer from %s:%d to a %d-byte datagram: %w", vip, UDPPort, len(payload), last)
}

// StopListening closes the listener of the backend named name: new
// connections are refused, established ones keep working.
func (s *Servers) StopListening(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln := s.listeners[name]; ln != nil {
		ln.Close()
		delete(s.listeners, name)
	}
}

// Seed is the scenario's Maglev seed.
var Seed = [16]byte{'x', 'd', 'p', 'l', 'b', '-', 's', 'c', 'e', 'n', 'a', 'r', 'i', 'o', '!', '!'}

// State is the desired state of the scenario: both VIPs over the backends,
// TCP port Port and UDP port UDPPort.
func (a *Appliance) State() lb.State {
	a.mu.Lock()
	defer a.mu.Unlock()
	var bs []lb.Backend
	for _, h := range a.backends {
		bs = append(bs, lb.Backend{Addr: h.IPv4, Weight: 1})
	}
	st := lb.State{Seed: Seed}
	for i, k := range Keys() {
		st.Services = append(st.Services, lb.Service{
			Name: []string{"web4", "web6"}[i], Addr: k.Addr, Proto: k.Proto, Ports: []uint16{k.Port},
			Mode: a.opts.Mode, TableSize: a.opts.TableSize, Backends: bs,
		})
	}
	for i, vip := range []netip.Addr{VIP4, VIP6} {
		st.Services = append(st.Services, lb.Service{
			Name: []string{"dns4", "dns6"}[i], Addr: vip, Proto: xdp.UDP, Ports: []uint16{UDPPort},
			Mode: a.opts.Mode, TableSize: a.opts.TableSize, Backends: bs,
		})
	}
	return st
}

// Reconcile applies State.
func (a *Appliance) Reconcile(ctx context.Context) error {
	st := a.Rec.Apply(ctx, a.State(), nil)
	if len(st.Errors) > 0 {
		e := st.Errors[0]
		return fmt.Errorf("reconciling %s %s: %s", e.Service, e.VIP, e.Err)
	}
	return nil
}

// RemoveBackend takes the backend named name out of both services.
func (a *Appliance) RemoveBackend(ctx context.Context, name string) error {
	a.mu.Lock()
	i := slices.IndexFunc(a.backends, func(h *testnet.Host) bool { return h.Name == name })
	if i < 0 {
		a.mu.Unlock()
		return fmt.Errorf("no backend %q", name)
	}
	a.backends = slices.Delete(a.backends, i, i+1)
	a.mu.Unlock()
	return a.Reconcile(ctx)
}

// Conn is a connection from the client through a VIP.
type Conn struct {
	net.Conn
	Backend string // the name the backend answered with
	r       *bufio.Reader
}

// Dial connects from the client to vip:Port and reads the backend's name.
func (s *Servers) Dial(ctx context.Context, vip netip.Addr) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := s.Topo.Client.Dial(dctx, "tcp", netip.AddrPortFrom(vip, Port).String())
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the backend's name: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return &Conn{Conn: c, Backend: strings.TrimSpace(name), r: r}, nil
}

// NewConn is c, whose backend's greeting (naming it backend) r read: the
// rest of the stream is r's.
func NewConn(c net.Conn, r *bufio.Reader, backend string) *Conn {
	return &Conn{Conn: c, Backend: backend, r: r}
}

// Echo sends msg and reads it back, proving the connection still works.
func (c *Conn) Echo(msg string) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo: sent %q, got %q", msg, got)
	}
	return nil
}

// Connections makes n connections to vip (at most parallel at once) and
// counts them by the backend that answered. Every failure is returned.
func (s *Servers) Connections(ctx context.Context, vip netip.Addr, n, parallel int) (map[string]int, error) {
	counts := map[string]int{}
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := s.Dial(ctx, vip)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			counts[c.Backend]++
			c.Close()
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return counts, fmt.Errorf("%d of %d connections failed, the first: %w", len(errs), n, errs[0])
	}
	return counts, nil
}

// Close stops the servers and the decap programs.
func (s *Servers) Close() error {
	var errs []error
	s.mu.Lock()
	for name, ln := range s.listeners {
		ln.Close()
		delete(s.listeners, name)
	}
	for c := range s.accepted {
		c.Close()
	}
	for _, pc := range s.udp {
		pc.Close()
	}
	s.udp = nil
	s.mu.Unlock()
	for _, d := range s.decaps {
		errs = append(errs, d.Close())
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		errs = append(errs, errors.New("backend servers did not stop"))
	}
	return errors.Join(errs...)
}

// Close stops the servers and releases the datapath.
func (a *Appliance) Close() error {
	var errs []error
	if a.Servers != nil {
		errs = append(errs, a.Servers.Close())
	}
	if a.DP != nil {
		if a.Attached != nil && a.opts.PinPath != xdp.NoPin {
			errs = append(errs, a.Topo.LB.NS.Do(func() error { return a.DP.Detach(a.Topo.LB.Link) }), a.DP.Unpin())
		}
		errs = append(errs, a.DP.Close())
	}
	return errors.Join(errs...)
}
