package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/internal/testnet"
)

// port is the service port of every VIP of the soak.
const port = 80

// servers are the backends' side: on port 80 of each backend a server that
// greets each connection with the backend's name and answers each line L
// with "NAME L", so that every echo says which backend answered it.
type servers struct {
	hosts map[string]*testnet.Host

	mu        sync.Mutex
	listeners map[string]net.Listener
	accepted  map[net.Conn]acceptedConn
	wg        sync.WaitGroup
}

func newServers(hosts []*testnet.Host) *servers {
	s := &servers{hosts: map[string]*testnet.Host{}, listeners: map[string]net.Listener{}, accepted: map[net.Conn]acceptedConn{}}
	for _, h := range hosts {
		s.hosts[h.Name] = h
	}
	return s
}

// listen starts (again) the server of backend name on [::]:80.
func (s *servers) listen(name string) error {
	h := s.hosts[name]
	if h == nil {
		return fmt.Errorf("no backend %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listeners[name] != nil {
		return fmt.Errorf("%s: already listening", name)
	}
	ln, err := h.Listen("tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		return fmt.Errorf("listening on %s: %w", name, err)
	}
	s.listeners[name] = ln
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted[c] = acceptedConn{name, time.Now()}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.accepted, c)
					s.mu.Unlock()
				}()
				serve(c, name)
			})
		}
	})
	return nil
}

// serverIdle is how long a server keeps a connection that sends nothing,
// as real servers time idle clients out. Clients echo every second; a
// connection the load balancer moved to another backend (which reset it) is
// idle here from then on, and must not outlive the client's socket for long:
// a new connection that reuses its client port and reaches this backend
// would meet it and hang instead of being reset.
const serverIdle = 4 * time.Second

func serve(c net.Conn, name string) {
	if _, err := fmt.Fprintf(c, "%s\n", name); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(serverIdle))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%s %s", name, line); err != nil {
			return
		}
	}
}

// stop closes backend name's listener: new connections are refused (and
// its health check fails), connections it accepted carry on.
func (s *servers) stop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln := s.listeners[name]; ln != nil {
		ln.Close()
		delete(s.listeners, name)
	}
}

// open counts the connections backend's server holds.
func (s *servers) open(backend string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.accepted {
		if a.backend == backend {
			n++
		}
	}
	return n
}

// acceptedConn is a connection a backend's server accepted.
type acceptedConn struct {
	backend string
	at      time.Time
}

// holders names the backends whose servers hold a connection from client
// (ADDR:PORT) to vip (ADDR:PORT), and when they accepted it.
func (s *servers) holders(client, vip string, start time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for c, a := range s.accepted {
		if c.RemoteAddr().String() == client && c.LocalAddr().String() == vip {
			out = append(out, fmt.Sprintf("%s (accepted +%.1fs)", a.backend, a.at.Sub(start).Seconds()))
		}
	}
	return out
}

// Close stops every server and closes every connection.
func (s *servers) Close() error {
	s.mu.Lock()
	for name, ln := range s.listeners {
		ln.Close()
		delete(s.listeners, name)
	}
	for c := range s.accepted {
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("backend servers did not stop")
	}
}

// conn is a client connection through a VIP.
type conn struct {
	net.Conn
	r       *bufio.Reader
	backend string // the name the backend greeted it with
}

// dial connects from the client to vip:80 and reads the backend's greeting.
func dial(ctx context.Context, client *testnet.Host, vip netip.Addr, timeout time.Duration) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return &conn{Conn: c, r: r, backend: strings.TrimSpace(name)}, nil
}

// errMismatch is an echo that came back other than sent.
var errMismatch = errors.New("echo mismatch")

// echo sends msg and reads the answer; it returns what came back when that
// is not "BACKEND msg" (with errMismatch).
func (c *conn) echo(msg string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	got = strings.TrimSuffix(got, "\n")
	if got != c.backend+" "+msg {
		return got, errMismatch
	}
	return got, nil
}

// errClass sorts an error into the classes of Outcome.Err.
func errClass(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return ErrTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrEOF
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ErrUnreachable
	}
	return ErrOther
}
