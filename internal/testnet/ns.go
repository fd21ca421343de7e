package testnet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsDir is where named network namespaces are bind-mounted, as by `ip netns`.
const NetnsDir = "/run/netns"

// maxPrefix keeps a namespace name (prefix, "-", 6 hex digits) within 15
// bytes, so it can also name an interface.
const maxPrefix = 8

// NS is a named network namespace created by this package.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string

	handle netns.NsHandle
	nl     *netlink.Handle

	closeOnce sync.Once
	closeErr  error
}

// NewNS creates a network namespace named prefix plus a random suffix and
// brings its loopback interface up. prefix has at most 8 bytes, so the name
// fits 15 bytes. The calling goroutine's thread is back in its own namespace
// when NewNS returns.
func NewNS(prefix string) (*NS, error) {
	if prefix == "" || len(prefix) > maxPrefix || strings.ContainsAny(prefix, "/ ") {
		return nil, fmt.Errorf("namespace prefix %q: want 1 to %d bytes without '/' or space", prefix, maxPrefix)
	}
	var lastErr error
	for range 5 {
		ns, err := newNamedNS(prefix + "-" + randomHex(3))
		if errors.Is(err, fs.ErrExist) {
			lastErr = err
			continue
		}
		return ns, err
	}
	return nil, lastErr
}

// newNamedNS creates the namespace name; it fails with fs.ErrExist when the
// name is taken.
func newNamedNS(name string) (*NS, error) {
	var h netns.NsHandle
	err := onLockedThread(func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		if h.IsOpen() {
			h.Close()
		}
		if !errors.Is(err, fs.ErrExist) {
			// NewNamed leaves the file behind if the bind mount fails.
			_ = os.Remove(filepath.Join(NetnsDir, name))
		}
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	ns := &NS{Name: name, handle: h}
	ns.nl, err = netlink.NewHandleAt(h)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("opening netlink in namespace %s: %w", name, err), ns.Close())
	}
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("bringing lo up in namespace %s: %w", name, err), ns.Close())
	}
	return ns, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Close deletes the namespace. Sockets and processes still inside keep it
// alive, nameless, until they end. Close is idempotent.
func (n *NS) Close() error {
	n.closeOnce.Do(func() {
		if n.nl != nil {
			n.nl.Close()
		}
		if n.handle.IsOpen() {
			n.handle.Close()
		}
		if err := netns.DeleteNamed(n.Name); err != nil {
			n.closeErr = fmt.Errorf("deleting network namespace %s: %w", n.Name, err)
		}
	})
	return n.closeErr
}

// Path is the namespace's bind mount, e.g. for `nsenter --net=PATH`.
func (n *NS) Path() string { return filepath.Join(NetnsDir, n.Name) }

// Handle returns the namespace's handle. It stays owned by n: don't close it.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Netlink returns a netlink handle whose requests act inside the namespace.
// It stays owned by n: don't close it.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on the calling goroutine, locked to its OS thread, with the
// thread inside the namespace, and puts the thread back into its previous
// namespace afterwards, also when fn panics or calls t.FailNow. Sockets and
// files that fn opens belong to the namespace for good. Goroutines that fn
// starts do not run inside it. If the thread cannot be put back, Do reports it
// and leaves the goroutine locked to the thread, so that no other goroutine
// ever runs in the wrong namespace; the thread ends with the goroutine.
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", n.Name, err)
		}
		return fn()
	})
}

// onLockedThread runs fn with the calling goroutine locked to its thread and
// restores the thread's network namespace afterwards (see NS.Do).
func onLockedThread(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getting the thread's network namespace: %w", err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			orig.Close()
			err = errors.Join(err, fmt.Errorf("restoring the thread's network namespace (the goroutine stays locked to it): %w", rerr))
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	return fn()
}

// procSysPath maps a sysctl key to its file: dots separate the components
// unless the key contains a slash, which allows interface names with dots
// ("net/ipv4/conf/eth0.100/rp_filter").
func procSysPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key)
}

// Sysctl sets the sysctl key (e.g. "net.ipv4.ip_forward") to value inside the
// namespace. The file is opened from a thread in the namespace, which is what
// makes net.* sysctls apply to it.
func (n *NS) Sysctl(key, value string) error {
	err := n.Do(func() error {
		f, err := os.OpenFile(procSysPath(key), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(value)
		return errors.Join(err, f.Close())
	})
	if err != nil {
		return fmt.Errorf("setting sysctl %s=%s in namespace %s: %w", key, value, n.Name, err)
	}
	return nil
}

// ReadSysctl returns the value of the sysctl key inside the namespace, without
// the trailing newline.
func (n *NS) ReadSysctl(key string) (string, error) {
	var b []byte
	err := n.Do(func() error {
		var err error
		b, err = os.ReadFile(procSysPath(key))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s in namespace %s: %w", key, n.Name, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Command returns a command that runs name inside the namespace's network
// namespace (only that one: unlike `ip netns exec`, it keeps the mount
// namespace and /sys). It uses nsenter(1) from util-linux.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Dial connects to addr from inside the namespace, as net.Dialer.DialContext
// does. The socket is created inside the namespace and keeps working from any
// goroutine.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens on addr inside the namespace, as net.Listen does.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket listens on addr inside the namespace, as net.ListenPacket does.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}
